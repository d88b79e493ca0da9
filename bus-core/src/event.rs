//! The event envelope: CloudEvents 1.0 attributes, the bus's extensions and the data.

use std::collections::BTreeMap;

use bytes::Bytes;
use time::OffsetDateTime;

use crate::event_type::EventType;

/// The only CloudEvents version the bus speaks.
pub const SPEC_VERSION: &str = "1.0";

/// One CloudEvents 1.0 event. `data` holds the payload bytes as they travel on NATS;
/// `datacontenttype` says how to read them (JSON when absent). Built with
/// [`Event::builder`] (example there).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Id of the event, unique within its `source`; with the source, JetStream's
    /// de-duplication key (`Nats-Msg-Id`,
    /// [`binary_mode::dedup_id`](crate::binary_mode::dedup_id)).
    pub id: String,
    /// The context that produced the event, a URI reference (`/shop`).
    pub source: String,
    /// The CloudEvents `type`; it also picks the event's subject.
    pub event_type: EventType,
    /// When the event happened; `None` if the producer did not say.
    pub time: Option<OffsetDateTime>,
    /// What the event is about within its source (`order/42`).
    pub subject: Option<String>,
    /// Media type of `data`; `None` reads as JSON.
    pub datacontenttype: Option<String>,
    /// URI of the schema that `data` follows.
    pub dataschema: Option<String>,
    /// Ordering key: events with the same key are handled in publish order by ordered groups.
    pub partitionkey: Option<String>,
    /// W3C trace context of the hop that produced the event.
    pub traceparent: Option<String>,
    /// W3C vendor trace state that goes with `traceparent`.
    pub tracestate: Option<String>,
    /// Other extension attributes (lowercase names, string values).
    pub extensions: BTreeMap<String, String>,
    /// The payload.
    pub data: Bytes,
}

impl Event {
    /// Starts an event of `event_type` from `source` with a fresh time-ordered id.
    ///
    /// ```
    /// use bus_core::{Event, EventType};
    /// let t = EventType::new("shop.order.created").unwrap();
    /// let e = Event::builder(t, "/shop").data_json(&serde_json::json!({"n": 1})).unwrap().build();
    /// assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
    /// ```
    pub fn builder(event_type: EventType, source: impl Into<String>) -> EventBuilder {
        EventBuilder {
            event: Event {
                id: String::new(),
                source: source.into(),
                event_type,
                time: Some(OffsetDateTime::now_utc()),
                subject: None,
                datacontenttype: None,
                dataschema: None,
                partitionkey: None,
                traceparent: None,
                tracestate: None,
                extensions: BTreeMap::new(),
                data: Bytes::new(),
            },
        }
    }
}

/// Builds an [`Event`]; see [`Event::builder`].
///
/// ```
/// use bus_core::{Event, EventType};
/// let event = Event::builder(EventType::new("shop.order.created")?, "/shop")
///     .id("order-42-created")
///     .subject("order/42")
///     .partition_key("customer-7")
///     .extension("tenant", "acme")
///     .data("text/plain", "order 42")
///     .build();
/// assert_eq!(event.partitionkey.as_deref(), Some("customer-7"));
/// # Ok::<(), bus_core::EventTypeError>(())
/// ```
#[derive(Debug)]
pub struct EventBuilder {
    event: Event,
}

impl EventBuilder {
    /// Sets the id; by default the caller of `build` gets a new unique one.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.event.id = id.into();
        self
    }

    /// Sets the `subject`: what the event is about within its source.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = Some(subject.into());
        self
    }

    /// Sets the ordering key (`partitionkey`).
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.event.partitionkey = Some(key.into());
        self
    }

    /// Sets the time; `None` leaves it out. By default it is when `builder` was called.
    pub fn time(mut self, time: Option<OffsetDateTime>) -> Self {
        self.event.time = time;
        self
    }

    /// Sets the URI of the data's schema.
    pub fn dataschema(mut self, schema: impl Into<String>) -> Self {
        self.event.dataschema = Some(schema.into());
        self
    }

    /// Adds an extension attribute. Encoding refuses names that are not 1 to
    /// [`MAX_EXTENSION_NAME_LEN`](crate::binary_mode::MAX_EXTENSION_NAME_LEN) lowercase
    /// letters or digits, or that are standard attributes.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.extensions.insert(name.into(), value.into());
        self
    }

    /// Raw data with its content type.
    pub fn data(mut self, content_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        self.event.datacontenttype = Some(content_type.into());
        self.event.data = data.into();
        self
    }

    /// Data serialized as JSON (`application/json`).
    pub fn data_json<T: serde::Serialize + ?Sized>(
        self,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        let bytes = serde_json::to_vec(value)?;
        Ok(self.data("application/json", bytes))
    }

    /// The event, with a new id from [`new_event_id`] unless one was set.
    pub fn build(mut self) -> Event {
        if self.event.id.is_empty() {
            self.event.id = new_event_id();
        }
        self.event
    }
}

/// A new unique, time-ordered event id (a UUIDv7). Its random bits come from `rand`'s
/// thread-local generator (uuid's `fast-rng` feature), seeded from the OS: without it,
/// each id was a `getrandom` system call, ~0.5 µs per published event
/// (BENCHMARKS.md, "Profile, tenth round").
pub fn new_event_id() -> String {
    // Encoded into a stack buffer, not through `Display`: one per published event.
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_uuids() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_event_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 36));
    }
}
