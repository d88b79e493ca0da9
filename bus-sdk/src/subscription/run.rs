//! The one path of a delivery, for every kind of subscription: the CONSUMER span and the
//! hop's context, the policy's check, decode, the handler looked up and run (its panics
//! caught, its time bounded, JetStream told it is in progress when the policy asks), the
//! outcome recorded on the span, and the policy's settle.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use bus_core::headers::{CE_ID, NATS_MSG_ID, get_ignore_case};
use bus_core::{GroupName, binary_mode, telemetry};
use futures::FutureExt;
use tokio::time::Instant;

use super::{Delivery, Handlers, Outcome};
use crate::send_deadline;
use crate::typed::EventMeta;

/// What a kind of subscription decides; the rest of a delivery's path is [`handle`].
pub(crate) trait Policy: Sync {
    /// What settling tells the caller (an ordered group gets a failed delivery back to
    /// retry in place; the others, nothing).
    type Settled: Send;
    /// The consumer group, on the span and in the handler's `EventMeta` (`None`: not a
    /// group).
    fn group(&self) -> Option<&GroupName>;
    /// Where the handlings' spans are recorded (the bus's).
    fn tracer(&self) -> &telemetry::HopTracer;
    /// Where the handlings' metrics are recorded (the bus's).
    fn meters(&self) -> &telemetry::BusMeters;
    /// The `messaging.destination.name` of a delivery's metrics: a bounded set of names
    /// (an ordered group's partition and parked-key subjects are not).
    fn destination<'a>(&self, delivery: &'a Delivery) -> std::borrow::Cow<'a, str> {
        std::borrow::Cow::Borrowed(delivery.message.subject.as_str())
    }
    fn handlers(&self) -> &Handlers;
    fn handler_timeout(&self) -> Duration;
    /// The interval of in-progress acks while a handler runs (half the ack deadline), or
    /// `None` when JetStream expects no ack.
    fn progress_every(&self) -> Option<Duration>;
    /// Adjusts the delivery before it is dispatched (a group subtracts hand-offs from its
    /// attempts), and gives an outcome reached without running the handler (attempts
    /// exhausted), if any.
    fn before_dispatch(
        &self,
        delivery: &mut Delivery,
    ) -> impl Future<Output = Option<Outcome>> + Send;
    /// Settles the delivery, recording how on `span` (`bus.settle`).
    fn settle(
        &self,
        delivery: Delivery,
        outcome: Outcome,
        span: &mut telemetry::HopSpan,
    ) -> impl Future<Output = Self::Settled> + Send;
}

/// Handles one delivery from its message to its settle.
pub(crate) async fn handle_delivery<P: Policy>(policy: &P, mut delivery: Delivery) -> P::Settled {
    let (mut span, hop) = process_span(policy.tracer(), &delivery, policy.group());
    // Counted as received; the start of its handling only kept while metrics are recorded
    // (this task's future is copied per delivery: it holds no more than it needs).
    let started = match policy.meters().current() {
        Some(metrics) => {
            metrics.record_consumed(
                &policy.destination(&delivery),
                policy.group().map(GroupName::as_str),
            );
            Some(std::time::Instant::now())
        }
        None => None,
    };
    let outcome = match policy.before_dispatch(&mut delivery).await {
        Some(outcome) => outcome,
        None => {
            // Each arm builds its future in place: a future held in a local and then moved
            // into another is stored twice in this task (see "Profile" in BENCHMARKS.md).
            let outcome = match hop {
                Some(cx) => telemetry::within_hop(cx, dispatch(policy, &delivery)).await,
                None => dispatch(policy, &delivery).await,
            };
            if let (Some(metrics), Some(started)) = (policy.meters().current(), started) {
                metrics.record_process(
                    &policy.destination(&delivery),
                    policy.group().map(GroupName::as_str),
                    started.elapsed(),
                    outcome.error_type(),
                );
            }
            outcome
        }
    };
    if let Some(error_type) = outcome.error_type() {
        span.record_error(error_type);
    }
    policy.settle(delivery, outcome, &mut span).await
}

/// Decodes the event, finds its handler and runs it.
async fn dispatch<P: Policy>(policy: &P, delivery: &Delivery) -> Outcome {
    let message = &delivery.message;
    let event = match binary_mode::decode(delivery.headers.as_deref(), message.payload.clone()) {
        Ok(e) => e,
        Err(e) => return Outcome::Undecodable(format!("not a bus event: {e}")),
    };
    let Some(handler) = policy.handlers().find(&event.event_type) else {
        return Outcome::NoHandler(event.event_type);
    };
    let meta = EventMeta {
        event,
        attempt: delivery.attempt,
        stream_seq: delivery.stream_seq,
        published: delivery.published,
        headers: delivery.headers.clone().unwrap_or_default(),
        group: policy.group().map(|g| g.as_str().to_owned()),
    };
    let running = AssertUnwindSafe(handler(meta))
        .catch_unwind()
        .map(|r| r.unwrap_or(Outcome::Panicked));
    let limits = Limits {
        message,
        progress_every: policy.progress_every(),
        last_heard: delivery.last_heard,
        timeout: policy.handler_timeout(),
    };
    // The handler's future is boxed already; its panic guard needs no box of its own.
    supervise(limits, running).await
}

/// How long a handler may run, and whether JetStream hears that it still does.
struct Limits<'a> {
    message: &'a Message,
    progress_every: Option<Duration>,
    /// When JetStream last heard of the delivery.
    last_heard: Instant,
    timeout: Duration,
}

/// Runs `work` until it finishes or its timeout passes (then it is dropped), telling
/// JetStream every `progress_every` (counted from when it last heard of the delivery: a
/// delivery that waited for a slot may be due at once) that it is still in progress. A
/// handler that finishes on its first poll (most do) never touches a timer: an
/// interval's first tick waits for the timer wheel (about 1 ms), which once cost a
/// millisecond per delivery (see BENCHMARKS.md, "Profile").
async fn supervise<W>(limits: Limits<'_>, mut work: W) -> Outcome
where
    W: Future<Output = Outcome> + Unpin,
{
    let started = Instant::now();
    if let Some(outcome) = (&mut work).now_or_never() {
        return outcome;
    }
    // Boxed: its timer would otherwise take room in every delivery's task.
    Box::pin(wait_for(limits, work, started)).await
}

/// `supervise` for a handler that did not finish on its first poll. One timer serves
/// both the next in-progress ack and the deadline, whichever is first: a timer entry is
/// registered and cleared under the timer driver's lock, for every such delivery.
async fn wait_for<W>(limits: Limits<'_>, mut work: W, started: Instant) -> Outcome
where
    W: Future<Output = Outcome> + Unpin,
{
    let deadline = started + limits.timeout;
    let next_due = |from: Instant| match limits.progress_every {
        Some(period) => (from + period).min(deadline),
        None => deadline,
    };
    let timer = tokio::time::sleep_until(next_due(limits.last_heard));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            outcome = &mut work => return outcome,
            _ = &mut timer => {
                let now = Instant::now();
                if now >= deadline {
                    return Outcome::TimedOut(limits.timeout);
                }
                Box::pin(ack(limits.message, AckKind::Progress)).await;
                // JetStream's ack deadline starts again from this ack.
                timer.as_mut().reset(next_due(now));
            }
        }
    }
}

/// Acks, naks or terminates a delivery within the send deadline; a failure is logged
/// (JetStream redelivers the event after its ack deadline).
pub(crate) async fn ack(message: &Message, kind: AckKind) {
    if let Err(e) = send_deadline::within(message.ack_with(kind)).await {
        tracing::warn!(error = %e, ?kind, "settling a delivery failed; it will be redelivered");
    }
}

/// The CONSUMER span of one handling, a child of the producer's context in the headers,
/// and the context the handler runs under (the span's; or, when the flow is not recorded,
/// no span and the unsampled context). Built before decoding, so that an event that
/// cannot be decoded still shows in its trace.
fn process_span(
    tracer: &telemetry::HopTracer,
    delivery: &Delivery,
    group: Option<&GroupName>,
) -> (telemetry::HopSpan, Option<opentelemetry::Context>) {
    let headers = delivery.headers.as_deref();
    telemetry::HopSpan::for_hop(
        tracer,
        // Asked with telemetry off only: a scan of the few header names, no allocation.
        || {
            headers.is_some_and(|h| {
                h.iter().any(|(name, _)| {
                    AsRef::<str>::as_ref(name).eq_ignore_ascii_case(bus_core::headers::BAGGAGE)
                })
            })
        },
        // No headers, no context to continue: the current one, as the propagator gives.
        || {
            headers.map_or_else(
                opentelemetry::Context::current,
                telemetry::context_from_headers,
            )
        },
        |producer| {
            // The event's id; a message without one (not a bus event: it will be
            // dead-lettered as undecodable) by its `Nats-Msg-Id`, for a bus event a
            // digest of source and id (`binary_mode::dedup_id`), not the id itself.
            let id = headers
                .and_then(|h| get_ignore_case(h, CE_ID).or_else(|| get_ignore_case(h, NATS_MSG_ID)))
                .unwrap_or_default();
            telemetry::HopSpan::process(
                tracer,
                delivery.message.subject.as_str(),
                group.map(GroupName::as_str),
                id,
                delivery.attempt,
                producer,
            )
        },
    )
}
