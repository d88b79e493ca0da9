//! Error kinds of the SDK. Tests and callers match on kinds, not on message text.

use bus_core::{ConfigError, EncodeError, EventTypeError, GroupNameError, TopologyError};

/// [`Bus::connect`](crate::Bus::connect) failed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use bus_sdk::{Bus, BusConfig, ConnectError};
/// let mut config = BusConfig::default();
/// config.streams.replicas = 2;
/// // Checked before anything is sent; the error names the key.
/// let Err(ConnectError::Config(e)) = Bus::connect(config).await else { panic!() };
/// assert_eq!(e.key, "streams.replicas");
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration is invalid; nothing was attempted.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// `nats.credentials_file` could not be read.
    #[error("cannot read NATS credentials: {0}")]
    Credentials(#[source] std::io::Error),
    /// No NATS server could be reached, or the server refused the connection.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// The streams could not be created or brought to the configured shape.
    #[error("streams are not in place: {0}")]
    Topology(#[from] TopologyError),
}

/// What went wrong with a publish: [`PublishError::kind`] (example on [`PublishError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The payload type's `EVENT_TYPE` is not a valid event type name.
    InvalidEventType,
    /// The event cannot be put on NATS as it is (an empty, over-long or whitespace-padded
    /// attribute, a control character: `bus_core::binary_mode::check_value`).
    InvalidEvent,
    /// The data could not be serialized.
    Serialize,
    /// The message, or its headers together (`bus_core::binary_mode::MAX_HEADER_BYTES`),
    /// are larger than the bus accepts.
    TooLarge,
    /// No PubAck within `nats.publish_deadline` (retries included); the event may or may
    /// not be stored: publish again with the same id to find out, without a duplicate.
    Unavailable,
    /// JetStream refused the event (for example the stream is full).
    Rejected,
}

impl PublishErrorKind {
    /// The kind in snake case, as spans and metrics give it (`error.type`):
    /// `invalid_event_type`, `invalid_event`, `serialize`, `too_large`, `unavailable`,
    /// `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidEventType => "invalid_event_type",
            Self::InvalidEvent => "invalid_event",
            Self::Serialize => "serialize",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
        }
    }
}

/// A publish failed; see [`PublishError::kind`].
///
/// ```no_run
/// # use bus_sdk::{Bus, EventPayload, PublishError, PublishErrorKind, PublishReceipt};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated { order_id: u64 }
/// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
/// # async fn f(bus: Bus, order: OrderCreated) -> Result<PublishReceipt, PublishError> {
/// let event = bus.event(&order)?.id(format!("order-{}-created", order.order_id)).build();
/// match bus.publish_event(&event).await {
///     // Stored or not: publishing the same id again stores it at most once.
///     Err(e) if e.kind() == PublishErrorKind::Unavailable => {
///         eprintln!("{} not confirmed, publishing again", e.event_id());
///         bus.publish_event(&event).await
///     }
///     result => result,
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("publish {}: {kind:?}: {detail}", bus_core::binary_mode::excerpt(.event_id))]
pub struct PublishError {
    kind: PublishErrorKind,
    event_id: String,
    detail: String,
}

impl PublishError {
    pub(crate) fn new(kind: PublishErrorKind, event_id: &str, detail: impl ToString) -> Self {
        Self {
            kind,
            event_id: event_id.to_owned(),
            detail: detail.to_string(),
        }
    }

    /// What went wrong; match on this rather than on the message (example on
    /// [`PublishError`]).
    pub fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    /// The id of the event that was being published ("" if it had none yet; example on
    /// [`PublishError`]).
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    pub(crate) fn from_type(err: EventTypeError) -> Self {
        Self::new(PublishErrorKind::InvalidEventType, "", err)
    }

    /// [`PublishErrorKind::TooLarge`] for headers over the total limit, else
    /// [`PublishErrorKind::InvalidEvent`]: refusals that no retry changes.
    pub(crate) fn from_encode(event_id: &str, err: EncodeError) -> Self {
        let kind = match err {
            EncodeError::HeadersTooLarge { .. } => PublishErrorKind::TooLarge,
            _ => PublishErrorKind::InvalidEvent,
        };
        Self::new(kind, event_id, err)
    }
}

/// Starting a group or a broadcast subscription failed.
///
/// ```no_run
/// # use bus_sdk::{Bus, EventPayload, Group, Received, HandlerError, SubscribeError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
/// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
/// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
/// # async fn f(bus: Bus, concurrency: usize) -> Result<Group, String> {
/// // `concurrency` from the service's settings:
/// match bus.group("billing").on(bill).concurrency(concurrency).start().await {
///     Ok(member) => Ok(member),
///     Err(SubscribeError::InvalidOption { option, reason }) => {
///         Err(format!("billing: setting {option} {reason}"))
///     }
///     Err(e) => Err(format!("billing: {e}")),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// A handler's payload type has an invalid `EVENT_TYPE`.
    #[error("invalid event type: {0}")]
    InvalidEventType(#[from] EventTypeError),
    /// The group name is not 1 to 64 ASCII letters, digits, `-` and `_`.
    #[error("invalid group name: {0}")]
    InvalidGroupName(#[from] GroupNameError),
    /// `start` was called without a handler.
    #[error("a group needs at least one handler")]
    NoHandlers,
    /// Two handlers were registered for one event type; holds the type.
    #[error("two handlers for event type {0}")]
    DuplicateHandler(String),
    /// A group option is out of range (`concurrency` 0, `ack_wait` under a second, ...).
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What it must be.
        reason: String,
    },
    /// The member could not join the group's members in the NATS Services API (the
    /// connection did not answer in time); holds why.
    #[error("cannot announce the member: {0}")]
    Presence(String),
    /// JetStream refused to create the consumer, or did not answer in time; holds its
    /// message.
    #[error("JetStream refused the consumer: {0}")]
    Consumer(String),
}
