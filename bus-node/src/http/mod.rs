//! The HTTP API: routes, and the middleware every route shares (a bound on requests
//! served at once, a deadline per request, metrics).

pub mod admin;
pub mod body;
pub mod events;
pub mod health;
pub mod live_page;
pub mod problem;
pub mod push;
pub mod server;
mod unread_body;
pub mod webhook_operations;
pub mod webhooks;
pub mod ws;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bus_core::telemetry;

use crate::app::App;
use crate::metrics::RequestLabels;
use problem::Problem;

/// The node's API on `http.listen`; `/metrics` too unless `http.metrics_listen` is set.
pub fn router(app: Arc<App>) -> Router {
    let routes = Router::new()
        .route("/v1/events", post(events::post_events))
        .route("/v1/events/stream", get(push::stream))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/push/tokens", post(push::issue_token))
        .route("/ui/live", get(live_page::page))
        .route("/ui/live/{file}", get(live_page::asset))
        .route("/v1/groups", get(admin::list_groups))
        .route("/v1/dlq", get(admin::list_dead_letters))
        .route("/v1/dlq/redrive", post(admin::redrive))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get_one)
                .patch(webhooks::patch)
                .delete(webhooks::delete),
        )
        .route(
            "/v1/webhooks/{id}/secret/rotate",
            post(webhook_operations::rotate),
        )
        .route("/v1/webhooks/{id}/test", post(webhook_operations::test))
        .route(
            "/v1/webhooks/{id}/attempts",
            get(webhook_operations::attempts),
        )
        .route("/v1/webhooks/{id}/replay", post(webhook_operations::replay))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    let routes = if app.config.http.metrics_listen.is_none() {
        routes.route("/metrics", get(health::metrics))
    } else {
        routes
    };
    finish(routes, app)
}

/// `/metrics` alone, for `http.metrics_listen`.
pub fn metrics_router(app: Arc<App>) -> Router {
    finish(Router::new().route("/metrics", get(health::metrics)), app)
}

/// The layers every listener shares.
fn finish(routes: Router<Arc<App>>, app: Arc<App>) -> Router {
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(app.clone(), guard))
        .fallback(not_found)
        .layer(middleware::from_fn(unread_body::close_if_unread))
        .layer(middleware::from_fn(one_host))
        .with_state(app)
}

/// HTTP/1.1 requires exactly one `Host` header (RFC 9112, section 3.2): without one, or
/// with two, the request is refused with 400 before anything else looks at it, and the
/// connection closes.
async fn one_host(request: Request, next: Next) -> Response {
    let hosts = request
        .headers()
        .get_all(axum::http::header::HOST)
        .iter()
        .count();
    if request.version() == axum::http::Version::HTTP_11 && hosts != 1 {
        let mut response = Problem::bad_request(
            "invalid-host",
            format!("an HTTP/1.1 request carries exactly one Host header; this one has {hosts}"),
        )
        .into_response();
        // The request's framing is not to be trusted either: nothing more on this
        // connection.
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return response;
    }
    next.run(request).await
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "no such endpoint")
}

/// The request's method as metrics and spans record it: one of the standard methods, or
/// `_OTHER` (the OpenTelemetry HTTP conventions' value), so that made-up methods cannot
/// grow the label set.
fn known_method(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(m, _)| m == method)
        .map_or("_OTHER", |(_, name)| name)
}

/// A route that exists, asked with another method (axum adds `Allow`).
async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this endpoint does not take that method (see Allow)",
    )
}

/// Bounds concurrent requests (overflow: `503` at once, never a queue), applies the
/// request deadline, and records metrics.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = known_method(request.method());
    // The node records through the process's pipeline (`init`'s).
    let tracer = telemetry::HopTracer::default();
    let (mut span, hop) = telemetry::HopSpan::for_hop(
        &tracer,
        || request.headers().contains_key("baggage"),
        || {
            let headers = request.headers();
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            telemetry::extract_with_baggage(
                header("traceparent"),
                header("tracestate"),
                header("baggage").filter(|b| telemetry::plausible_baggage(b)),
            )
        },
        |caller| telemetry::HopSpan::server(&tracer, method, &route, caller),
    );
    let start = Instant::now();
    let response = match app.request_slots.try_acquire() {
        Err(_) => Problem::unavailable("the node is serving its maximum number of requests", 1)
            .into_response(),
        Ok(_slot) => {
            let run = next.run(request);
            let run = async move {
                match hop {
                    Some(cx) => telemetry::within_hop(cx, run).await,
                    None => run.await,
                }
            };
            match tokio::time::timeout(app.config.http.request_timeout, run).await {
                Ok(r) => r,
                Err(_) => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the request took too long",
                )
                .retry_after(1)
                .into_response(),
            }
        }
    };
    let status = response.status().as_u16();
    span.record_status_code(status);
    if status >= 500 {
        span.record_error(&status.to_string());
    }
    app.metrics
        .http_duration
        .get_or_create(&RequestLabels {
            http_request_method: method,
            http_route: route,
            http_response_status_code: status,
        })
        .observe(start.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::known_method;

    #[test]
    fn a_made_up_method_is_recorded_as_other() {
        assert_eq!(known_method(&Method::GET), "GET");
        assert_eq!(known_method(&Method::PATCH), "PATCH");
        for made_up in ["XYZ123", "get", "PROPFIND"] {
            let m = Method::from_bytes(made_up.as_bytes());
            assert!(m.is_ok(), "{made_up}");
            if let Ok(m) = m {
                assert_eq!(known_method(&m), "_OTHER", "{made_up}");
            }
        }
    }
}
