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
use crate::metrics::{GroupLabels, PartitionLabels};

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

/// Groups whose oldest unacknowledged event is looked up per scrape, at most (one direct
/// read each, 32 at a time); the rest get no age.
const MAX_AGE_LOOKUPS: usize = 1000;

/// Each group's oldest unacknowledged event's age in seconds: 0 without one, else the
/// age of the event right after its acknowledgement floor (an upper bound when the
/// stream holds other groups' types in between).
async fn oldest_ages(
    bus: &bus_sdk::Bus,
    groups: &[bus_sdk::admin::GroupInfo],
) -> Vec<(String, f64)> {
    use futures::StreamExt;
    let Ok(stream) = bus
        .jetstream()
        .get_stream_no_info(&bus.config().streams.events_name)
        .await
    else {
        return Vec::new();
    };
    let now = time::OffsetDateTime::now_utc();
    // Owned, so that the lookups borrow nothing but the stream (the future must be Send
    // for every lifetime axum asks of it).
    let wanted: Vec<(String, bool, u64)> = groups
        .iter()
        .take(MAX_AGE_LOOKUPS)
        .map(|g| {
            (
                g.name.clone(),
                g.pending == 0 && g.in_flight == 0,
                g.acked_through,
            )
        })
        .collect();
    let stream = Arc::new(stream);
    futures::stream::iter(wanted)
        .map(move |(name, idle, acked)| {
            let stream = stream.clone();
            async move {
                if idle {
                    return Some((name, 0.0));
                }
                let m = stream.direct_get(acked + 1).await.ok()?;
                Some((name, (now - m.time).as_seconds_f64().max(0.0)))
            }
        })
        .buffer_unordered(32)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let connected = app
        .bus()
        .is_some_and(|b| b.client().connection_state() == async_nats::connection::State::Connected);
    app.metrics.nats_connected.set(i64::from(connected));
    // The cluster-wide numbers from one node only (`cluster_reporter`): the others leave
    // them out, so that a sum over nodes counts each group once.
    let reporting = app.reporter.is_reporter();
    app.metrics.cluster_reporter.set(i64::from(reporting));
    if !reporting {
        app.metrics.clear_cluster_numbers();
    }
    if let Some(bus) = app.bus().filter(|_| connected && reporting) {
        match tokio::time::timeout(GROUP_STATS_TIMEOUT, bus.groups()).await {
            Ok(Ok(groups)) => {
                app.metrics.clear_cluster_numbers();
                let ages = oldest_ages(bus, &groups).await;
                for (name, age) in ages {
                    app.metrics
                        .group_oldest_age
                        .get_or_create(&GroupLabels { group: name })
                        .set(age);
                }
                for g in &groups {
                    for p in g.partitions.iter().flatten() {
                        let l = PartitionLabels {
                            group: g.name.clone(),
                            partition: p.partition,
                        };
                        let m = &app.metrics;
                        m.partition_pending.get_or_create(&l).set(p.pending as i64);
                        m.partition_in_flight
                            .get_or_create(&l)
                            .set(p.in_flight as i64);
                        m.partition_parked
                            .get_or_create(&l)
                            .set(p.parked_events as i64);
                        if let Some(age) = p.oldest_unacked_age_seconds {
                            m.partition_oldest_age.get_or_create(&l).set(age);
                        }
                    }
                }
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
