//! The group's durable pull consumer. Members may handle different event types (a
//! rolling deploy that adds one runs old and new members side by side), so its filter
//! is the union of every member's: a member that starts or re-opens widens it to take
//! its own types too and never narrows it; only an operator narrows it (`nats consumer
//! edit`, or deleting the consumer). A member that gets an event it has no handler for
//! hands it back for one that has it (`policy.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use bus_core::GroupName;
use bus_core::retry::{backoff_delay, is_transient_code};
use tokio_util::sync::CancellationToken;

use super::member::Shared;
use super::{GroupOptions, filter_lock};
use crate::bus::Bus;
use crate::subscription::Handlers;
use bus_core::subject_filters::{covers, minimal};

/// Rounds of read, widen and read back before `ensure` gives up on a filter that other
/// members keep rewriting.
const MAX_WIDEN_ROUNDS: u32 = 8;

/// This member's filters: its event types and the group's redrive subject (dead letters
/// redriven to this group come back on it).
pub(crate) fn filters(bus: &Bus, name: &GroupName, handlers: &Handlers) -> Vec<String> {
    let mut filters = handlers.filters(bus.subjects());
    filters.push(bus.subjects().redrive_filter(name));
    minimal(filters, &bus.subjects().all_events())
}

/// The consumer's configuration with `filters` (an ordered group's sequencer starts
/// from it too).
pub(crate) fn config(name: &GroupName, o: &GroupOptions, mut filters: Vec<String>) -> pull::Config {
    let (filter_subject, filter_subjects) = if filters.len() == 1 {
        (filters.remove(0), Vec::new())
    } else {
        (String::new(), filters)
    };
    pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(format!("bus consumer group {name}")),
        ack_policy: AckPolicy::Explicit,
        ack_wait: o.ack_wait,
        // Unlimited on the server: the member dead-letters after `max_deliver` itself, so an
        // event whose last attempt died with its member is still dead-lettered, not dropped.
        max_deliver: -1,
        max_ack_pending: o.max_ack_pending as i64,
        deliver_policy: match o.deliver_from {
            Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            None if o.deliver_new_only => DeliverPolicy::New,
            None => DeliverPolicy::All,
        },
        filter_subject,
        filter_subjects,
        ..Default::default()
    }
}

/// The filters of a consumer's configuration.
pub(crate) fn filters_of(c: &async_nats::jetstream::consumer::Config) -> Vec<String> {
    let mut filters = c.filter_subjects.clone();
    if !c.filter_subject.is_empty() {
        filters.push(c.filter_subject.clone());
    }
    filters
}

/// Whether `have` takes every subject of `wanted`.
fn takes_all(have: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| have.iter().any(|h| covers(h, w)))
}

/// Creates the consumer, or updates it to this member's options with its filter widened
/// to this member's types, under the group's filter lock (`filter_lock.rs`), and reads
/// it back until the filter takes them (an operator may edit it meanwhile; without the
/// hand-off bucket there is no lock, and a member widening it at the same moment may
/// have written its own union over ours).
pub(crate) async fn ensure(shared: &Shared) -> Result<Consumer<pull::Config>, ConsumerError> {
    let name = shared.name.as_str();
    let request_timeout = shared.bus.config().nats.request_timeout;
    let mut round = 0;
    loop {
        round += 1;
        let lock = match &shared.handoffs {
            Some(store) => Some(
                filter_lock::acquire(store, &shared.name, request_timeout)
                    .await
                    .map_err(|e| ConsumerError::with_source(ConsumerErrorKind::TimedOut, e))?,
            ),
            None => None,
        };
        let written = tokio::time::timeout(filter_lock::hold_limit(request_timeout), widen(shared))
            .await
            .unwrap_or_else(|elapsed| {
                Err(ConsumerError::with_source(
                    ConsumerErrorKind::TimedOut,
                    elapsed,
                ))
            });
        if let Some(lock) = lock {
            lock.release().await;
        }
        let consumer = written?;
        if takes_mine(shared).await? || round >= MAX_WIDEN_ROUNDS {
            if round >= MAX_WIDEN_ROUNDS {
                tracing::warn!(group = %name, "the group's filter keeps changing; re-checked later");
            }
            return Ok(consumer);
        }
        tracing::debug!(group = %name, "the group's filter changed under us; widening again");
    }
}

/// Reads the consumer and writes it back with this member's options and its filter
/// widened to this member's types (or creates it).
async fn widen(shared: &Shared) -> Result<Consumer<pull::Config>, ConsumerError> {
    let js = shared.bus.jetstream();
    let stream = &shared.bus.config().streams.events_name;
    let everything = shared.bus.subjects().all_events();
    let existing = match js
        .get_consumer_from_stream::<pull::Config, _, _>(shared.name.as_str(), stream)
        .await
    {
        Ok(c) => Some(c.cached_info().config.clone()),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(e),
    };
    let filters = match &existing {
        Some(existing) => {
            let union = filters_of(existing)
                .into_iter()
                .chain(shared.filters.iter().cloned())
                .collect();
            minimal(union, &everything)
        }
        None => shared.filters.clone(),
    };
    let mut wanted = config(&shared.name, &shared.options, filters);
    if let Some(existing) = &existing {
        // Fixed when the consumer was made; JetStream refuses to change it.
        wanted.deliver_policy = existing.deliver_policy;
    }
    js.create_consumer_on_stream(wanted, stream).await
}

/// Whether the group's filter takes this member's types now (a member checks this now
/// and then: two members widening it at the same moment can leave one's types out).
pub(crate) async fn takes_mine(shared: &Shared) -> Result<bool, ConsumerError> {
    let stream = &shared.bus.config().streams.events_name;
    let mut consumer = shared
        .bus
        .jetstream()
        .get_consumer_from_stream::<pull::Config, _, _>(shared.name.as_str(), stream)
        .await?;
    let info = consumer
        .info()
        .await
        .map_err(|e| ConsumerError::with_source(ConsumerErrorKind::Request, e))?;
    Ok(takes_all(&filters_of(&info.config), &shared.filters))
}

fn is_not_found(e: &ConsumerError) -> bool {
    matches!(e.kind(), ConsumerErrorKind::JetStream(err) if err.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// How often a member checks that the group's filter still takes its types.
pub(crate) const FILTER_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Widens the group's filter again whenever it no longer takes this member's types
/// (checked every [`FILTER_CHECK_INTERVAL`]), until `cancel`.
pub(crate) async fn keep_widened(shared: Arc<Shared>, cancel: CancellationToken) {
    let start = tokio::time::Instant::now() + FILTER_CHECK_INTERVAL;
    let mut tick = tokio::time::interval_at(start, FILTER_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match takes_mine(&shared).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(group = %shared.name, "the group's filter lost this member's types; widening it");
                if let Err(e) = ensure(&shared).await {
                    tracing::warn!(group = %shared.name, error = %e, "cannot widen the group's filter");
                }
            }
            Err(e) => {
                tracing::debug!(group = %shared.name, error = %e, "cannot read the group's filter")
            }
        }
    }
}

/// [`ensure`], retrying timeouts and elections until `deadline`.
pub(crate) async fn ensure_patiently(
    shared: &Shared,
    deadline: Duration,
) -> Result<Consumer<pull::Config>, ConsumerError> {
    let start = tokio::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        match ensure(shared).await {
            Ok(c) => return Ok(c),
            Err(e) if is_transient(&e) && start.elapsed() < deadline => {
                tracing::debug!(group = %shared.name, error = %e, "consumer not in place yet; retrying");
                tokio::time::sleep(backoff_delay(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_transient(e: &ConsumerError) -> bool {
    match e.kind() {
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => true,
        ConsumerErrorKind::JetStream(err) => is_transient_code(err.error_code()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_takes_what_a_wider_one_covers() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(takes_all(
            &s(&["bus.evt.a.>", "bus.redrive.g.>"]),
            &s(&["bus.evt.a.x"])
        ));
        assert!(!takes_all(
            &s(&["bus.evt.a.x"]),
            &s(&["bus.evt.a.x", "bus.evt.a.y"])
        ));
    }
}
