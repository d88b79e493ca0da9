//! RFC 9457 problem details: every error the API returns.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Media type of error bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// Short, stable slug; the `type` is `urn:bus:problem:<slug>`.
    pub slug: &'static str,
    pub detail: String,
    pub retry_after_secs: Option<u64>,
    /// Extra members merged into the body.
    pub extra: Option<Value>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            slug,
            detail: detail.into(),
            retry_after_secs: None,
            extra: None,
        }
    }

    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, slug, detail)
    }

    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            .retry_after(retry_after_secs)
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

/// The query string parsed, or a 400 saying what was `expected`. Handlers take their
/// `Query` as a `Result` and call this after checking the caller's key, so that a caller
/// without one learns nothing about the query's shape, and a bad query is problem+json
/// like every other refusal.
pub fn parsed_query<T>(q: Result<Query<T>, QueryRejection>, expected: &str) -> Result<T, Problem> {
    q.map(|Query(q)| q).map_err(|e| {
        Problem::bad_request(
            "invalid-query",
            format!("expected {expected}: {}", e.body_text()),
        )
    })
}

/// A page size: `limit`, or `default` without one; a 400 outside 1 to `max`.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, Problem> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid-limit",
            format!("limit: 1 to {max}"),
        ));
    }
    Ok(limit)
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("urn:bus:problem:{}", self.slug),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (self.extra, &mut body) {
            map.extend(extra);
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
