//! Operating the bus: consumer groups and their backlog ([`Bus::groups`], example
//! there). Used by `bus-node`'s admin endpoints and available to services; dead letters
//! are in [`crate::dead_letter`], members in [`crate::presence`].

use futures::TryStreamExt;

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
        let mut groups: Vec<GroupInfo> = infos
            .into_iter()
            .filter(|i| i.config.durable_name.is_some())
            .map(|i| {
                let mut filters = i.config.filter_subjects.clone();
                if !i.config.filter_subject.is_empty() {
                    filters.push(i.config.filter_subject.clone());
                }
                GroupInfo {
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
        Ok(groups)
    }
}
