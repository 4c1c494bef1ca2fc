//! HTTP helpers both dialects' handlers share: the OData success answer, incident ids in paths,
//! and the marker that makes the server close a connection instead of answering.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The upstream's OData content type for successful answers.
pub(crate) const ODATA_JSON: &str =
    "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8";

/// Marks a response that must not be sent: the server closes the connection instead.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("connection closed by the simulator")]
pub(crate) struct CloseConnection;

pub(crate) fn parse_incident_id(raw: &str) -> Option<i64> {
    raw.parse::<i64>().ok()
}

pub(crate) fn ok_json(body: Bytes) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ODATA_JSON)),
            (
                header::HeaderName::from_static("odata-version"),
                HeaderValue::from_static("4.0"),
            ),
        ],
        body,
    )
        .into_response()
}

pub(crate) fn close_connection() -> Response {
    let mut resp = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    resp.extensions_mut().insert(CloseConnection);
    resp
}
