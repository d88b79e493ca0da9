//! One delivery from start to settle: decode, dispatch to the handler while telling
//! JetStream the work is in progress, then ack, nak with backoff, or dead-letter.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use bus_core::binary_mode;
use bus_core::headers::{CE_ID, NATS_MSG_ID, get_ignore_case};
use bus_core::telemetry;
use futures::FutureExt;
use time::OffsetDateTime;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::member::Shared;
use crate::dead_letter::{self, Origin};
use crate::delivery_info::DeliveryInfo;
use crate::handler::{HandlerError, Outcome};
use crate::send_deadline;
use crate::typed::EventMeta;

/// Handles one delivery; `acked` is when JetStream last heard of it (its arrival, or the
/// last in-progress ack while it waited for a slot), from which its ack deadline runs.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    mut message: Message,
    acked: Instant,
    _slot: OwnedSemaphorePermit,
) {
    let group = &shared.options.name;
    // Shared by the handler's `EventMeta` and the dead-letter path: never copied.
    let headers = message.message.headers.take().map(Arc::new);
    let (stream, stream_seq, attempt, published) = match DeliveryInfo::of(&message) {
        Ok(i) => (
            i.stream.to_owned(),
            i.stream_seq,
            u32::try_from(i.delivered).unwrap_or(u32::MAX),
            i.published,
        ),
        Err(e) => {
            // Without its metadata a delivery cannot be settled; JetStream redelivers it.
            tracing::warn!(%group, error = %e, "delivery without JetStream metadata");
            return;
        }
    };
    let (mut span, hop) = process_span(&message, headers.as_deref(), group, attempt);
    let max = shared.options.max_deliver;
    let outcome = if attempt > max {
        Outcome::Undecodable(format!(
            "not settled after {max} deliveries (handler hung or its member died each time)"
        ))
    } else {
        let delivery = Delivery {
            message: &message,
            headers: headers.clone(),
            attempt,
            stream_seq,
            published,
            acked,
        };
        // Each arm builds its future in place: a future held in a local and then moved
        // into another is stored twice in this task (see "Profile" in BENCHMARKS.md).
        match hop {
            Some(cx) => telemetry::within_hop(cx, dispatch(&shared, delivery)).await,
            None => dispatch(&shared, delivery).await,
        }
    };
    let settle = match &outcome {
        Outcome::Handled => "ack",
        Outcome::Failed(e) if !e.is_permanent() && attempt < max => "nak",
        _ => "dead_letter",
    };
    span.record_settle(settle);
    match &outcome {
        Outcome::Handled => {}
        Outcome::Failed(_) => span.record_error("handler_error"),
        Outcome::Undecodable(_) => span.record_error("undecodable"),
    }
    let letter = Letter {
        message: &message,
        headers: headers.as_deref(),
    };
    let origin = Origin {
        group,
        stream: &stream,
        stream_seq,
        subject: message.subject.as_str(),
        attempts: attempt,
    };
    match outcome {
        Outcome::Handled => ack(&message, AckKind::Ack).await,
        Outcome::Failed(e) if e.is_permanent() => {
            let reason = format!("permanent failure: {e}");
            Box::pin(dead_letter(&shared, &letter, &origin, &reason)).await;
        }
        Outcome::Failed(e) if attempt >= max => {
            let reason = format!("failed {attempt} times; last error: {e}");
            Box::pin(dead_letter(&shared, &letter, &origin, &reason)).await;
        }
        Outcome::Failed(e) => {
            let delay = shared.options.backoff_after(attempt);
            tracing::debug!(%group, stream_seq, attempt, error = %e, ?delay, "handler failed; will retry");
            ack(&message, AckKind::Nak(Some(delay))).await;
        }
        Outcome::Undecodable(reason) => {
            Box::pin(dead_letter(&shared, &letter, &origin, &reason)).await
        }
    }
}

/// A delivery as `dispatch` needs it: the headers were taken out of the message.
struct Delivery<'a> {
    message: &'a Message,
    acked: Instant,
    headers: Option<Arc<async_nats::HeaderMap>>,
    attempt: u32,
    stream_seq: u64,
    published: OffsetDateTime,
}

async fn dispatch(shared: &Shared, delivery: Delivery<'_>) -> Outcome {
    let message = delivery.message;
    let event = match binary_mode::decode(delivery.headers.as_deref(), message.payload.clone()) {
        Ok(e) => e,
        Err(e) => return Outcome::Undecodable(format!("not a bus event: {e}")),
    };
    let Some(handler) = shared.handlers.get(event.event_type.as_str()) else {
        return Outcome::Undecodable(format!("no handler for event type {}", event.event_type));
    };
    let meta = EventMeta {
        event,
        attempt: delivery.attempt,
        stream_seq: delivery.stream_seq,
        published: delivery.published,
        headers: delivery.headers.unwrap_or_default(),
        group: Some(shared.options.name.clone()),
    };
    let running = AssertUnwindSafe(handler(meta))
        .catch_unwind()
        .map(|r| r.unwrap_or_else(|_| Outcome::Failed(HandlerError::msg("handler panicked"))));
    let progress = Progress {
        message,
        ack_wait: shared.options.ack_wait,
        acked: delivery.acked,
        timeout: shared.options.handler_timeout,
    };
    // The handler's future is boxed already; its panic guard needs no box of its own.
    with_progress(progress, running).await
}

/// What `with_progress` needs to keep a delivery alive, and for how long.
struct Progress<'a> {
    message: &'a Message,
    ack_wait: Duration,
    /// When JetStream last heard of the delivery.
    acked: Instant,
    /// How long the handler may run.
    timeout: Duration,
}

/// Runs `work`, telling JetStream it is still in progress every half ack deadline,
/// counted from when it last heard of the delivery (a delivery that waited for a slot
/// may be due at once), until it finishes or its timeout passes (then it is dropped and
/// the handling failed). A handler that finishes on its first poll (most do) never
/// touches a timer: an interval's first tick waits for the timer wheel (about 1 ms),
/// which once cost a millisecond per delivery (see BENCHMARKS.md, "Profile").
async fn with_progress<W>(progress: Progress<'_>, mut work: W) -> Outcome
where
    W: Future<Output = Outcome> + Unpin,
{
    let started = Instant::now();
    if let Some(outcome) = (&mut work).now_or_never() {
        return outcome;
    }
    // Boxed: its two timers would otherwise take room in every delivery's task.
    Box::pin(keep_alive(progress, work, started)).await
}

/// `with_progress` for a handler that did not finish on its first poll. One timer serves
/// both the next in-progress ack and the deadline, whichever is first: a timer entry is
/// registered and cleared under the timer driver's lock, for every such delivery.
async fn keep_alive<W>(progress: Progress<'_>, mut work: W, started: Instant) -> Outcome
where
    W: Future<Output = Outcome> + Unpin,
{
    let Progress {
        message,
        ack_wait,
        acked,
        timeout,
    } = progress;
    let period = ack_wait / 2;
    let deadline = started + timeout;
    let timer = tokio::time::sleep_until((acked + period).min(deadline));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            outcome = &mut work => return outcome,
            _ = &mut timer => {
                let now = Instant::now();
                if now >= deadline {
                    return Outcome::Failed(HandlerError::msg(format!(
                        "handler did not finish within {timeout:?} (handler_timeout)"
                    )));
                }
                Box::pin(ack(message, AckKind::Progress)).await;
                // JetStream's ack deadline starts again from this ack.
                timer.as_mut().reset((now + period).min(deadline));
            }
        }
    }
}

/// What is stored as a dead letter: the delivery's own headers and payload.
struct Letter<'a> {
    message: &'a Message,
    headers: Option<&'a async_nats::HeaderMap>,
}

async fn dead_letter(shared: &Shared, letter: &Letter<'_>, origin: &Origin<'_>, reason: &str) {
    let message = letter.message;
    let stored = dead_letter::store(
        shared.bus.publisher(),
        letter.headers,
        message.payload.clone(),
        origin,
        reason,
    )
    .await;
    match stored {
        Ok(()) => {
            tracing::info!(group = origin.group, stream_seq = origin.stream_seq, %reason, "dead-lettered");
            ack(message, AckKind::Term).await;
        }
        Err(e) => {
            // Keep the event: it comes back and is dead-lettered on a later delivery.
            tracing::error!(group = origin.group, error = %e, "cannot store dead letter");
            ack(
                message,
                AckKind::Nak(Some(shared.options.backoff_after(origin.attempts))),
            )
            .await;
        }
    }
}

async fn ack(message: &Message, kind: AckKind) {
    if let Err(e) = send_deadline::within(message.ack_with(kind)).await {
        tracing::warn!(error = %e, ?kind, "settling a delivery failed; it will be redelivered");
    }
}

/// The CONSUMER span of one handling, a child of the producer's context in the headers,
/// and the context the handler runs under (the span's; or, when the flow is not recorded,
/// no span and the unsampled context).
fn process_span(
    message: &Message,
    headers: Option<&async_nats::HeaderMap>,
    group: &str,
    attempt: u32,
) -> (telemetry::HopSpan, Option<opentelemetry::Context>) {
    telemetry::HopSpan::for_hop(
        // No headers, no context to continue: the current one, as the propagator gives.
        || {
            headers.map_or_else(
                opentelemetry::Context::current,
                telemetry::context_from_headers,
            )
        },
        |producer| {
            let id = headers
                .and_then(|h| get_ignore_case(h, CE_ID).or_else(|| get_ignore_case(h, NATS_MSG_ID)))
                .unwrap_or_default();
            telemetry::HopSpan::process(
                message.subject.as_str(),
                Some(group),
                id,
                attempt,
                producer,
            )
        },
    )
}
