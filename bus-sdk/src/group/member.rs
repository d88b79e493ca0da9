//! One member's fetch loop: pull deliveries from the group's consumer while a handler
//! slot is free, run each in its own task, and recover the consumer after failures.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::Consumer;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use bus_core::retry::{backoff_delay, is_transient_code};
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::GroupOptions;
use super::settle;
use crate::bus::Bus;
use crate::handler::HandlerMap;

/// How often the server proves an idle pull is alive.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long one pull request lives on the server: short, so that a pull the client lost
/// track of (seen in benchmarks as a 20-35 s stall on a backlog) is renewed soon.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// Consecutive missed heartbeats after which the pull is re-created.
const MAX_MISSED_HEARTBEATS: u32 = 2;

pub(crate) struct Shared {
    pub bus: Bus,
    pub options: GroupOptions,
    pub handlers: HandlerMap,
    pub consumer_config: pull::Config,
}

/// Creates the durable consumer or updates it to this member's configuration.
pub(crate) async fn ensure_consumer(
    shared: &Shared,
) -> Result<Consumer<pull::Config>, ConsumerError> {
    let stream = &shared.bus.config().streams.events_name;
    shared
        .bus
        .jetstream()
        .create_consumer_on_stream(shared.consumer_config.clone(), stream)
        .await
}

/// [`ensure_consumer`], retrying timeouts and elections until `deadline`.
pub(crate) async fn ensure_consumer_patiently(
    shared: &Shared,
    deadline: Duration,
) -> Result<Consumer<pull::Config>, ConsumerError> {
    let start = tokio::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        match ensure_consumer(shared).await {
            Ok(c) => return Ok(c),
            Err(e) if is_transient(&e) && start.elapsed() < deadline => {
                tracing::debug!(group = %shared.options.name, error = %e, "consumer not in place yet; retrying");
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

pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken, tracker: TaskTracker) {
    let group = shared.options.name.clone();
    let slots = Arc::new(Semaphore::new(shared.options.concurrency));
    let mut failures = 0u32;
    'connect: while !cancel.is_cancelled() {
        let messages = match open(&shared).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%group, error = %e, "cannot open the group's consumer; retrying");
                failures += 1;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff_delay(failures)) => continue,
                }
            }
        };
        let mut messages = std::pin::pin!(messages);
        let mut missed = 0u32;
        loop {
            let permit = tokio::select! {
                _ = cancel.cancelled() => {
                    hand_back(messages.as_mut()).await;
                    break 'connect;
                }
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break 'connect,
                },
            };
            let next = tokio::select! {
                _ = cancel.cancelled() => {
                    hand_back(messages.as_mut()).await;
                    break 'connect;
                }
                m = messages.next() => m,
            };
            match next {
                Some(Ok(message)) => {
                    failures = 0;
                    missed = 0;
                    tracker.spawn(settle::handle(shared.clone(), message, permit));
                }
                Some(Err(e)) if e.kind() == MessagesErrorKind::MissingHeartbeat => {
                    missed += 1;
                    tracing::debug!(%group, missed, "missed idle heartbeat");
                    if missed >= MAX_MISSED_HEARTBEATS {
                        continue 'connect;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(%group, error = %e, "pull failed; re-opening the consumer");
                    failures += 1;
                    tokio::select! {
                        _ = cancel.cancelled() => break 'connect,
                        _ = tokio::time::sleep(backoff_delay(failures)) => continue 'connect,
                    }
                }
                None => continue 'connect,
            }
        }
    }
    tracing::debug!(%group, "member stopped fetching");
}

async fn open(shared: &Shared) -> Result<pull::Stream, async_nats::Error> {
    // Re-creating on every (re)open also brings back a consumer deleted while we were away.
    let consumer = ensure_consumer(shared).await?;
    let stream = consumer
        .stream()
        .max_messages_per_batch(shared.options.concurrency)
        .heartbeat(PULL_HEARTBEAT)
        .expires(PULL_EXPIRES)
        .messages()
        .await?;
    Ok(stream)
}

/// Naks deliveries that were prefetched but not started, so that other members get them
/// now rather than after the ack deadline.
async fn hand_back(mut messages: std::pin::Pin<&mut pull::Stream>) {
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(error = %e, "nak of a prefetched delivery failed");
        }
    }
}
