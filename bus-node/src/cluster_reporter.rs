//! Which node exports the cluster-wide numbers on `/metrics` (a group's pending, in
//! flight and redelivered events, its oldest unacknowledged age, the ordered partitions'
//! numbers): JetStream's view, the same from every node, so that summed over nodes
//! (`sum by (group)`) they would count each group once per node. One node at a time holds
//! a lease, the key [`LEASE_KEY`] of the hand-off bucket (`<events>_HANDOFFS`), and
//! exports them; the others leave those series out.
//!
//! The holder writes its id again every [`RENEW_EVERY`]; a lease whose revision has not
//! changed for [`LEASE`] on this node's own monotonic clock (no clock is compared with
//! another: its holder died or lost NATS) is taken by the first node that sees it so, by a
//! compare-and-set on the key's revision, so two nodes never both win. The holder keeps
//! reporting through a failed round as long as its last renewal is recent enough that
//! no other node can have taken the lease ([`KEEP_THROUGH`]). A node that starts draining
//! gives the lease up (deletes the key), so another takes it at its next round. Where
//! the bucket does not exist (an operator manages the streams and made none) every node
//! reports, and says so in its log: numbers counted per node beat numbers missing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
/// How long after its last renewal a holder whose rounds fail still reports: no other
/// node can take the lease before [`LEASE`] after that renewal (it must see the same
/// revision for that long), less a round's length and deadline.
const KEEP_THROUGH: Duration = Duration::from_secs(15 - 5 - 3);

/// Whether this node exports the cluster-wide numbers now.
#[derive(Debug)]
pub struct Reporter {
    reporting: AtomicBool,
    /// Set when the node starts draining: no round takes or keeps the lease after it.
    stopping: AtomicBool,
    /// What this node writes in the lease: its `node.id` and an id of this process (two
    /// nodes may share a `node.id`, e.g. the host name).
    holder: String,
}

impl Reporter {
    pub fn new(node_id: &str) -> Self {
        Self {
            reporting: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            holder: format!("{node_id}/{}", uuid::Uuid::now_v7()),
        }
    }

    pub fn is_reporter(&self) -> bool {
        self.reporting.load(Ordering::Relaxed)
    }

    fn set(&self, reporting: bool) {
        let reporting = reporting && !self.stopping.load(Ordering::Relaxed);
        self.reporting.store(reporting, Ordering::Relaxed);
    }
}

/// What a round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// This node holds the lease (created, renewed or taken over).
    Holds,
    /// Another node holds it.
    Other,
    /// The lease could not be read or written (NATS unreachable, a timeout).
    Failed,
}

/// What a node remembers between rounds.
#[derive(Debug, Default)]
struct Memory {
    /// Another holder's revision, and since when (this node's clock) it is unchanged.
    seen: Option<(u64, Instant)>,
    /// When this node last renewed the lease.
    renewed: Option<Instant>,
}

/// Takes part: a first round now (so that a node that is ready already knows whether it
/// reports), then one every [`RENEW_EVERY`] until `cancel` ([`give_up`] lets the lease go).
pub async fn start(app: Arc<App>, bus: &Bus, cancel: CancellationToken) {
    let bucket = bus_core::topology::handoff_bucket(&app.config.streams.events_name);
    let mut memory = Memory::default();
    let mut store = open(&app, bus, &bucket).await;
    if let Some(store) = &store {
        take_part(&app, store, &mut memory).await;
    }
    let bus = bus.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RENEW_EVERY) => {}
            }
            if store.is_none() {
                store = open(&app, &bus, &bucket).await;
            }
            if let Some(store) = &store {
                take_part(&app, store, &mut memory).await;
            }
        }
    });
}

/// The hand-off bucket; `None` while it cannot be opened (this node then does not report,
/// unless the bucket does not exist at all: then it reports, as every node does).
async fn open(app: &App, bus: &Bus, bucket: &str) -> Option<Store> {
    let js = bus.jetstream();
    match tokio::time::timeout(ROUND_DEADLINE, js.get_key_value(bucket)).await {
        Ok(Ok(store)) => return Some(store),
        Ok(Err(e)) => tracing::debug!(%bucket, error = %e, "cannot open the hand-off bucket yet"),
        Err(_) => tracing::debug!(%bucket, "opening the hand-off bucket timed out"),
    }
    let stream = format!("KV_{bucket}");
    let missing = matches!(
        tokio::time::timeout(ROUND_DEADLINE, js.get_stream(&stream)).await,
        Ok(Err(e)) if matches!(
            e.kind(),
            async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
        )
    );
    if missing && !app.reporter.is_reporter() {
        tracing::warn!(%bucket, "no hand-off bucket: this node exports the cluster-wide group numbers, as every node without it does (aggregate them with max by (group), not sum)");
    }
    app.reporter.set(missing);
    None
}

/// One round, its outcome recorded (and logged when it changed).
async fn take_part(app: &App, store: &Store, memory: &mut Memory) {
    let me = app.reporter.holder.as_str();
    let round = tokio::time::timeout(ROUND_DEADLINE, round(store, me, memory))
        .await
        .unwrap_or(Round::Failed);
    let reporting = match round {
        Round::Holds => {
            memory.renewed = Some(Instant::now());
            true
        }
        Round::Other => false,
        Round::Failed => memory.renewed.is_some_and(|at| at.elapsed() < KEEP_THROUGH),
    };
    if reporting != app.reporter.is_reporter() {
        tracing::info!(node = %app.config.node.id, reporting, "cluster-wide group numbers on /metrics");
    }
    app.reporter.set(reporting);
}

/// Gives the lease up if this node holds it (when the node starts draining), so that
/// another node takes it at its next round instead of after [`LEASE`]. Whatever the flag
/// says: a round in flight may have renewed it since.
pub async fn give_up(app: &App) {
    app.reporter.stopping.store(true, Ordering::Relaxed);
    app.reporter.set(false);
    let Some(bus) = app.bus() else {
        return;
    };
    let bucket = bus_core::topology::handoff_bucket(&app.config.streams.events_name);
    let given_up = async {
        let store = bus.jetstream().get_key_value(&bucket).await.ok()?;
        // A renewal in flight changes the revision once: read again and retry.
        for _ in 0..3 {
            let entry = store.entry(LEASE_KEY).await.ok()??;
            if entry.operation != Operation::Put
                || entry.value.as_ref() != app.reporter.holder.as_bytes()
            {
                return None;
            }
            if store
                .delete_expect_revision(LEASE_KEY, Some(entry.revision))
                .await
                .is_ok()
            {
                return Some(());
            }
        }
        None
    };
    let _ = tokio::time::timeout(ROUND_DEADLINE, given_up).await;
}

/// One round: renew the lease held, take one that is free or stale.
async fn round(store: &Store, me: &str, memory: &mut Memory) -> Round {
    let holds = |ok: bool| if ok { Round::Holds } else { Round::Failed };
    let entry = match store.entry(LEASE_KEY).await {
        Ok(entry) => entry,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the metrics lease");
            return Round::Failed;
        }
    };
    let Some(entry) = entry else {
        // Never taken: whoever creates it first.
        return holds(store.create(LEASE_KEY, me.to_owned().into()).await.is_ok());
    };
    if entry.operation != Operation::Put || entry.value.as_ref() == me.as_bytes() {
        // Given up (whoever writes over the deletion first), or ours to renew.
        memory.seen = None;
        let written = store
            .update(LEASE_KEY, me.to_owned().into(), entry.revision)
            .await
            .is_ok();
        return holds(written);
    }
    match memory.seen {
        Some((revision, since)) if revision == entry.revision && since.elapsed() >= LEASE => {
            memory.seen = None;
            let taken = store
                .update(LEASE_KEY, me.to_owned().into(), entry.revision)
                .await
                .is_ok();
            if taken { Round::Holds } else { Round::Other }
        }
        Some((revision, _)) if revision == entry.revision => Round::Other,
        _ => {
            memory.seen = Some((entry.revision, Instant::now()));
            Round::Other
        }
    }
}
