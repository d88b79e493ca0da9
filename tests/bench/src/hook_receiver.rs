//! The webhook workload's receiver: an axum server on loopback that answers `POST
//! /{path}` with 200 at once (after 1 s on paths starting `slow`) and records, per path,
//! the distinct `webhook-id`s, when the last new one came, and the latency from the
//! send time the body carries (`"t"`: Unix nanoseconds, in the event's `data` or at the
//! top) to its arrival.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::stats::histogram;

/// How long a `slow…` path takes to answer.
pub const SLOW_ANSWER: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct PathStats {
    ids: HashSet<String>,
    last_new: Option<Instant>,
    latency: Option<Histogram<u64>>,
}

/// What every path got.
#[derive(Debug, Default)]
pub struct Receiver {
    paths: Mutex<HashMap<String, PathStats>>,
}

/// Unix nanoseconds now.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The `"t"` a body carries, in its `data` or at the top.
fn sent_at(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("data")
        .and_then(|d| d.get("t"))
        .or_else(|| v.get("t"))
        .and_then(serde_json::Value::as_u64)
}

impl Receiver {
    /// Starts serving; gives the base URL.
    pub async fn start() -> Result<(Arc<Self>, String)> {
        let r = Arc::new(Self::default());
        let app = Router::new()
            .route("/{path}", post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((r, format!("http://{addr}")))
    }

    /// Distinct deliveries to `path` so far, and when the last new one came.
    pub fn count(&self, path: &str) -> (u64, Option<Instant>) {
        let paths = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        paths
            .get(path)
            .map(|s| (s.ids.len() as u64, s.last_new))
            .unwrap_or((0, None))
    }

    /// Waits (polling) until `path` has `n` distinct deliveries; gives when the last came.
    pub async fn wait(&self, path: &str, n: u64, deadline: Duration) -> Result<Instant> {
        let until = Instant::now() + deadline;
        loop {
            let (have, last) = self.count(path);
            if have >= n {
                return last.ok_or_else(|| anyhow!("{path}: no delivery time"));
            }
            if Instant::now() > until {
                return Err(anyhow!(
                    "{path}: {have} of {n} deliveries after {deadline:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The latency histogram of `path` (taken: a second call gives `None`).
    pub fn take_latency(&self, path: &str) -> Option<Histogram<u64>> {
        let mut paths = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        paths.get_mut(path).and_then(|s| s.latency.take())
    }
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if path.starts_with("slow") {
        tokio::time::sleep(SLOW_ANSWER).await;
    }
    let now = unix_nanos();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut paths = r.paths.lock().unwrap_or_else(|p| p.into_inner());
    let stats = paths.entry(path).or_default();
    if stats.ids.insert(id) {
        stats.last_new = Some(Instant::now());
        if let Some(t) = sent_at(&body) {
            if stats.latency.is_none() {
                stats.latency = histogram().ok();
            }
            if let Some(h) = stats.latency.as_mut() {
                let _ = h.record(now.saturating_sub(t).max(1));
            }
        }
    }
    StatusCode::OK
}
