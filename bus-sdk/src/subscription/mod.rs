//! What every kind of subscription shares: handler registration ([`handlers`]), the
//! subject filters it asks JetStream for ([`bus_core::subject_filters`]), the handler timeout, and the one
//! path a delivery takes from the message to its outcome ([`run`]). A kind of
//! subscription (a consumer group, a broadcast subscription) adds only its [`Policy`]:
//! what to check before a handler runs, whether JetStream must hear that the work is in
//! progress, and how an outcome is settled.

pub(crate) mod delivery;
pub(crate) mod delivery_info;
pub(crate) mod handlers;
pub(crate) mod outcome;
pub(crate) mod run;

use std::time::Duration;

use crate::error::SubscribeError;

pub(crate) use delivery::Delivery;
pub(crate) use handlers::{Handlers, Registration};
pub(crate) use outcome::Outcome;
pub(crate) use run::{Policy, handle_delivery};

/// How long one handling may run before it is abandoned (groups count it as a failure,
/// broadcast subscriptions skip the event): [`GroupBuilder::handler_timeout`],
/// [`BroadcastBuilder::handler_timeout`].
///
/// [`GroupBuilder::handler_timeout`]: crate::GroupBuilder::handler_timeout
/// [`BroadcastBuilder::handler_timeout`]: crate::BroadcastBuilder::handler_timeout
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest `handler_timeout` a subscription accepts: a day
/// ([`GroupBuilder::handler_timeout`], [`BroadcastBuilder::handler_timeout`]).
///
/// [`GroupBuilder::handler_timeout`]: crate::GroupBuilder::handler_timeout
/// [`BroadcastBuilder::handler_timeout`]: crate::BroadcastBuilder::handler_timeout
pub const MAX_HANDLER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A handler timeout is above 0 and at most [`MAX_HANDLER_TIMEOUT`].
pub(crate) fn check_handler_timeout(d: Duration) -> Result<(), SubscribeError> {
    if d.is_zero() || d > MAX_HANDLER_TIMEOUT {
        return Err(SubscribeError::InvalidOption {
            option: "handler_timeout",
            reason: "must be above 0 and at most a day".to_owned(),
        });
    }
    Ok(())
}
