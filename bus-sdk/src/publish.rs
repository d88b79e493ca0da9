//! Publishing with a PubAck: retried through leader elections and reconnects with the
//! same `Nats-Msg-Id`, so a retry never stores an event twice.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind as NatsKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bus_core::retry::{backoff_delay, is_transient_code};
use bus_core::telemetry;
use bus_core::{Event, Subjects, binary_mode};
use bytes::Bytes;
use futures::StreamExt;
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::{PublishError, PublishErrorKind};

/// Events of one `publish_batch` call awaiting their PubAck at once.
pub const DEFAULT_PUBLISH_WINDOW: usize = 256;

/// Proof that JetStream stored an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The event's id.
    pub id: String,
    /// The event's type.
    pub event_type: String,
    /// The stream that stored it.
    pub stream: String,
    /// The event's sequence in the stream.
    pub seq: u64,
    /// The id was seen within the duplicate window: this publish stored nothing new and
    /// `seq` is the sequence of the first copy.
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    pub(crate) js: jetstream::Context,
    pub(crate) subjects: Subjects,
    pub(crate) deadline: Duration,
}

impl Publisher {
    pub(crate) async fn publish_event(
        &self,
        event: &Event,
    ) -> Result<PublishReceipt, PublishError> {
        let subject = self.subjects.event(&event.event_type);
        let mut span = tracing::Span::none();
        let traced;
        let event = if telemetry::is_enabled() {
            // Parent: the current span (an HTTP request, a handler); else an unsampled
            // hop's context; else the context the event already carries; else none.
            let current = tracing::Span::current().context();
            let parent = if current.span().span_context().is_valid() {
                current
            } else if let Some(cx) = telemetry::current_unsampled() {
                cx
            } else {
                telemetry::context_from_event(event)
            };
            let mut copy = event.clone();
            match telemetry::skip(&parent) {
                // Not recorded: no span, but the event says so to every later hop.
                Some(unsampled) => telemetry::inject_into_event(&unsampled, &mut copy),
                None => {
                    span = telemetry::publish_span(&subject, &event.id, event.data.len());
                    let _ = span.set_parent(parent);
                    telemetry::inject_into_event(&span.context(), &mut copy);
                }
            }
            traced = copy;
            &traced
        } else {
            event
        };
        let first =
            binary_mode::encode(event).map_err(|e| PublishError::from_encode(&event.id, e))?;
        // Retries re-encode: the same event gives the same bytes and the same id.
        let rebuild =
            || binary_mode::encode(event).map_err(|e| PublishError::from_encode(&event.id, e));
        let result = self
            .publish_with_retries(subject, first, rebuild, &event.id)
            .instrument(span.clone())
            .await;
        let ack = match result {
            Ok(ack) => ack,
            Err(e) => {
                telemetry::record_error(&span, &format!("{:?}", e.kind()));
                return Err(e);
            }
        };
        telemetry::record_publish_ack(&span, &ack.stream, ack.sequence, ack.duplicate);
        Ok(PublishReceipt {
            id: event.id.clone(),
            event_type: event.event_type.to_string(),
            stream: ack.stream,
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Publishes `events` with at most `window` awaiting their PubAck; results come back
    /// in input order.
    pub(crate) async fn publish_batch(
        &self,
        events: &[Event],
        window: usize,
    ) -> Vec<Result<PublishReceipt, PublishError>> {
        // A plain loop rather than `stream::iter(..).buffered(..)`: the closure form's
        // higher-ranked lifetimes make the future unusable from `Send` contexts (axum).
        let window = window.max(1);
        let mut results = Vec::with_capacity(events.len());
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut pending = events.iter();
        loop {
            while in_flight.len() < window {
                match pending.next() {
                    Some(event) => in_flight.push_back(self.publish_event(event)),
                    None => break,
                }
            }
            match in_flight.next().await {
                Some(result) => results.push(result),
                None => return results,
            }
        }
    }

    /// Publishes until a PubAck arrives, an error that retrying cannot fix, or the deadline.
    /// `headers` must carry `Nats-Msg-Id` for retries to be safe.
    pub(crate) async fn publish_raw(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        id: &str,
    ) -> Result<PublishAck, PublishError> {
        let first = (headers.clone(), payload.clone());
        let rebuild = || Ok((headers.clone(), payload.clone()));
        self.publish_with_retries(subject, first, rebuild, id).await
    }

    /// The retry loop: the first attempt sends `first` (moved, not copied: a header map
    /// copy per publish was most of the SDK's publish overhead), each retry `rebuild()`.
    async fn publish_with_retries(
        &self,
        subject: String,
        first: (HeaderMap, Bytes),
        rebuild: impl Fn() -> Result<(HeaderMap, Bytes), PublishError>,
        id: &str,
    ) -> Result<PublishAck, PublishError> {
        let start = tokio::time::Instant::now();
        let mut attempt = 0u32;
        let mut next = Some(first);
        loop {
            let (headers, payload) = match next.take() {
                Some(m) => m,
                None => rebuild()?,
            };
            let message = PublishMessage::build().payload(payload).headers(headers);
            let result = match self.js.send_publish(subject.clone(), message).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(ack) => return Ok(ack),
                Err(e) => e,
            };
            let kind = classify(&err);
            if kind != PublishErrorKind::Unavailable {
                return Err(PublishError::new(kind, id, err));
            }
            if start.elapsed() >= self.deadline {
                return Err(PublishError::new(
                    kind,
                    id,
                    format!(
                        "no PubAck after {:?} and {} tries: {err}",
                        start.elapsed(),
                        attempt + 1
                    ),
                ));
            }
            tracing::debug!(%subject, event_id = id, attempt, error = %err, "publish retry");
            tokio::time::sleep(backoff_delay(attempt)).await;
            attempt += 1;
        }
    }
}

fn classify(err: &jetstream::context::PublishError) -> PublishErrorKind {
    match err.kind() {
        NatsKind::MaxPayloadExceeded => PublishErrorKind::TooLarge,
        NatsKind::TimedOut
        | NatsKind::StreamNotFound
        | NatsKind::BrokenPipe
        | NatsKind::MaxAckPending => PublishErrorKind::Unavailable,
        NatsKind::Other => {
            let js_error =
                std::error::Error::source(err).and_then(|s| s.downcast_ref::<jetstream::Error>());
            match js_error {
                Some(e) if is_transient_code(e.error_code()) => PublishErrorKind::Unavailable,
                Some(_) => PublishErrorKind::Rejected,
                // Not an answer from JetStream (connection trouble): worth another try.
                None => PublishErrorKind::Unavailable,
            }
        }
        _ => PublishErrorKind::Rejected,
    }
}
