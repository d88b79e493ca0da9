//! An ordered group's policy on the shared delivery path. Unlike an unordered group it
//! never naks: a failed delivery goes back to its partition's runner, which retries it
//! in place after the backoff (keeping it alive with in-progress acks meanwhile), so no
//! later event of its key starts before it is settled. After `max_deliver` attempts it
//! is dead-lettered and its key moves on.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use bus_core::headers::get_ignore_case;
use bus_core::{GroupName, telemetry};

use super::OrderedShared;
use crate::dead_letter::{self, Origin};
use crate::send_deadline;
use crate::subscription::{Delivery, Handlers, Outcome, Policy};

/// Header the sequencer adds to each copy: the event's sequence in the events stream.
pub(crate) const SOURCE_SEQ: &str = "bus-ord-source-seq";
/// Header the sequencer adds to each copy: the subject the event was stored on.
pub(crate) const SOURCE_SUBJECT: &str = "bus-ord-source-subject";

/// How a delivery of an ordered group ended.
pub(crate) enum Settled {
    /// Failed: retry it in place after the delay (its key waits).
    Retry(Box<Delivery>, Duration),
    /// Handled (or dead-lettered) and its ack (`kind`) sent (`sent`: whether the send
    /// went out): confirm that it reached the server, sending it again if not, before
    /// the key goes on ([`confirm_ack`]); outside the handler slot, a round trip being no
    /// handler's work.
    Acked(Box<Delivery>, AckKind, bool),
}

/// Settles `message` with `kind` for good: sends the ack (again, unless `sent`), then
/// waits until it has reached the server (the next ack sync, see [`super::acks`]);
/// after a failure it sends it again, backing off, until it is confirmed. Meanwhile the
/// key waits (were the ack lost, the event would come back after the key's next one).
/// Given up on `cancel` (its lane given up): the event then stays pending, and the
/// lane's next holder handles it again first (at least once), never after a later one.
pub(crate) async fn confirm(
    shared: &OrderedShared,
    message: &async_nats::jetstream::Message,
    kind: AckKind,
    mut sent: bool,
    cancel: &tokio_util::sync::CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let confirmed = async {
            if !sent {
                send_deadline::within(message.ack_with(kind)).await?;
            }
            shared.syncs.synced().await
        };
        match confirmed.await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(group = %shared.name, error = %e, ?kind, "settling not confirmed; sending it again");
                sent = false;
                let wait =
                    bus_core::retry::backoff_delay(failures).min(shared.options.ack_wait / 2);
                if !super::pause(cancel, wait).await {
                    return;
                }
                failures = failures.saturating_add(1);
            }
        }
    }
}

async fn ack_then_go_on(delivery: Delivery, kind: AckKind) -> Settled {
    let sent = match send_deadline::within(delivery.message.ack_with(kind)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, ?kind, "settling not sent; sending it again");
            false
        }
    };
    Settled::Acked(Box::new(delivery), kind, sent)
}

impl Policy for OrderedShared {
    type Settled = Settled;

    fn group(&self) -> Option<&GroupName> {
        Some(&self.name)
    }

    fn tracer(&self) -> &telemetry::HopTracer {
        &self.bus.publisher().tracer
    }

    fn meters(&self) -> &telemetry::BusMeters {
        &self.bus.publisher().meters
    }

    /// `bus.ord.<group>`: the group's copies, whatever their partition or parked key.
    fn destination<'a>(&self, _delivery: &'a Delivery) -> std::borrow::Cow<'a, str> {
        std::borrow::Cow::Owned(format!("bus.ord.{}", self.name))
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
        let max = self.options.max_deliver;
        (delivery.attempt > max).then_some(Outcome::Exhausted(max))
    }

    async fn settle(
        &self,
        delivery: Delivery,
        outcome: Outcome,
        span: &mut telemetry::HopSpan,
    ) -> Settled {
        let attempt = delivery.attempt;
        let max = self.options.max_deliver;
        match outcome {
            Outcome::Handled => {
                span.record_settle("ack");
                ack_then_go_on(delivery, AckKind::Ack).await
            }
            // A member without the handler (a rolling deploy) holds the key, as for any
            // failure, until one with it owns the partition or the attempts run out:
            // handing it to another member would let the key's next event overtake it.
            o if (o.is_retryable() || matches!(o, Outcome::NoHandler(_))) && attempt < max => {
                span.record_settle("retry");
                let delay = o
                    .retry_delay()
                    .unwrap_or_else(|| self.options.backoff_after(attempt));
                tracing::debug!(group = %self.name, stream_seq = delivery.stream_seq, attempt, error = %o, ?delay, "handler failed; retrying in place");
                Settled::Retry(Box::new(delivery), delay)
            }
            o => {
                span.record_settle("dead_letter");
                let reason = if o.is_retryable() {
                    format!("failed {attempt} times; last error: {o}")
                } else {
                    o.to_string()
                };
                self.dead_letter(delivery, &reason).await
            }
        }
    }
}

impl OrderedShared {
    /// Stores the dead letter (pointing at the event in the events stream, so listing
    /// and redrive work as for any group), then terminates the copy; if the dead letter
    /// cannot be stored, the delivery is retried in place instead.
    async fn dead_letter(&self, delivery: Delivery, reason: &str) -> Settled {
        let headers = delivery.headers.as_deref();
        let subject = headers
            .and_then(|h| get_ignore_case(h, SOURCE_SUBJECT))
            .unwrap_or(delivery.message.subject.as_str())
            .to_owned();
        let origin = Origin {
            group: &self.name,
            stream: &self.bus.config().streams.events_name,
            stream_seq: delivery.stream_seq,
            subject: &subject,
            attempts: delivery.attempt,
        };
        let payload = delivery.message.payload.clone();
        match dead_letter::store(self.bus.publisher(), headers, payload, &origin, reason).await {
            Ok(()) => {
                tracing::info!(group = %self.name, stream_seq = delivery.stream_seq, %reason, "dead-lettered; its key moves on");
                ack_then_go_on(delivery, AckKind::Term).await
            }
            Err(e) => {
                tracing::error!(group = %self.name, error = %e, "cannot store dead letter; retrying in place");
                let delay = self.options.backoff_after(delivery.attempt);
                Settled::Retry(Box::new(delivery), delay)
            }
        }
    }
}
