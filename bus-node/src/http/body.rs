//! Request bodies read whole, bounded by `http.max_body_bytes` on every route that takes
//! one: a declared `Content-Length` over the bound is refused before reading, and a body
//! that streams past it is refused as soon as it does (`413`, problem+json); a body that
//! does not arrive within `http.body_read_timeout` is answered `408` (the connection then
//! closes, its body unread).

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;

use super::problem::Problem;
use crate::config::HttpConfig;

/// The body, at most `http.max_body_bytes` of it, within `http.body_read_timeout`.
pub async fn read_bounded(
    headers: &HeaderMap,
    body: Body,
    http: &HttpConfig,
) -> Result<Bytes, Problem> {
    let limit = http.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let deadline = http.body_read_timeout();
    let read = tokio::time::timeout(deadline, to_bytes(body, limit));
    let Ok(read) = read.await else {
        return Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!("the body did not arrive within {deadline:?} (http.body_read_timeout)"),
        ));
    };
    read.map_err(|e| {
        if is_length_error(&e) {
            too_large(limit)
        } else {
            Problem::bad_request("unreadable-body", format!("cannot read the body: {e}"))
        }
    })
}

fn too_large(limit: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        format!("the body is over {limit} bytes (http.max_body_bytes)"),
    )
}

fn is_length_error(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}
