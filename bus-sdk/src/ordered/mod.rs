//! Ordered groups: events with the same `partitionkey` handled one at a time in the
//! order they were stored, different keys in parallel across the group's members, and
//! that order kept through joins, leaves and deaths (ARCHITECTURE.md, "Ordered groups",
//! has the design and the alternatives).
//!
//! Three parts, each in its module:
//! - the **sequencer** ([`sequencer`]): one member at a time (a JetStream consumer with
//!   a pinned client) reads the group's events in stream order and copies each into its
//!   key's partition subject, `bus.ord.<group>.<partition>` (partition =
//!   [`bus_core::partition::partition_of`]), or `bus.ord.<group>.none` without a key;
//! - the **partitions** ([`partition`]): one consumer per partition, each pinned to one
//!   member, which runs its events one key at a time ([`keys`]), retrying a failed one
//!   in place, so nothing of its key overtakes it;
//! - the **assignment** ([`assignment`]): which member owns which partition, from the
//!   group's live members.
//!
//! What keeps order when ownership moves is the [`barrier`]: a new holder of a pinned
//! consumer handles nothing until every delivery the consumer still awaits an ack for is
//! in its own hands (the old holder settled its deliveries, or they came back to the new
//! one after their ack deadline, in stream order).

mod acks;
mod assignment;
mod barrier;
mod consumers;
mod keys;
mod parking;
mod partition;
mod policy;
mod pulls;
mod sequencer;

use std::sync::Arc;
use std::time::Duration;

use bus_core::GroupName;
use bus_core::partition::MAX_PARTITIONS;
use bus_core::topology::ensure_ordered_stream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::error::SubscribeError;
use crate::group::{Group, GroupOptions, START_DEADLINE};
use crate::presence;
use crate::subscription::Handlers;

/// The priority group every member pulls a pinned consumer with.
const PIN_GROUP: &str = "bus";
/// How long a member that stops pulling stays pinned (the server then pins another):
/// the longest a dead sequencer holds the group up before its deliveries' ack deadline
/// starts to count.
const PIN_TTL: Duration = Duration::from_secs(5);
/// How long one pull waits on the server; under [`PIN_TTL`], so a live member's pulls
/// keep its pin.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How often the server proves a waiting pull alive.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// The sequencer's ack deadline: copying an event takes one publish.
const SEQUENCER_ACK_WAIT: Duration = Duration::from_secs(10);
/// How often a held-back owner asks whether the consumer's pending deliveries are all
/// its own.
const BARRIER_CHECK: Duration = Duration::from_millis(100);
/// Metadata on the group's consumer: that the group is ordered, and its partitions.
const META_KIND: &str = "bus.kind";
const KIND_ORDERED: &str = "ordered";
const META_PARTITIONS: &str = "bus.partitions";

/// What every part of an ordered member reads.
pub(crate) struct OrderedShared {
    pub bus: Bus,
    pub name: GroupName,
    pub options: GroupOptions,
    pub partitions: u32,
    pub handlers: Handlers,
    /// This member's filters on the events stream (types and redrives).
    pub filters: Vec<String>,
    /// The ordered groups' stream.
    pub ordered_stream: String,
    /// Confirms acks reached the server, in batches.
    pub syncs: acks::Syncs,
}

impl OrderedShared {
    /// Deliveries one partition consumer hands this member before it acks any:
    /// `max_ack_pending` shared out over the partitions, at least 1.
    fn partition_window(&self) -> usize {
        (self.options.max_ack_pending / self.partitions as usize).max(1)
    }
}

/// Starts a member of the ordered group `name` (see [`crate::GroupBuilder::ordered_by_key`]).
pub(crate) async fn start(
    bus: Bus,
    name: GroupName,
    options: GroupOptions,
    handlers: Handlers,
    partitions: u32,
) -> Result<Group, SubscribeError> {
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        return Err(SubscribeError::InvalidOption {
            option: "ordered_by_key",
            reason: format!("partitions must be 1 to {MAX_PARTITIONS}"),
        });
    }
    ensure_ordered_stream(bus.jetstream(), bus.config(), START_DEADLINE)
        .await
        .map_err(|e| SubscribeError::Consumer(e.to_string()))?;
    let filters = crate::group::member_filters(&bus, &name, &handlers);
    let ordered_stream = bus_core::topology::ordered_stream(&bus.config().streams.events_name);
    let syncs = acks::Syncs::start(bus.client().clone());
    let shared = Arc::new(OrderedShared {
        bus,
        name,
        options,
        partitions,
        handlers,
        filters,
        ordered_stream,
        syncs,
    });
    consumers::ensure(&shared).await?;
    let presence = presence::announce(&shared.bus, &shared.name, shared.handlers.types())
        .await
        .map_err(SubscribeError::Presence)?;
    let me = presence.id().await.unwrap_or_default();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(shared.options.concurrency));
    let lanes = partition::Lanes {
        shared: shared.clone(),
        slots,
        tracker: tracker.clone(),
    };
    tracker.spawn(sequencer::run(shared.clone(), cancel.clone()));
    tracker.spawn(partition::run(
        lanes.clone(),
        partition::Lane::Unkeyed,
        cancel.child_token(),
    ));
    tracker.spawn(assignment::run(lanes, me, cancel.clone()));
    Ok(Group::running(
        shared.name.clone(),
        shared.options.shutdown_grace,
        cancel,
        tracker,
        presence,
    ))
}

pub(crate) use assignment::partitions_of;
pub(crate) use consumers::{is_ordered, partitions_of_consumer};

/// Waits `delay` or until `cancel`; false when cancelled.
async fn pause(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
