//! Typed events: a payload type names its event type once and travels as JSON.

use std::sync::Arc;

use async_nats::HeaderMap;
use bus_core::Event;
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

/// A payload type that is published and handled as an event.
///
/// ```
/// use bus_sdk::EventPayload;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderCreated { order_id: u64, customer: String }
/// impl EventPayload for OrderCreated {
///     const EVENT_TYPE: &'static str = "shop.order.created";
///     fn partition_key(&self) -> Option<String> { Some(self.customer.clone()) }
/// }
/// ```
pub trait EventPayload: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The lowercase dotted event type name (`shop.order.created`), a valid
    /// [`EventType`](bus_core::EventType) (example on [`EventPayload`]).
    const EVENT_TYPE: &'static str;

    /// The ordering key (`partitionkey`), if events of this type are ordered per key
    /// (example on [`EventPayload`]).
    fn partition_key(&self) -> Option<String> {
        None
    }
}

/// Everything about a delivery except the data: [`Received::meta`] in a typed handler,
/// the whole input of a [`BroadcastBuilder::on_any`](crate::BroadcastBuilder::on_any)
/// handler (example there). [`EventMeta::new`] makes one for a unit test.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EventMeta {
    /// The event envelope; `event.data` holds the raw bytes.
    pub event: Event,
    /// 1 on the first delivery, 2 on the first redelivery, ...
    pub attempt: u32,
    /// The event's sequence in the events stream.
    pub stream_seq: u64,
    /// When JetStream stored the event.
    pub published: OffsetDateTime,
    /// All NATS headers as received (shared, not copied, per delivery).
    pub headers: Arc<HeaderMap>,
    /// The consumer group handling it, if any (`None` for broadcast).
    pub group: Option<String>,
}

impl EventMeta {
    /// The metadata of a first delivery of `event`, stored now, outside any group: for
    /// calling a handler in a unit test.
    ///
    /// ```
    /// use bus_sdk::{EventMeta, EventType, Event};
    /// let event = Event::builder(EventType::new("shop.order.created")?, "/tests").build();
    /// let meta = EventMeta::new(event);
    /// assert_eq!(meta.attempt, 1);
    /// # Ok::<(), bus_sdk::EventTypeError>(())
    /// ```
    pub fn new(event: Event) -> Self {
        Self {
            event,
            attempt: 1,
            stream_seq: 0,
            published: OffsetDateTime::now_utc(),
            headers: Arc::default(),
            group: None,
        }
    }

    /// The event's id.
    ///
    /// ```
    /// # use bus_sdk::{EventMeta, EventType, Event};
    /// let event = Event::builder(EventType::new("shop.order.created")?, "/tests")
    ///     .id("order-42-created")
    ///     .build();
    /// assert_eq!(EventMeta::new(event).id(), "order-42-created");
    /// # Ok::<(), bus_sdk::EventTypeError>(())
    /// ```
    pub fn id(&self) -> &str {
        &self.event.id
    }
}

/// A decoded event handed to a handler.
///
/// ```
/// # use bus_sdk::{EventMeta, EventType, Event, Received};
/// // A handler's input in a unit test:
/// let event = Event::builder(EventType::new("shop.order.created")?, "/tests").build();
/// let received = Received::new(42_u64, EventMeta::new(event));
/// assert_eq!(received.data, 42);
/// # Ok::<(), bus_sdk::EventTypeError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Received<T> {
    /// The payload, deserialized from the event's JSON data.
    pub data: T,
    /// Everything else about the delivery.
    pub meta: EventMeta,
}

impl<T> Received<T> {
    /// A received event of `data` with `meta`, for calling a handler in a unit test
    /// (example on [`Received`]).
    pub fn new(data: T, meta: EventMeta) -> Self {
        Self { data, meta }
    }
}
