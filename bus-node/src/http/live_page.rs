//! `GET /ui/live`: a page that shows events arriving live (SSE from this node), with a
//! type filter, pause and resume, each event's JSON, sequence and node. Its files are
//! built into the binary (`push/ui/`); it loads nothing from anywhere else, so its
//! Content-Security-Policy allows only this node.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

const PAGE: &str = include_str!("../push/ui/live.html");
const FILES: [(&str, &str, &str); 2] = [
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_str!("../push/ui/live.js"),
    ),
    (
        "live.css",
        "text/css; charset=utf-8",
        include_str!("../push/ui/live.css"),
    ),
];
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub async fn page() -> Response {
    file("text/html; charset=utf-8", PAGE)
}

pub async fn asset(Path(name): Path<String>) -> Result<Response, Problem> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, kind, body)| file(kind, body))
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not-found", "no such file"))
}

fn file(kind: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
