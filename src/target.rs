//! What the caller asked for: the route and incident id from the raw request target, and the
//! caller's cache and wait preferences from its headers.
//!
//! The path is judged as sent, before any decoding: percent-encoded bytes and dot segments are
//! refused rather than normalised, so no spelling of a path can reach an upstream route other
//! than the one it names. Ids are parsed to a positive `i64`; the upstream only ever sees the
//! canonical decimal form.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method};

use crate::{
    body::View,
    error::ApiError,
    odata::{GraphListQuery, ListQuery},
    route::{self, RouteKind},
};

/// A parsed API request: everything the policy needs, validated. (A PATCH body is checked
/// by [`Update::parse`] once it has been read.)
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    GetIncident(i64),
    /// The List query options, parsed (their canonical form is the cache key).
    ListIncidents(ListQuery),
    UpdateIncident(i64),
    /// `GET /v1.0/security/incidents/{id}` (Graph facade), alerts expanded or not.
    GraphGet {
        id: i64,
        expand_alerts: bool,
    },
    /// `GET /v1.0/security/incidents?...` (Graph facade); `base` is the proxy's own URL for
    /// the collection, which `@odata.nextLink` points at.
    GraphList {
        query: GraphListQuery,
        base: std::sync::Arc<str>,
    },
    /// `PATCH /v1.0/security/incidents/{id}` (Graph facade).
    GraphUpdate(i64),
    /// `POST /v1.0/security/incidents/{id}/comments` (Graph facade).
    GraphComment(i64),
}

/// A PATCH body that passed [`validate_update`]: the bytes sent upstream as they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update(Bytes);

impl Update {
    /// Checks a PATCH body against the documented update fields, before any quota is spent.
    pub fn parse(body: Bytes) -> Result<Update, ApiError> {
        validate_update(&body)?;
        Ok(Update(body))
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Target {
    pub fn route(&self) -> RouteKind {
        match self {
            Target::GetIncident(_) | Target::GraphGet { .. } => RouteKind::GetIncident,
            Target::ListIncidents(_) | Target::GraphList { .. } => RouteKind::ListIncidents,
            Target::UpdateIncident(_) | Target::GraphUpdate(_) => RouteKind::UpdateIncident,
            Target::GraphComment(_) => RouteKind::CreateComment,
        }
    }

    /// Which rendering of an answer the caller reads (and whose error envelope it gets).
    pub fn view(&self) -> View {
        match self {
            Target::GetIncident(_) | Target::ListIncidents(_) | Target::UpdateIncident(_) => View::Defender,
            Target::GraphGet {
                expand_alerts: true, ..
            } => View::GraphAlerts,
            Target::GraphList { query, .. } if query.expand_alerts => View::GraphAlerts,
            _ => View::Graph,
        }
    }
}

const PREFIX: &str = "/api/incidents";

/// Maps method, path and query to a route, or to the error the caller gets (no quota spent).
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Target, ApiError> {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Err(ApiError::NotFound(path.into()));
    };
    if path.contains('%') {
        return Err(ApiError::bad_request(
            "percent-encoded characters are not accepted in the path",
        ));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(ApiError::bad_request("dot segments are not accepted in the path"));
    }
    if rest.is_empty() {
        return if method == Method::GET {
            ListQuery::parse(query.unwrap_or(""))
                .map(Target::ListIncidents)
                .map_err(|e| ApiError::bad_request(format!("{}: {}", e.option, e.message)))
        } else {
            Err(ApiError::MethodNotAllowed(method.as_str().into()))
        };
    }
    let Some(segment) = rest.strip_prefix('/') else {
        return Err(ApiError::NotFound(path.into())); // e.g. /api/incidentsX
    };
    if segment.contains('/') || segment.is_empty() {
        return Err(ApiError::NotFound(path.into()));
    }
    let id = parse_id(segment)?;
    if query.is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::bad_request(
            "query options are not supported on a single incident",
        ));
    }
    match *method {
        Method::GET => Ok(Target::GetIncident(id)),
        Method::PATCH => Ok(Target::UpdateIncident(id)),
        _ => Err(ApiError::MethodNotAllowed(method.as_str().into())),
    }
}

/// A decimal incident id that fits a positive `i64`: ASCII digits only (leading zeros allowed).
///
/// ```
/// use defender_proxy::target::parse_id;
/// assert_eq!(parse_id("0042").unwrap(), 42);
/// assert!(parse_id("+42").is_err());
/// assert!(parse_id("9223372036854775808").is_err()); // one past i64::MAX
/// ```
pub fn parse_id(s: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "'{}' is not a valid incident id (a positive integer)",
            truncate(s)
        ))
    };
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let digits = s.trim_start_matches('0');
    if digits.is_empty() || digits.len() > 19 {
        return Err(bad());
    }
    match digits.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(bad()),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The caller's `Cache-Control` request directives that the proxy honours (RFC 9111 §5.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache` (or `max-age=0`, or `Pragma: no-cache`): ask the upstream, spending budget.
    pub no_cache: bool,
    /// `max-age=N`: a cached answer older than N seconds is not acceptable.
    pub max_age: Option<u64>,
    /// `only-if-cached`: never ask the upstream; 504 when nothing is cached.
    pub only_if_cached: bool,
}

impl Directives {
    pub fn from_headers(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        let mut any = false;
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                any = true;
                let item = item.trim();
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item, None),
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-cache" => d.no_cache = true,
                    "only-if-cached" => d.only_if_cached = true,
                    "max-age" => {
                        if let Some(n) = arg.and_then(|a| a.parse::<u64>().ok()) {
                            d.max_age = Some(d.max_age.map_or(n, |m| m.min(n)));
                        }
                    }
                    _ => {}
                }
            }
        }
        if d.max_age == Some(0) {
            d.no_cache = true;
        }
        if !any
            && headers
                .get(header::PRAGMA)
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        {
            d.no_cache = true;
        }
        d
    }
}

/// `Prefer: wait=N` (RFC 7240 §4.3), capped. `None` when the caller did not ask.
pub fn preferred_wait(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .next()
        .map(|secs| Duration::from_secs(secs).min(cap))
}

/// `Prefer: priority=batch`: the caller lowers its own priority for this request (fair queuing
/// puts it behind interactive calls and keeps it out of `budget.reserve`).
pub fn prefers_batch(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| p.split_once('='))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("priority") && v.trim().trim_matches('"').eq_ignore_ascii_case("batch")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn get(path: &str) -> Result<Target, ApiError> {
        parse(&Method::GET, path, None)
    }

    #[test]
    fn ids() {
        assert_eq!(get("/api/incidents/42").unwrap(), Target::GetIncident(42));
        assert_eq!(get("/api/incidents/0042").unwrap(), Target::GetIncident(42));
        assert_eq!(
            get("/api/incidents/9223372036854775807").unwrap(),
            Target::GetIncident(i64::MAX)
        );
        for bad in [
            "0",
            "000",
            "-1",
            "+1",
            "9223372036854775808",
            "1e3",
            "1.0",
            " 1",
            "١٢",
            "12a",
            "0x10",
        ] {
            let e = get(&format!("/api/incidents/{bad}")).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn paths() {
        assert!(matches!(get("/api/incidents/1%2F2"), Err(ApiError::BadRequest(_))));
        assert!(matches!(get("/api/incidents/%31"), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            get("/api/incidents/../machines"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(get("/api/incidents/./1"), Err(ApiError::BadRequest(_))));
        assert!(matches!(get("/api/incidents/1/alerts"), Err(ApiError::NotFound(_))));
        assert!(matches!(get("/api/incidents/1/"), Err(ApiError::NotFound(_))));
        assert!(matches!(get("/api/incidentsX"), Err(ApiError::NotFound(_))));
        assert!(matches!(get("/api/machines"), Err(ApiError::NotFound(_))));
        assert!(matches!(get("/"), Err(ApiError::NotFound(_))));
        assert_eq!(
            get("/api/incidents").unwrap(),
            Target::ListIncidents(ListQuery::default())
        );
        assert!(matches!(
            parse(&Method::GET, "/api/incidents", Some("$top=500")),
            Err(ApiError::BadRequest(_))
        ));
        assert_eq!(
            parse(&Method::PATCH, "/api/incidents/5", None).unwrap(),
            Target::UpdateIncident(5)
        );
        assert!(matches!(
            parse(&Method::DELETE, "/api/incidents/5", None),
            Err(ApiError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            parse(&Method::POST, "/api/incidents", None),
            Err(ApiError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            parse(&Method::GET, "/api/incidents/5", Some("x=1")),
            Err(ApiError::BadRequest(_))
        ));
    }

    fn h(name: &'static str, v: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_static(v));
        m
    }

    #[test]
    fn directives() {
        assert!(Directives::from_headers(&h("cache-control", "no-cache")).no_cache);
        assert!(Directives::from_headers(&h("cache-control", "max-age=0")).no_cache);
        assert_eq!(
            Directives::from_headers(&h("cache-control", "max-age=5")).max_age,
            Some(5)
        );
        assert!(Directives::from_headers(&h("cache-control", "Only-If-Cached")).only_if_cached);
        assert!(Directives::from_headers(&h("pragma", "no-cache")).no_cache);
        assert_eq!(Directives::from_headers(&HeaderMap::new()), Directives::default());
    }

    #[test]
    fn prefer_wait() {
        let cap = Duration::from_secs(120);
        assert_eq!(
            preferred_wait(&h("prefer", "wait=5"), cap),
            Some(Duration::from_secs(5))
        );
        assert_eq!(preferred_wait(&h("prefer", "respond-async, wait=500"), cap), Some(cap));
        assert_eq!(preferred_wait(&h("prefer", "return=minimal"), cap), None);
        assert!(prefers_batch(&h("prefer", "wait=5, priority=batch")));
        assert!(!prefers_batch(&h("prefer", "priority=interactive")));
    }
}

/// Fields of an update (PATCH) body and their allowed values (`None`: any string).
const UPDATE_FIELDS: [(&str, Option<&[&str]>); 4] = [
    ("status", Some(&route::STATUSES)),
    ("assignedTo", None),
    ("classification", Some(&route::CLASSIFICATIONS)),
    ("determination", Some(&route::DETERMINATIONS)),
];

/// Checks a PATCH body against the documented update fields before any quota is spent.
pub fn validate_update(body: &[u8]) -> Result<(), ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if object.is_empty() {
        return Err(ApiError::bad_request("the body names no field to update"));
    }
    for (key, v) in object {
        match key.as_str() {
            "tags" => {
                let ok = v.as_array().is_some_and(|a| a.iter().all(|t| t.is_string()));
                if !ok {
                    return Err(ApiError::bad_request("'tags' must be a list of strings"));
                }
            }
            "comment" => {
                if !v.is_string() {
                    return Err(ApiError::bad_request("'comment' must be a string"));
                }
            }
            name => {
                let Some((_, allowed)) = UPDATE_FIELDS.iter().find(|(f, _)| *f == name) else {
                    return Err(ApiError::bad_request(format!(
                        "'{}' is not an updatable field (status, assignedTo, classification, determination, tags, comment)",
                        truncate(name)
                    )));
                };
                let Some(s) = v.as_str() else {
                    return Err(ApiError::bad_request(format!("'{name}' must be a string")));
                };
                if let Some(allowed) = allowed {
                    if !allowed.contains(&s) {
                        return Err(ApiError::bad_request(format!(
                            "'{}' is not a valid {name}; expected one of {}",
                            truncate(s),
                            allowed.join(", ")
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod update_tests {
    use super::*;

    #[test]
    fn update_bodies() {
        assert!(
            validate_update(br#"{"status":"Resolved","classification":"TruePositive","determination":"Malware"}"#)
                .is_ok()
        );
        assert!(validate_update(br#"{"assignedTo":"a@b.c","tags":["x"],"comment":"hi"}"#).is_ok());
        for bad in [
            &br#"[]"#[..],
            br#"{}"#,
            br#"not json"#,
            br#"{"status":"Closed"}"#,
            br#"{"Status":"Active"}"#,
            br#"{"severity":"High"}"#,
            br#"{"tags":"x"}"#,
            br#"{"tags":[1]}"#,
            br#"{"comment":5}"#,
            br#"{"assignedTo":null}"#,
        ] {
            assert!(validate_update(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
