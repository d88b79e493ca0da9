//! The consumers of an ordered group: on the events stream, the sequencer's, named as
//! the group (so listings show its pending and lag as any group's), pinned, its metadata
//! saying the group is ordered and how many partitions it has; on the ordered stream, one
//! pinned consumer per partition (`<group>-p<N>`) and one shared by all members for events
//! without a key (`<group>-none`).

use std::collections::HashMap;

use async_nats::jetstream::consumer::{AckPolicy, PriorityPolicy, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use bus_core::GroupName;
use bus_core::retry::backoff_delay;

use super::{
    KIND_ORDERED, META_KIND, META_PARTITIONS, OrderedShared, PIN_GROUP, PIN_TTL, SEQUENCER_ACK_WAIT,
};
use crate::error::SubscribeError;
use crate::group::{START_DEADLINE, consumer};

/// Where an ordered group's events are handled: a partition, or the shared lane of
/// events without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    Partition(u32),
    Unkeyed,
}

impl Lane {
    /// The lane's consumer on the ordered stream.
    pub(crate) fn consumer_name(self, group: &GroupName) -> String {
        match self {
            Lane::Partition(p) => format!("{group}-p{p}"),
            Lane::Unkeyed => format!("{group}-none"),
        }
    }

    /// Whether one member at a time takes the lane's events (a partition), or every
    /// member (no key: no order to keep).
    pub(crate) fn pinned(self) -> bool {
        matches!(self, Lane::Partition(_))
    }
}

/// Puts every consumer of the group in place; refuses a group that exists unordered, or
/// ordered with another number of partitions.
pub(crate) async fn ensure(shared: &OrderedShared) -> Result<(), SubscribeError> {
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        match try_ensure(shared).await {
            Err(Attempt::Transient(e)) if started.elapsed() < START_DEADLINE => {
                tracing::debug!(group = %shared.name, error = %e, "ordered group's consumers not in place yet; retrying");
                tokio::time::sleep(backoff_delay(attempt)).await;
                attempt += 1;
            }
            Err(Attempt::Transient(e)) => return Err(SubscribeError::Consumer(e)),
            Err(Attempt::Refused(e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
}

enum Attempt {
    Transient(String),
    Refused(SubscribeError),
}

async fn try_ensure(shared: &OrderedShared) -> Result<(), Attempt> {
    let js = shared.bus.jetstream();
    let transient = |e: &dyn std::fmt::Display| Attempt::Transient(e.to_string());
    let events = js
        .get_stream(&shared.bus.config().streams.events_name)
        .await
        .map_err(|e| transient(&e))?;
    let name = shared.name.as_str();
    let mut filters = shared.filters.clone();
    match events.consumer_info(name).await {
        Ok(info) => {
            check_kind(shared, &info.config.metadata).map_err(Attempt::Refused)?;
            // Widen to the union of what members handle, as unordered groups do.
            for f in consumer::filters_of(&info.config) {
                if !filters.contains(&f) {
                    filters.push(f);
                }
            }
        }
        Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {}
        Err(e) => return Err(transient(&e)),
    }
    events
        .create_consumer(sequencer_config(shared, filters))
        .await
        .map_err(|e| Attempt::Refused(SubscribeError::Consumer(e.to_string())))?;
    let ordered = js
        .get_stream(&shared.ordered_stream)
        .await
        .map_err(|e| transient(&e))?;
    let lanes = (0..shared.partitions)
        .map(Lane::Partition)
        .chain([Lane::Unkeyed]);
    for lane in lanes {
        ordered
            .create_consumer(lane_config(shared, lane))
            .await
            .map_err(|e| Attempt::Refused(SubscribeError::Consumer(e.to_string())))?;
    }
    Ok(())
}

/// Refuses a consumer of the group's name that is not an ordered group's, or that has
/// another number of partitions (a key would map elsewhere).
fn check_kind(
    shared: &OrderedShared,
    metadata: &HashMap<String, String>,
) -> Result<(), SubscribeError> {
    if metadata.get(META_KIND).map(String::as_str) != Some(KIND_ORDERED) {
        return Err(SubscribeError::InvalidOption {
            option: "ordered_by_key",
            reason: format!(
                "group {} exists as an unordered group; an ordered group needs a name of its own",
                shared.name
            ),
        });
    }
    let recorded = metadata
        .get(META_PARTITIONS)
        .and_then(|p| p.parse::<u32>().ok());
    if recorded != Some(shared.partitions) {
        return Err(SubscribeError::InvalidOption {
            option: "ordered_by_key",
            reason: format!(
                "group {} has {} partitions, not {}: the partition count of a group is fixed (every key would move)",
                shared.name,
                recorded.map_or("an unknown number of".to_owned(), |p| p.to_string()),
                shared.partitions
            ),
        });
    }
    Ok(())
}

/// The partition count recorded in `metadata` of an ordered group's consumer (`None`:
/// not an ordered group's).
pub(crate) fn partitions_of_consumer(metadata: &HashMap<String, String>) -> Option<u32> {
    if !is_ordered(metadata) {
        return None;
    }
    metadata.get(META_PARTITIONS).and_then(|p| p.parse().ok())
}

/// Whether `metadata` (of a consumer on the events stream) marks an ordered group's.
pub(crate) fn is_ordered(metadata: &HashMap<String, String>) -> bool {
    metadata.get(META_KIND).map(String::as_str) == Some(KIND_ORDERED)
}

/// The group's consumer (as an unordered group's, from the same options), pinned, with
/// the sequencer's ack deadline and the metadata that marks it ordered.
fn sequencer_config(shared: &OrderedShared, mut filters: Vec<String>) -> pull::Config {
    filters.sort();
    pull::Config {
        description: Some(format!(
            "bus ordered group {}: its sequencer, copying events into {} partitions",
            shared.name, shared.partitions
        )),
        ack_wait: SEQUENCER_ACK_WAIT,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![PIN_GROUP.to_owned()],
        priority_timeout: PIN_TTL,
        metadata: HashMap::from([
            (META_KIND.to_owned(), KIND_ORDERED.to_owned()),
            (META_PARTITIONS.to_owned(), shared.partitions.to_string()),
        ]),
        ..consumer::config(&shared.name, &shared.options, filters)
    }
}

fn lane_config(shared: &OrderedShared, lane: Lane) -> pull::Config {
    let subjects = shared.bus.subjects();
    let (filter_subject, description) = match lane {
        Lane::Partition(p) => (
            subjects.ordered_partition(&shared.name, p),
            format!("bus ordered group {}: partition {p}", shared.name),
        ),
        Lane::Unkeyed => (
            subjects.ordered_unkeyed(&shared.name),
            format!("bus ordered group {}: events without a key", shared.name),
        ),
    };
    let base = pull::Config {
        durable_name: Some(lane.consumer_name(&shared.name)),
        description: Some(description),
        ack_policy: AckPolicy::Explicit,
        ack_wait: shared.options.ack_wait,
        // The member dead-letters after `max_deliver` itself.
        max_deliver: -1,
        filter_subject,
        ..Default::default()
    };
    match lane {
        Lane::Partition(_) => pull::Config {
            max_ack_pending: shared.partition_window() as i64,
            priority_policy: PriorityPolicy::PinnedClient,
            priority_groups: vec![PIN_GROUP.to_owned()],
            priority_timeout: PIN_TTL,
            ..base
        },
        Lane::Unkeyed => pull::Config {
            max_ack_pending: shared.options.max_ack_pending as i64,
            ..base
        },
    }
}
