//! Where events live on NATS: `<prefix>.<event type>` for events (default prefix
//! `bus.evt`), `<dlq prefix>.<group>` for dead letters (default `bus.dlq`), and
//! `<redrive prefix>.<group>.<event type>` for dead letters sent back to the one group
//! that gave up on them (default `bus.redrive`; stored in the events stream).

use crate::event_type::{EventPattern, EventType};
use crate::group_name::GroupName;

/// Default `subjects.prefix`: where events live.
pub const DEFAULT_EVENT_PREFIX: &str = "bus.evt";
/// Default `subjects.dlq_prefix`: where dead letters live.
pub const DEFAULT_DLQ_PREFIX: &str = "bus.dlq";
/// Default `subjects.redrive_prefix`: where redriven dead letters go back to their group.
pub const DEFAULT_REDRIVE_PREFIX: &str = "bus.redrive";
/// Default `subjects.ordered_prefix`: where ordered groups keep their partitions.
pub const DEFAULT_ORDERED_PREFIX: &str = "bus.ord";

/// Maps event types and groups to subjects. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    events: String,
    dlq: String,
    redrive: String,
    ordered: String,
}

impl Subjects {
    /// The prefixes must be valid and disjoint (see [`crate::config::SubjectsConfig::validate`]).
    pub fn new(
        events_prefix: impl Into<String>,
        dlq_prefix: impl Into<String>,
        redrive_prefix: impl Into<String>,
    ) -> Self {
        Self {
            events: events_prefix.into(),
            dlq: dlq_prefix.into(),
            redrive: redrive_prefix.into(),
            ordered: DEFAULT_ORDERED_PREFIX.to_owned(),
        }
    }

    /// The same subjects with ordered groups' partitions under `prefix`.
    pub fn with_ordered_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.ordered = prefix.into();
        self
    }

    /// Partition `partition` of the ordered group `group`: `bus.ord.<group>.<partition>`.
    pub fn ordered_partition(&self, group: &GroupName, partition: u32) -> String {
        format!("{}.{}.{}", self.ordered, group, partition)
    }

    /// Events of the ordered group `group` that carry no key: `bus.ord.<group>.none`.
    pub fn ordered_unkeyed(&self, group: &GroupName) -> String {
        format!("{}.{}.none", self.ordered, group)
    }

    /// Where partition `partition` of the ordered group `group` holds aside the events of
    /// a failing key (`token` names the key): `bus.ord.<group>.park.<partition>.<token>`.
    pub fn ordered_parked(&self, group: &GroupName, partition: u32, token: &str) -> String {
        format!("{}.{}.park.{}.{}", self.ordered, group, partition, token)
    }

    /// Every key held aside in partition `partition` of `group`:
    /// `bus.ord.<group>.park.<partition>.*`.
    pub fn ordered_parked_in(&self, group: &GroupName, partition: u32) -> String {
        format!("{}.{}.park.{}.*", self.ordered, group, partition)
    }

    /// Every key held aside in any partition of `group`: `bus.ord.<group>.park.>`.
    pub fn ordered_parked_all(&self, group: &GroupName) -> String {
        format!("{}.{}.park.>", self.ordered, group)
    }

    /// Every partition of every ordered group: the ordered stream's subject filter.
    pub fn all_ordered(&self) -> String {
        format!("{}.>", self.ordered)
    }

    /// `bus.evt.shop.order.created` for `shop.order.created`. Built by hand, not with
    /// `format!`: this runs once per publish.
    pub fn event(&self, event_type: &EventType) -> String {
        let t = event_type.as_str();
        let mut s = String::with_capacity(self.events.len() + 1 + t.len());
        s.push_str(&self.events);
        s.push('.');
        s.push_str(t);
        s
    }

    /// The subject filter for a pattern (`bus.evt.shop.>` for `shop.>`).
    pub fn pattern(&self, pattern: &EventPattern) -> String {
        format!("{}.{}", self.events, pattern)
    }

    /// Every event: the events stream's subject filter.
    pub fn all_events(&self) -> String {
        format!("{}.>", self.events)
    }

    /// The event type a subject carries, if it is under the events prefix.
    pub fn event_type_of(&self, subject: &str) -> Option<EventType> {
        let rest = subject.strip_prefix(&self.events)?.strip_prefix('.')?;
        EventType::new(rest).ok()
    }

    /// Where a dead letter of `group` is sent back to be handled by that group alone.
    pub fn redrive(&self, group: &GroupName, event_type: &EventType) -> String {
        format!("{}.{}.{}", self.redrive, group, event_type)
    }

    /// Everything redriven to `group`: part of that group's consumer filter.
    pub fn redrive_filter(&self, group: &GroupName) -> String {
        format!("{}.{}.>", self.redrive, group)
    }

    /// Every redriven event: the second subject filter of the events stream.
    pub fn all_redrives(&self) -> String {
        format!("{}.>", self.redrive)
    }

    /// Dead letters of one group.
    pub fn dead_letter(&self, group: &GroupName) -> String {
        format!("{}.{}", self.dlq, group)
    }

    /// Every dead letter: the dead-letter stream's subject filter.
    pub fn all_dead_letters(&self) -> String {
        format!("{}.>", self.dlq)
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(
            DEFAULT_EVENT_PREFIX,
            DEFAULT_DLQ_PREFIX,
            DEFAULT_REDRIVE_PREFIX,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_map_to_one_subject_and_back() {
        let s = Subjects::default();
        let t = EventType::new("shop.order.created").ok();
        let t = t.as_ref().map(|t| s.event(t));
        assert_eq!(t.as_deref(), Some("bus.evt.shop.order.created"));
        assert_eq!(
            s.event_type_of("bus.evt.shop.order.created")
                .map(|t| t.to_string()),
            Some("shop.order.created".to_owned())
        );
        assert_eq!(s.event_type_of("bus.evtx.a"), None);
        assert_eq!(s.event_type_of("other.a"), None);
        let billing = GroupName::new("billing").ok();
        let dlq = billing.as_ref().map(|g| s.dead_letter(g));
        assert_eq!(dlq.as_deref(), Some("bus.dlq.billing"));
        assert_eq!(s.all_events(), "bus.evt.>");
        let t = EventType::new("a.b").ok();
        let t = t
            .as_ref()
            .zip(billing.as_ref())
            .map(|(t, g)| s.redrive(g, t));
        assert_eq!(t.as_deref(), Some("bus.redrive.billing.a.b"));
        let filter = billing.as_ref().map(|g| s.redrive_filter(g));
        assert_eq!(filter.as_deref(), Some("bus.redrive.billing.>"));
    }
}
