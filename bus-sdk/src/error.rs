//! Error kinds of the SDK. Tests and callers match on kinds, not on message text.

use bus_core::{ConfigError, EncodeError, EventTypeError, TopologyError};

/// `Bus::connect` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot read NATS credentials: {0}")]
    Credentials(#[source] std::io::Error),
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("streams are not in place: {0}")]
    Topology(#[from] TopologyError),
}

/// What went wrong with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The payload type's `EVENT_TYPE` is not a valid event type name.
    InvalidEventType,
    /// The event cannot be put on NATS (bad attribute values).
    InvalidEvent,
    /// The data could not be serialized.
    Serialize,
    /// The message is larger than the server accepts.
    TooLarge,
    /// No PubAck within `nats.publish_deadline` (retries included); the event may or may
    /// not be stored: publish again with the same id to find out, without a duplicate.
    Unavailable,
    /// JetStream refused the event (for example the stream is full).
    Rejected,
}

/// A publish failed; see [`PublishError::kind`].
#[derive(Debug, thiserror::Error)]
#[error("publish {event_id}: {kind:?}: {detail}")]
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

    pub fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    /// The id of the event that was being published ("" if it had none yet).
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    pub(crate) fn from_type(err: EventTypeError) -> Self {
        Self::new(PublishErrorKind::InvalidEventType, "", err)
    }

    pub(crate) fn from_encode(event_id: &str, err: EncodeError) -> Self {
        Self::new(PublishErrorKind::InvalidEvent, event_id, err)
    }
}

/// Starting a group or a broadcast subscription failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    #[error("invalid event type: {0}")]
    InvalidEventType(#[from] EventTypeError),
    #[error("invalid group name {0:?}: use letters, digits, '-' and '_'")]
    InvalidGroupName(String),
    #[error("a group needs at least one handler")]
    NoHandlers,
    #[error("two handlers for event type {0}")]
    DuplicateHandler(String),
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    #[error("JetStream refused the consumer: {0}")]
    Consumer(String),
}
