//! `/healthz` (the process answers), `/readyz` (NATS connected, streams in place, not
//! draining) and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::problem::Problem;
use crate::app::App;
use crate::metrics::GroupLabels;

/// How long a scrape waits for group statistics before answering without them.
const GROUP_STATS_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.not_ready_reason() {
        None => Json(json!({"status": "ready", "node": app.config.node.id})).into_response(),
        Some(reason) => Problem::unavailable(format!("not ready: {reason}"), 1).into_response(),
    }
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let connected = app
        .bus()
        .is_some_and(|b| b.client().connection_state() == async_nats::connection::State::Connected);
    app.metrics.nats_connected.set(i64::from(connected));
    if let Some(bus) = app.bus().filter(|_| connected) {
        match tokio::time::timeout(GROUP_STATS_TIMEOUT, bus.groups()).await {
            Ok(Ok(groups)) => {
                app.metrics.group_pending.clear();
                app.metrics.group_in_flight.clear();
                app.metrics.group_redelivered.clear();
                for g in groups {
                    let l = GroupLabels { group: g.name };
                    app.metrics
                        .group_pending
                        .get_or_create(&l)
                        .set(g.pending as i64);
                    app.metrics
                        .group_in_flight
                        .get_or_create(&l)
                        .set(g.in_flight as i64);
                    app.metrics
                        .group_redelivered
                        .get_or_create(&l)
                        .set(g.redelivered as i64);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "group statistics unavailable"),
            Err(_) => tracing::debug!("group statistics timed out"),
        }
    }
    let mut response = app.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
