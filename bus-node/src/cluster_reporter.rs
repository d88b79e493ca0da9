//! Which node exports the cluster-wide numbers on `/metrics` (a group's pending, in
//! flight and redelivered events, its oldest unacknowledged age, the ordered partitions'
//! numbers): JetStream's view, the same from every node, so that summed over nodes
//! (`sum by (group)`) they would count each group once per node. One node at a time holds
//! a lease, the key [`LEASE_KEY`] of the hand-off bucket (`<events>_HANDOFFS`), and
//! exports them; the others leave those series out.
//!
//! The holder writes its node id again every [`RENEW_EVERY`]; a lease whose last write is
//! older than [`LEASE`] (its holder died or lost NATS) is taken by the first node that
//! sees it, by a compare-and-set on the key's revision, so two nodes never both win the
//! same round. A node that stops gives the lease up (deletes the key), so another takes
//! it at its next renewal. Without the bucket (an operator manages the streams and made
//! none) every node reports, and says so in its log once: numbers counted per node beat
//! numbers missing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Store};
use bus_sdk::Bus;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// The lease's key in the hand-off bucket.
pub const LEASE_KEY: &str = "_bus.metrics-reporter";
/// How often the holder renews the lease, and the others look at it.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A lease not renewed for this long is taken over.
pub const LEASE: Duration = Duration::from_secs(15);
/// Deadline of one round's requests.
const ROUND_DEADLINE: Duration = Duration::from_secs(3);

/// Whether this node exports the cluster-wide numbers now.
#[derive(Debug)]
pub struct Reporter {
    reporting: AtomicBool,
    /// What this node writes in the lease: its `node.id` and an id of this process (two
    /// nodes may share a `node.id`, e.g. the host name).
    holder: String,
}

impl Reporter {
    pub fn new(node_id: &str) -> Self {
        Self {
            reporting: AtomicBool::new(false),
            holder: format!("{node_id}/{}", uuid::Uuid::now_v7()),
        }
    }

    pub fn is_reporter(&self) -> bool {
        self.reporting.load(Ordering::Relaxed)
    }

    fn set(&self, reporting: bool) {
        self.reporting.store(reporting, Ordering::Relaxed);
    }
}

/// Takes part: a first round now (so that a node that is ready already knows whether it
/// reports), then one every [`RENEW_EVERY`] until `cancel` ([`give_up`] lets the lease go).
pub async fn start(app: Arc<App>, bus: &Bus, cancel: CancellationToken) {
    let bucket = bus_core::topology::handoff_bucket(&app.config.streams.events_name);
    let store = match tokio::time::timeout(ROUND_DEADLINE, bus.jetstream().get_key_value(&bucket))
        .await
    {
        Ok(Ok(store)) => store,
        _ => {
            tracing::warn!(%bucket, "no hand-off bucket: this node exports the cluster-wide group numbers, as every node without it does (aggregate them with max by (group), not sum)");
            app.reporter.set(true);
            return;
        }
    };
    take_part(&app, &store).await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RENEW_EVERY) => {}
            }
            take_part(&app, &store).await;
        }
    });
}

/// One round, its outcome recorded (and logged when it changed).
async fn take_part(app: &App, store: &Store) {
    let me = app.reporter.holder.as_str();
    let reporting = tokio::time::timeout(ROUND_DEADLINE, round(store, me))
        .await
        .unwrap_or(false);
    if reporting != app.reporter.is_reporter() {
        tracing::info!(node = %app.config.node.id, reporting, "cluster-wide group numbers on /metrics");
    }
    app.reporter.set(reporting);
}

/// Gives the lease up if this node holds it (at shutdown, before the connection closes),
/// so that another node takes it at its next round instead of after [`LEASE`].
pub async fn give_up(app: &App) {
    if !app.reporter.is_reporter() {
        return;
    }
    app.reporter.set(false);
    let Some(bus) = app.bus() else {
        return;
    };
    let bucket = bus_core::topology::handoff_bucket(&app.config.streams.events_name);
    let given_up = async {
        let store = bus.jetstream().get_key_value(&bucket).await.ok()?;
        let entry = store.entry(LEASE_KEY).await.ok()??;
        if entry.value.as_ref() != app.reporter.holder.as_bytes() {
            return None;
        }
        store
            .delete_expect_revision(LEASE_KEY, Some(entry.revision))
            .await
            .ok()
    };
    let _ = tokio::time::timeout(ROUND_DEADLINE, given_up).await;
}

/// One round: renew the lease held, take one that is free or expired; whether this node
/// holds it after the round.
async fn round(store: &Store, me: &str) -> bool {
    let entry = match store.entry(LEASE_KEY).await {
        Ok(entry) => entry,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the metrics lease");
            return false;
        }
    };
    let Some(entry) = entry else {
        // Never taken: whoever creates it first.
        return store.create(LEASE_KEY, me.to_owned().into()).await.is_ok();
    };
    if entry.operation != Operation::Put {
        // Given up: whoever writes over the deletion first.
        return store
            .update(LEASE_KEY, me.to_owned().into(), entry.revision)
            .await
            .is_ok();
    }
    let held_by_me = entry.value.as_ref() == me.as_bytes();
    let age = time::OffsetDateTime::now_utc() - entry.created;
    let expired = age > time::Duration::try_from(LEASE).unwrap_or(time::Duration::MAX);
    if held_by_me || expired {
        return store
            .update(LEASE_KEY, me.to_owned().into(), entry.revision)
            .await
            .is_ok();
    }
    false
}
