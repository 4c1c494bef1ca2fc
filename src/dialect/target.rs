//! What a Graph-dialect caller asked for: the route and incident id of a request to the Graph
//! facade (`/v1.0/security/incidents...`), judged with the same strictness as the Defender
//! facade's [`crate::target::parse`]: the raw path as sent, no percent-encoding, no dot
//! segments, ids that fit a positive `i64` ([`crate::target::parse_id`]), so no spelling of a
//! path can reach an upstream route other than the one it names and nothing hostile costs quota.
//!
//! Errors are [`ApiError`]s like the Defender facade's; a Graph facade renders them with
//! [`super::error::graph_envelope`] and [`super::error::graph_code`] (`ApiError::code`, status).

use http::Method;

use crate::error::ApiError;
use crate::target::parse_id;

/// A parsed Graph-dialect API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphTarget {
    /// `GET /v1.0/security/incidents/{id}`, with `$expand=alerts` or not.
    GetIncident { id: i64, expand_alerts: bool },
    /// `GET /v1.0/security/incidents`: the raw query string, for [`crate::odata::GraphListQuery`].
    ListIncidents(String),
    /// `PATCH /v1.0/security/incidents/{id}`.
    UpdateIncident(i64),
    /// `POST /v1.0/security/incidents/{id}/comments`.
    CommentIncident(i64),
}

/// The Graph incidents collection's path.
pub const GRAPH_PREFIX: &str = "/v1.0/security/incidents";

/// Maps method, path and query to a Graph route, or to the error the caller gets.
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<GraphTarget, ApiError> {
    let Some(rest) = path.strip_prefix(GRAPH_PREFIX) else {
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
    let query = query.unwrap_or("");
    if rest.is_empty() {
        return if method == Method::GET {
            Ok(GraphTarget::ListIncidents(query.to_string()))
        } else {
            Err(ApiError::MethodNotAllowed(method.as_str().into()))
        };
    }
    let Some(tail) = rest.strip_prefix('/') else {
        return Err(ApiError::NotFound(path.into())); // e.g. /v1.0/security/incidentsX
    };
    let (segment, sub) = match tail.split_once('/') {
        None => (tail, None),
        Some((id, sub)) => (id, Some(sub)),
    };
    if segment.is_empty() {
        return Err(ApiError::NotFound(path.into()));
    }
    let id = parse_id(segment)?;
    match (sub, method) {
        (None, &Method::GET) => {
            let expand_alerts = match query {
                "" => false,
                "$expand=alerts" | "%24expand=alerts" => true,
                _ => {
                    return Err(ApiError::bad_request(
                        "the only query option on a single incident is $expand=alerts",
                    ))
                }
            };
            Ok(GraphTarget::GetIncident { id, expand_alerts })
        }
        (None, &Method::PATCH) => no_query(query).map(|()| GraphTarget::UpdateIncident(id)),
        (Some("comments"), &Method::POST) => no_query(query).map(|()| GraphTarget::CommentIncident(id)),
        (None, _) | (Some("comments"), _) => Err(ApiError::MethodNotAllowed(method.as_str().into())),
        (Some(_), _) => Err(ApiError::NotFound(path.into())),
    }
}

fn no_query(query: &str) -> Result<(), ApiError> {
    if query.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request("query options are not supported on this method"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: Method, path: &str, query: Option<&str>) -> Result<GraphTarget, ApiError> {
        parse(&method, path, query)
    }

    #[test]
    fn routes() {
        assert_eq!(
            p(Method::GET, "/v1.0/security/incidents/0042", None).unwrap(),
            GraphTarget::GetIncident {
                id: 42,
                expand_alerts: false
            }
        );
        assert_eq!(
            p(Method::GET, "/v1.0/security/incidents/7", Some("$expand=alerts")).unwrap(),
            GraphTarget::GetIncident {
                id: 7,
                expand_alerts: true
            }
        );
        assert_eq!(
            p(Method::GET, "/v1.0/security/incidents", Some("$top=5")).unwrap(),
            GraphTarget::ListIncidents("$top=5".into())
        );
        assert_eq!(
            p(Method::PATCH, "/v1.0/security/incidents/5", None).unwrap(),
            GraphTarget::UpdateIncident(5)
        );
        assert_eq!(
            p(Method::POST, "/v1.0/security/incidents/5/comments", Some("")).unwrap(),
            GraphTarget::CommentIncident(5)
        );
    }

    #[test]
    fn hostile_and_unknown_targets() {
        let bad_request = [
            (Method::GET, "/v1.0/security/incidents/-1", None),
            (Method::GET, "/v1.0/security/incidents/0", None),
            (Method::GET, "/v1.0/security/incidents/9223372036854775808", None),
            (Method::GET, "/v1.0/security/incidents/1e3", None),
            (Method::GET, "/v1.0/security/incidents/%31", None),
            (Method::GET, "/v1.0/security/incidents/../alerts_v2", None),
            (Method::GET, "/v1.0/security/incidents/./1", None),
            (Method::GET, "/v1.0/security/incidents/1", Some("$select=id")),
            (Method::GET, "/v1.0/security/incidents/1", Some("$expand=alerts&$top=1")),
            (Method::PATCH, "/v1.0/security/incidents/1", Some("x=1")),
            (Method::POST, "/v1.0/security/incidents/1/comments", Some("$top=1")),
        ];
        for (m, path, q) in bad_request {
            let e = p(m.clone(), path, q).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{m} {path} {q:?}: {e:?}");
        }
        let not_found = [
            (Method::GET, "/v1.0/security/alerts_v2"),
            (Method::GET, "/v1.0/security/incidentsX"),
            (Method::GET, "/v1.0/security/incidents/"),
            (Method::GET, "/v1.0/security/incidents/1/alerts"),
            (Method::POST, "/v1.0/security/incidents/1/comments/2"),
            (Method::GET, "/api/incidents/1"),
        ];
        for (m, path) in not_found {
            let e = p(m.clone(), path, None).unwrap_err();
            assert!(matches!(e, ApiError::NotFound(_)), "{m} {path}: {e:?}");
        }
        for (m, path) in [
            (Method::DELETE, "/v1.0/security/incidents/1"),
            (Method::POST, "/v1.0/security/incidents"),
            (Method::GET, "/v1.0/security/incidents/1/comments"),
            (Method::POST, "/v1.0/security/incidents/1"),
        ] {
            let e = p(m.clone(), path, None).unwrap_err();
            assert!(matches!(e, ApiError::MethodNotAllowed(_)), "{m} {path}: {e:?}");
        }
    }
}
