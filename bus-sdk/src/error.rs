//! Error kinds of the SDK. Tests and callers match on kinds, not on message text.

use bus_core::{ConfigError, EncodeError, EventTypeError, GroupNameError, TopologyError};

/// `Bus::connect` failed.
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

    /// What went wrong; match on this rather than on the message.
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
