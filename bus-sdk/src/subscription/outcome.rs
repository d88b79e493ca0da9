//! How one handling ended, before the subscription's policy settles it.

use std::fmt;
use std::time::Duration;

use bus_core::EventType;

use crate::handler::HandlerError;

/// How one delivery ended. Each kind that is not [`Outcome::Handled`] has its own
/// `error.type` on the CONSUMER span and its own reason in a dead letter.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The handler returned `Ok`.
    Handled,
    /// The handler returned an error (retryable unless [`HandlerError::is_permanent`]).
    Failed(HandlerError),
    /// The handler ran past the handler timeout and was dropped.
    TimedOut(Duration),
    /// The handler panicked.
    Panicked,
    /// Not a usable event: the envelope or the data cannot be read. Retrying cannot help.
    Undecodable(String),
    /// A bus event of a type this subscription has no handler for.
    NoHandler(EventType),
    /// Delivered more often than the attempts allowed without ever being settled (its
    /// handler hung or its member died each time): it is not run again.
    Exhausted(u32),
}

impl Outcome {
    /// The span's `error.type`; `None` for a handled event.
    pub(crate) fn error_type(&self) -> Option<&'static str> {
        Some(match self {
            Self::Handled => return None,
            Self::Failed(_) => "handler_error",
            Self::TimedOut(_) => "timeout",
            Self::Panicked => "panic",
            Self::Undecodable(_) => "undecodable",
            Self::NoHandler(_) => "no_handler",
            Self::Exhausted(_) => "exhausted",
        })
    }

    /// Whether a later attempt may succeed: a handler failure that is not permanent, a
    /// timeout or a panic.
    /// The delay the handler asked for before the next attempt, if any.
    pub(crate) fn retry_delay(&self) -> Option<Duration> {
        match self {
            Self::Failed(e) => e.retry_delay(),
            _ => None,
        }
    }

    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Failed(e) => !e.is_permanent(),
            Self::TimedOut(_) | Self::Panicked => true,
            _ => false,
        }
    }
}

/// The reason, as logged and as stored in a dead letter.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handled => f.write_str("handled"),
            Self::Failed(e) if e.is_permanent() => write!(f, "permanent failure: {e}"),
            Self::Failed(e) => write!(f, "{e}"),
            Self::TimedOut(t) => write!(f, "handler did not finish within {t:?} (handler_timeout)"),
            Self::Panicked => f.write_str("handler panicked"),
            Self::Undecodable(reason) => f.write_str(reason),
            Self::NoHandler(t) => write!(f, "no handler for event type {t}"),
            Self::Exhausted(n) => write!(
                f,
                "not settled after {n} deliveries (handler hung or its member died each time)"
            ),
        }
    }
}
