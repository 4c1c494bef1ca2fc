//! Graph's error envelope, and the mapping between Defender's and Graph's error codes, so an
//! upstream error in one dialect reaches a caller of the other with the same status and the
//! nearest code.
//!
//! Defender: `{"error":{"code","message","target"}}` (fact sheet §7.1, D5). Graph:
//! `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`
//! (sheet §6.1: the documented shape plus `client-request-id`, observed). Statuses are never
//! changed by translation; only codes are.

use bytes::Bytes;
use serde_json::Value;
use time::OffsetDateTime;

/// `(Defender code, Graph code, status)`. The first row for a code wins in each direction;
/// later rows are accepted spellings. Graph codes follow the Graph error page (sheet §6.1,
/// S18) except `BadRequest` and `TooManyRequests`, which real Graph answers use.
pub const ERROR_CODES: &[(&str, &str, u16)] = &[
    ("BadRequest", "BadRequest", 400),
    ("InvalidRequestBody", "invalidRequest", 400),
    ("InvalidInput", "invalidRequest", 400),
    ("ODataError", "BadRequest", 400),
    ("Unauthorized", "unauthenticated", 401),
    ("Forbidden", "accessDenied", 403),
    ("NotFound", "itemNotFound", 404),
    ("ResourceNotFound", "itemNotFound", 404),
    ("MethodNotAllowed", "notAllowed", 405),
    ("UnsupportedMediaType", "notSupported", 415),
    ("TooManyRequests", "TooManyRequests", 429),
    ("429", "TooManyRequests", 429),
    ("InternalServerError", "generalException", 500),
    ("BadGateway", "generalException", 502),
    ("ServiceUnavailable", "serviceNotAvailable", 503),
    ("GatewayTimeout", "serviceNotAvailable", 504),
];

/// The Graph code for a Defender code; unknown codes get the code of their status.
pub fn graph_code(defender_code: &str, status: u16) -> &'static str {
    ERROR_CODES
        .iter()
        .find(|(d, _, _)| *d == defender_code)
        .or_else(|| ERROR_CODES.iter().find(|(_, _, s)| *s == status))
        .map_or("generalException", |(_, g, _)| *g)
}

/// The Defender code for a Graph code; unknown (or empty, as Graph's `$top` error has) codes
/// get the code of their status.
pub fn defender_code(graph_code: &str, status: u16) -> &'static str {
    ERROR_CODES
        .iter()
        .find(|(_, g, s)| !graph_code.is_empty() && *g == graph_code && *s == status)
        .or_else(|| {
            ERROR_CODES
                .iter()
                .find(|(_, g, _)| !graph_code.is_empty() && *g == graph_code)
        })
        .or_else(|| ERROR_CODES.iter().find(|(_, _, s)| *s == status))
        .map_or("InternalServerError", |(d, _, _)| *d)
}

/// `innerError.date` as Graph prints it: UTC, seconds, no zone designator.
pub fn graph_error_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Graph's error envelope as bytes, keys in Graph's order (code, message, innerError).
/// `client_request_id` defaults to the request id, as Graph echoes one when the client sent none.
pub fn graph_envelope(
    code: &str,
    message: &str,
    request_id: &str,
    client_request_id: Option<&str>,
    date: &str,
) -> Bytes {
    let s = |v: &str| Value::String(v.to_string()).to_string();
    Bytes::from(format!(
        r#"{{"error":{{"code":{},"message":{},"innerError":{{"date":{},"request-id":{},"client-request-id":{}}}}}}}"#,
        s(code),
        s(message),
        s(date),
        s(request_id),
        s(client_request_id.unwrap_or(request_id)),
    ))
}

/// The Defender envelope as bytes (`target` is the tracking or request id).
pub fn defender_envelope(code: &str, message: &str, target: &str) -> Bytes {
    crate::error::envelope(code, message, target)
}

/// Rewrites a Defender upstream error body for a Graph caller. A body that is not a Defender
/// envelope still becomes a Graph envelope (with the status's code and a generic message).
pub fn defender_error_to_graph(body: &[u8], status: u16, request_id: &str, date: &str) -> Bytes {
    let (code, message) = read_envelope(body);
    let message = message.unwrap_or_else(|| format!("The upstream answered {status}."));
    graph_envelope(
        graph_code(code.as_deref().unwrap_or(""), status),
        &message,
        request_id,
        None,
        date,
    )
}

/// Rewrites a Graph upstream error body for a Defender caller (`target` = request id).
pub fn graph_error_to_defender(body: &[u8], status: u16, target: &str) -> Bytes {
    let (code, message) = read_envelope(body);
    let message = message.unwrap_or_else(|| format!("The upstream answered {status}."));
    defender_envelope(defender_code(code.as_deref().unwrap_or(""), status), &message, target)
}

fn read_envelope(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let text = |k: &str| v["error"][k].as_str().map(str::to_string);
    (text("code"), text("message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_row_maps_both_ways_with_its_status() {
        for (d, g, status) in ERROR_CODES {
            assert_eq!(graph_code(d, *status), *g, "{d}");
            let back = defender_code(g, *status);
            let row = ERROR_CODES.iter().find(|(dd, _, _)| *dd == back).unwrap();
            assert_eq!((row.1, row.2), (*g, *status), "{g} {status} -> {back}");
        }
        assert_eq!(defender_code("", 400), "BadRequest");
        assert_eq!(defender_code("somethingNew", 404), "NotFound");
        assert_eq!(graph_code("Weird", 503), "serviceNotAvailable");
        assert_eq!(graph_code("Weird", 418), "generalException");
    }

    #[test]
    fn graph_envelope_shape_and_order() {
        let b = graph_envelope(
            "itemNotFound",
            "no \"such\" incident",
            "r-1",
            None,
            "2026-01-01T00:00:00",
        );
        let text = std::str::from_utf8(&b).unwrap();
        assert!(text.starts_with(r#"{"error":{"code":"itemNotFound","message":"no \"such\" incident","innerError":"#));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["innerError"]["request-id"], "r-1");
        assert_eq!(v["error"]["innerError"]["client-request-id"], "r-1");
        assert_eq!(v["error"]["innerError"]["date"], "2026-01-01T00:00:00");
        assert_eq!(
            graph_error_date(time::macros::datetime!(2024-09-18 15:16:45.5 +02:00)),
            "2024-09-18T13:16:45"
        );
    }

    #[test]
    fn upstream_errors_cross_over() {
        let d = br#"{"error":{"code":"NotFound","message":"Incident 5 was not found.","target":"t"}}"#;
        let g: Value = serde_json::from_slice(&defender_error_to_graph(d, 404, "r", "x")).unwrap();
        assert_eq!(g["error"]["code"], "itemNotFound");
        assert_eq!(g["error"]["message"], "Incident 5 was not found.");
        let top =
            br#"{"error":{"code":"","message":"The limit of '50' for Top query has been exceeded.","details":[]}}"#;
        let back: Value = serde_json::from_slice(&graph_error_to_defender(top, 400, "req")).unwrap();
        assert_eq!(back["error"]["code"], "BadRequest");
        assert_eq!(back["error"]["target"], "req");
        let junk: Value = serde_json::from_slice(&graph_error_to_defender(b"<html>", 502, "req")).unwrap();
        assert_eq!(junk["error"]["code"], "BadGateway");
    }
}
