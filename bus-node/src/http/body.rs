//! Request bodies read whole, bounded by `http.max_body_bytes` on every route that takes
//! one: a declared `Content-Length` over the bound is refused before reading, and a body
//! that streams past it is refused as soon as it does (`413`, problem+json).

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;

use super::problem::Problem;

/// The body, at most `limit` bytes of it.
pub async fn read_bounded(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    to_bytes(body, limit).await.map_err(|e| {
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
