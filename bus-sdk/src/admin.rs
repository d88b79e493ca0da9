//! Operating the bus: consumer groups and their backlog ([`Bus::groups`], example
//! there). Used by `bus-node`'s admin endpoints and available to services; dead letters
//! are in [`crate::dead_letter`], members in [`crate::presence`].

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;

use crate::bus::Bus;
use crate::error::PublishError;

/// An admin operation failed: [`Bus::groups`], [`Bus::members`], [`Bus::dead_letters`],
/// [`Bus::redrive`] (whose example matches on it), [`Bus::redrive_group`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A JetStream request failed (stream missing, no permission, timeout); holds its
    /// message.
    #[error("JetStream request failed: {0}")]
    JetStream(String),
    /// A dead letter cannot be sent back, for example because it has no valid `ce-type`
    /// header.
    #[error("dead letter {seq} cannot be redriven: {reason}")]
    NotRedrivable {
        /// The dead letter's sequence in the dead-letter stream.
        seq: u64,
        /// Why it cannot be redriven.
        reason: String,
    },
    /// Storing the redriven event failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

pub(crate) fn js_err(e: impl std::fmt::Display) -> AdminError {
    AdminError::JetStream(e.to_string())
}

/// A consumer group as JetStream sees it, from [`Bus::groups`] (example there).
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's name, which is also its durable consumer's name.
    pub name: String,
    /// The subject filters of the group's consumer.
    pub filters: Vec<String>,
    /// Events not yet delivered to any member.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub in_flight: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
    /// Pull requests waiting: roughly, idle member slots.
    pub waiting: u64,
    /// Every event of the group's up to this stream sequence is acknowledged (its
    /// consumer's acknowledgement floor): the oldest event it has not finished is after it.
    pub acked_through: u64,
    /// An ordered group's partitions (`None`: not ordered). For an ordered group the
    /// counts above are its sequencer's: events not yet copied into their partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<PartitionInfo>>,
}

/// One partition of an ordered group, in [`GroupInfo::partitions`]. Which member owns it
/// follows from the group's live members ([`crate::presence::partition_owner`]).
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct PartitionInfo {
    /// The partition's number.
    pub partition: u32,
    /// Events copied into the partition and not yet delivered to its owner (its lag).
    pub pending: u64,
    /// Delivered to its owner, not yet acknowledged.
    pub in_flight: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
    /// Whether a member holds the partition's pin now. JetStream pins a member when it
    /// first hands it an event, so a partition that has had none since its owner came
    /// may show none.
    pub pinned: bool,
    /// Seconds since the oldest event of the partition not yet settled was copied into
    /// it (the partition keeps only those); 0 when there is none, `None` when it could not
    /// be read.
    pub oldest_unacked_age_seconds: Option<f64>,
    /// Events of failing keys held aside from the partition (parked), waiting for their
    /// key's failed event to be handled or dead-lettered; not counted in `pending`.
    pub parked_events: u64,
    /// Keys held aside (parked).
    pub parked_keys: u64,
}

impl Bus {
    /// Every consumer group on the events stream, with its backlog, sorted by name.
    ///
    /// ```no_run
    /// # async fn f(bus: bus_sdk::Bus) -> Result<(), bus_sdk::admin::AdminError> {
    /// for g in bus.groups().await? {
    ///     println!("{}: {} pending, {} in flight", g.name, g.pending, g.in_flight);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, AdminError> {
        let stream = self
            .jetstream()
            .get_stream(&self.config().streams.events_name)
            .await
            .map_err(js_err)?;
        let infos: Vec<_> = stream.consumers().try_collect().await.map_err(js_err)?;
        // Ordered groups and their partition counts.
        let ordered: HashMap<String, u32> = infos
            .iter()
            .filter_map(|i| {
                crate::ordered::partitions_of_consumer(&i.config.metadata)
                    .map(|p| (i.name.clone(), p))
            })
            .collect();
        let mut groups: Vec<GroupInfo> = infos
            .into_iter()
            .filter(|i| i.config.durable_name.is_some())
            .map(|i| {
                let mut filters = i.config.filter_subjects.clone();
                if !i.config.filter_subject.is_empty() {
                    filters.push(i.config.filter_subject.clone());
                }
                GroupInfo {
                    partitions: ordered.contains_key(&i.name).then(Vec::new),
                    name: i.name,
                    filters,
                    pending: i.num_pending,
                    in_flight: i.num_ack_pending as u64,
                    redelivered: i.num_redelivered as u64,
                    waiting: i.num_waiting as u64,
                    acked_through: i.ack_floor.stream_sequence,
                }
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        if !ordered.is_empty() {
            self.read_partitions(&mut groups, &ordered).await?;
        }
        Ok(groups)
    }

    /// Fills in the ordered groups' partitions: one listing of the ordered stream's
    /// consumers, one of its parked keys per group, and one read per partition for its
    /// oldest event (at most 32 at once).
    async fn read_partitions(
        &self,
        groups: &mut [GroupInfo],
        ordered: &HashMap<String, u32>,
    ) -> Result<(), AdminError> {
        let name = bus_core::topology::ordered_stream(&self.config().streams.events_name);
        let stream = self.jetstream().get_stream(&name).await.map_err(js_err)?;
        let consumers: HashMap<String, async_nats::jetstream::consumer::Info> = stream
            .consumers()
            .map_ok(|i| (i.name.clone(), i))
            .try_collect()
            .await
            .map_err(js_err)?;
        let subjects = self.subjects();
        let now = OffsetDateTime::now_utc();
        for group in groups.iter_mut() {
            let Some(partitions) = group.partitions.as_mut() else {
                continue;
            };
            let Ok(group_name) = bus_core::GroupName::new(group.name.clone()) else {
                continue;
            };
            let count = ordered.get(&group.name).copied().unwrap_or(0);
            for p in 0..count {
                let Some(info) = consumers.get(&format!("{}-p{p}", group.name)) else {
                    continue;
                };
                partitions.push(PartitionInfo {
                    partition: p,
                    pending: info.num_pending,
                    in_flight: info.num_ack_pending as u64,
                    redelivered: info.num_redelivered as u64,
                    pinned: info
                        .priority_groups
                        .iter()
                        .any(|g| g.pinned_client_id.is_some()),
                    oldest_unacked_age_seconds: None,
                    parked_events: 0,
                    parked_keys: 0,
                });
            }
            // Parked keys: `<prefix>.<group>.park.<partition>.<token>`, one read.
            let parked: Vec<(String, usize)> = stream
                .info_with_subjects(subjects.ordered_parked_all(&group_name))
                .await
                .map_err(js_err)?
                .try_collect()
                .await
                .map_err(js_err)?;
            for (subject, events) in parked {
                let mut tokens = subject.rsplit('.');
                let (_, partition) = (tokens.next(), tokens.next());
                let Some(p) = partition.and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(info) = partitions.iter_mut().find(|i| i.partition == p)
                    && events > 0
                {
                    info.parked_events += events as u64;
                    info.parked_keys += 1;
                }
            }
            let ages: Vec<(usize, Option<f64>)> = futures::stream::iter(0..partitions.len())
                .map(|i| {
                    let subject = subjects.ordered_partition(&group_name, partitions[i].partition);
                    let stream = &stream;
                    async move {
                        let age = match stream.direct_get_first_for_subject(subject).await {
                            Ok(m) => Some((now - m.time).as_seconds_f64().max(0.0)),
                            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => Some(0.0),
                            Err(_) => None,
                        };
                        (i, age)
                    }
                })
                .buffer_unordered(32)
                .collect()
                .await;
            for (i, age) in ages {
                partitions[i].oldest_unacked_age_seconds = age;
            }
        }
        Ok(())
    }
}
