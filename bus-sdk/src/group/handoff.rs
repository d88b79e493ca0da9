//! Hand-offs: a member that gets an event it has no handler for (another member of the
//! group, newer or older, registered that type) hands it back to the group with a short
//! delay, so that a member that has the handler gets it. JetStream counts each hand-back
//! as a delivery, so the member notes it in the hand-off bucket (`<events
//! stream>_HANDOFFS`, key `<group>.<stream sequence>`): a redelivered event's attempts
//! are its deliveries less its hand-offs, and a rolling deploy never spends an event's
//! attempts. A member that stops or re-opens returns the deliveries it fetched and never
//! started the same way (noted as returns): a delivery no handler ran is no attempt. An event that no member has taken for the group's `no_handler_grace` since
//! its first hand-off is dead-lettered as "no handler".
//!
//! Cost: nothing for a first delivery; one bucket read per redelivery; a read and a
//! write per hand-off; a delete when a handed-off event is settled.

use std::time::Duration;

use async_nats::jetstream::kv::Store;
use bus_core::GroupName;
use bus_core::topology::handoff_bucket;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::bus::Bus;

/// How long a handed-back event waits before JetStream offers it to the group again
/// (see [`GroupBuilder::no_handler_grace`](crate::GroupBuilder::no_handler_grace)).
pub const NO_HANDLER_DELAY: Duration = Duration::from_secs(1);

/// The hand-off bucket, if it is there (the bus creates it on connect unless told not to
/// manage the topology); without it a member dead-letters an event it has no handler for
/// at once, as before hand-offs.
pub(crate) async fn bucket(bus: &Bus) -> Option<Store> {
    let name = handoff_bucket(&bus.config().streams.events_name);
    match bus.jetstream().get_key_value(name.as_str()).await {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(bucket = %name, error = %e, "no hand-off bucket: events without a handler here are dead-lettered at once");
            None
        }
    }
}

/// What the bucket holds for one handed-off event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Hand-backs so far (by members without a handler for the event).
    pub handoffs: u32,
    /// When the first hand-back was made, or the record, while it has none (Unix
    /// seconds).
    pub since: i64,
    /// Deliveries returned unstarted by members that stopped or re-opened.
    #[serde(default)]
    pub returned: u32,
}

impl Record {
    /// Deliveries that were no attempts.
    pub(crate) fn not_attempts(&self) -> u32 {
        self.handoffs.saturating_add(self.returned)
    }
}

/// The key of event `seq` in `group`.
fn key(group: &GroupName, seq: u64) -> String {
    format!("{group}.{seq}")
}

/// The record of event `seq`, if it was handed back; a bucket that cannot be read counts
/// as no record (the event's attempts may then count a hand-off, never lose one).
pub(crate) async fn read(store: &Store, group: &GroupName, seq: u64) -> Option<Record> {
    match store.get(key(group, seq)).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(%group, seq, error = %e, "cannot read a hand-off record");
            None
        }
    }
}

/// Notes one more hand-back of event `seq`; returns the record as written.
pub(crate) async fn note(
    store: &Store,
    group: &GroupName,
    seq: u64,
    before: Option<Record>,
) -> Record {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let record = Record {
        handoffs: before.map_or(1, |r| r.handoffs.saturating_add(1)),
        since: before.filter(|r| r.handoffs > 0).map_or(now, |r| r.since),
        returned: before.map_or(0, |r| r.returned),
    };
    write(store, group, seq, &record).await;
    record
}

/// Notes that event `seq` was returned unstarted (its member stopped or re-opened).
pub(crate) async fn note_return(store: &Store, group: &GroupName, seq: u64) {
    let before = read(store, group, seq).await;
    let record = Record {
        handoffs: before.map_or(0, |r| r.handoffs),
        since: before.map_or_else(|| OffsetDateTime::now_utc().unix_timestamp(), |r| r.since),
        returned: before.map_or(1, |r| r.returned.saturating_add(1)),
    };
    write(store, group, seq, &record).await;
}

async fn write(store: &Store, group: &GroupName, seq: u64, record: &Record) {
    match serde_json::to_vec(record) {
        Ok(bytes) => {
            if let Err(e) = store.put(key(group, seq), bytes.into()).await {
                tracing::warn!(%group, seq, error = %e, "cannot note a hand-off; the event's attempts will count it");
            }
        }
        Err(e) => tracing::warn!(%group, seq, error = %e, "cannot encode a hand-off record"),
    }
}

/// Forgets event `seq`'s record (it was settled for good).
pub(crate) async fn forget(store: &Store, group: &GroupName, seq: u64) {
    if let Err(e) = store.purge(key(group, seq)).await {
        tracing::debug!(%group, seq, error = %e, "cannot remove a hand-off record; it expires");
    }
}

/// How long ago a record's first hand-back was made.
pub(crate) fn waited(record: &Record) -> Duration {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    Duration::from_secs(u64::try_from(now - record.since).unwrap_or(0))
}
