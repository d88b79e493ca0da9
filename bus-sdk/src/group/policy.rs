//! A group's policy on the shared delivery path: an event delivered more often than
//! `max_deliver` without being settled is not run again; a running handler keeps its
//! delivery alive with in-progress acks; then ack, nak with backoff, hand back to the
//! group (no handler here), or dead-letter.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use bus_core::{GroupName, telemetry};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::handoff::{self, NO_HANDLER_DELAY};
use super::member::Shared;
use crate::dead_letter::{self, Origin};
use crate::subscription::run::ack;
use crate::subscription::{self, Delivery, Handlers, Outcome, Policy};

/// Handles one delivery of the group; `last_heard` is when JetStream last heard of it
/// (its arrival, or the last in-progress ack while it waited for a slot), from which its
/// ack deadline runs. The slot is held until the delivery is settled.
pub(crate) async fn handle_message(
    shared: Arc<Shared>,
    message: Message,
    last_heard: Instant,
    _slot: OwnedSemaphorePermit,
) {
    match Delivery::read(message, last_heard) {
        Ok(delivery) => subscription::handle_delivery(&*shared, delivery).await,
        // Without its metadata a delivery cannot be settled; JetStream redelivers it.
        Err(e) => {
            tracing::warn!(group = %shared.name, error = %e, "delivery without JetStream metadata")
        }
    }
}

impl Policy for Shared {
    type Settled = ();

    fn group(&self) -> Option<&GroupName> {
        Some(&self.name)
    }

    fn tracer(&self) -> &telemetry::HopTracer {
        &self.bus.publisher().tracer
    }

    fn meters(&self) -> &telemetry::BusMeters {
        &self.bus.publisher().meters
    }

    fn handlers(&self) -> &Handlers {
        &self.handlers
    }

    fn handler_timeout(&self) -> Duration {
        self.options.handler_timeout
    }

    fn progress_every(&self) -> Option<Duration> {
        Some(self.options.ack_wait / 2)
    }

    async fn before_dispatch(&self, delivery: &mut Delivery) -> Option<Outcome> {
        // A redelivery may have been handed back by members without its handler: those
        // deliveries were no attempts.
        // Boxed, as the other rare paths: inline, its future would take room in every
        // delivery's future.
        if delivery.attempt > 1
            && let Some(store) = &self.handoffs
            && let Some(record) =
                Box::pin(handoff::read(store, &self.name, delivery.stream_seq)).await
        {
            delivery.handoffs = record.not_attempts();
            delivery.attempt = delivery
                .attempt
                .saturating_sub(record.not_attempts())
                .max(1);
        }
        let max = self.options.max_deliver;
        (delivery.attempt > max).then_some(Outcome::Exhausted(max))
    }

    async fn settle(&self, delivery: Delivery, outcome: Outcome, span: &mut telemetry::HopSpan) {
        let attempt = delivery.attempt;
        let max = self.options.max_deliver;
        let message = &delivery.message;
        match outcome {
            Outcome::Handled => {
                span.record_settle("ack");
                ack(message, AckKind::Ack).await;
                self.forget_handoffs(&delivery).await;
            }
            Outcome::NoHandler(t) => Box::pin(self.hand_back(delivery, t, span)).await,
            o if o.is_retryable() && attempt < max => {
                span.record_settle("nak");
                let delay = o
                    .retry_delay()
                    .unwrap_or_else(|| self.options.backoff_after(attempt));
                tracing::debug!(group = %self.name, stream_seq = delivery.stream_seq, attempt, error = %o, ?delay, "handler failed; will retry");
                ack(message, AckKind::Nak(Some(delay))).await;
            }
            o => {
                span.record_settle("dead_letter");
                let reason = if o.is_retryable() {
                    format!("failed {attempt} times; last error: {o}")
                } else {
                    o.to_string()
                };
                Box::pin(self.dead_letter(&delivery, &reason)).await;
            }
        }
    }
}

impl Shared {
    /// An event of a type this member has no handler for: handed back to the group for a
    /// member that has one, or dead-lettered once none has taken it for the grace.
    async fn hand_back(
        &self,
        delivery: Delivery,
        event_type: bus_core::EventType,
        span: &mut telemetry::HopSpan,
    ) {
        let Some(store) = &self.handoffs else {
            span.record_settle("dead_letter");
            let reason = format!("no handler for event type {event_type}");
            return self.dead_letter(&delivery, &reason).await;
        };
        let seq = delivery.stream_seq;
        let before = handoff::read(store, &self.name, seq).await;
        let grace = self.options.no_handler_grace;
        if let Some(record) = before.filter(|r| r.handoffs > 0 && handoff::waited(r) >= grace) {
            span.record_settle("dead_letter");
            let reason = format!(
                "no handler for event type {event_type}: no member of the group took it in {grace:?} ({} hand-offs)",
                record.handoffs
            );
            self.dead_letter(&delivery, &reason).await;
            return;
        }
        span.record_settle("hand_back");
        handoff::note(store, &self.name, seq, before).await;
        tracing::debug!(group = %self.name, stream_seq = seq, %event_type, "no handler here; handed back to the group");
        ack(&delivery.message, AckKind::Nak(Some(NO_HANDLER_DELAY))).await;
    }

    /// Stores the dead letter, then terminates the delivery; if the dead letter cannot be
    /// stored the delivery is nak'ed, never acked: it comes back and is dead-lettered on
    /// a later delivery.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) {
        let message = &delivery.message;
        let stream = delivery.stream();
        let origin = Origin {
            group: &self.name,
            stream: &stream,
            stream_seq: delivery.stream_seq,
            subject: message.subject.as_str(),
            attempts: delivery.attempt,
        };
        let stored = dead_letter::store(
            self.bus.publisher(),
            delivery.headers.as_deref(),
            message.payload.clone(),
            &origin,
            reason,
        )
        .await;
        match stored {
            Ok(()) => {
                tracing::info!(group = %self.name, stream_seq = delivery.stream_seq, %reason, "dead-lettered");
                ack(message, AckKind::Term).await;
                self.forget_handoffs(delivery).await;
            }
            Err(e) => {
                tracing::error!(group = %self.name, error = %e, "cannot store dead letter");
                let delay = self.options.backoff_after(delivery.attempt);
                ack(message, AckKind::Nak(Some(delay))).await;
            }
        }
    }

    async fn forget_handoffs(&self, delivery: &Delivery) {
        if delivery.handoffs > 0
            && let Some(store) = &self.handoffs
        {
            Box::pin(handoff::forget(store, &self.name, delivery.stream_seq)).await;
        }
    }
}
