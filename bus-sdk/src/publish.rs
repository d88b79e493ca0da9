//! Publishing with a PubAck: retried through leader elections and reconnects with the
//! same `Nats-Msg-Id` (derived from the event's source and id,
//! [`binary_mode::dedup_id`]), so a retry never stores an event twice.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::context::{
    PublishAckFuture, PublishError as NatsPublishError, PublishErrorKind as NatsKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bus_core::headers::{CE_TYPE, PUBLISH_ID, get_ignore_case};
use bus_core::retry::{backoff_delay, is_transient_code};
use bus_core::telemetry;
use bus_core::{Event, Subjects, binary_mode, server_trace};
use bytes::Bytes;
use futures::StreamExt;
use opentelemetry::trace::{SpanContext, TraceContextExt};

use crate::error::{PublishError, PublishErrorKind};

/// Events of one `publish_batch` call awaiting their PubAck at once
/// ([`BusBuilder::publish_window`](crate::BusBuilder::publish_window)).
pub const DEFAULT_PUBLISH_WINDOW: usize = 256;

/// Proof that JetStream stored an event, from [`Bus::publish`](crate::Bus::publish)
/// (example there), [`Bus::publish_event`](crate::Bus::publish_event) and
/// [`Bus::publish_batch`](crate::Bus::publish_batch).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The event's id.
    pub id: String,
    /// The event's type (for a duplicate, the stored event's).
    pub event_type: String,
    /// The stream that stored it.
    pub stream: String,
    /// The event's sequence in the stream.
    pub seq: u64,
    /// The source and id were seen within the duplicate window: this publish stored
    /// nothing new, and `seq` and `event_type` are those of the stored event.
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    pub(crate) js: jetstream::Context,
    pub(crate) subjects: Subjects,
    pub(crate) deadline: Duration,
    /// `nats.server_msg_trace`: leave sampled messages unmarked ([`server_trace`]).
    pub(crate) server_msg_trace: bool,
    /// Where this bus records its spans.
    pub(crate) tracer: telemetry::HopTracer,
    /// Where this bus records its metrics.
    pub(crate) meters: telemetry::BusMeters,
}

/// An event whose first attempt went to the connection, or why it could not.
type Sent<'a> = Result<(Prepared<'a>, Result<PublishAckFuture, NatsPublishError>), PublishError>;

/// One event made ready to send: what a retry re-encodes it from, and its span.
struct Prepared<'a> {
    event: &'a Event,
    /// This hop's trace context, written over the event's own when telemetry is on.
    trace: Option<SpanContext>,
    /// The W3C baggage of the publish's context (`baggage` header), if any.
    baggage: Option<String>,
    span: telemetry::HopSpan,
    /// Whether a sampled message gets [`server_trace::mark`]ed.
    mark_sampled: bool,
    /// This call's [`PUBLISH_ID`], the same on every attempt.
    publish_id: String,
}

/// The first attempt's subject, headers and payload, moved into the connection (a retry,
/// rare, builds them again).
struct FirstAttempt {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

impl Prepared<'_> {
    /// Re-encodes for a retry: the same event and context give the same bytes and id.
    fn rebuild(&self) -> Result<(HeaderMap, Bytes), PublishError> {
        encode(
            self.event,
            self.trace.as_ref(),
            self.baggage.as_deref(),
            self.mark_sampled,
            &self.publish_id,
        )
    }

    /// The receipt of `result`; `stored` is what the copy a duplicate's PubAck points
    /// at says (its type; whether it is this call's own earlier attempt).
    fn receipt(
        mut self,
        result: Result<PublishAck, PublishError>,
        stored: Stored,
    ) -> Result<PublishReceipt, PublishError> {
        let ack = match result {
            Ok(ack) => ack,
            Err(e) => {
                self.span.record_error(e.kind().as_str());
                return Err(e);
            }
        };
        // A retry that finds this call's own first attempt stored is no duplicate.
        let duplicate = ack.duplicate && !stored.own;
        self.span.record_ack(&ack.stream, ack.sequence, duplicate);
        Ok(PublishReceipt {
            id: self.event.id.clone(),
            event_type: stored
                .event_type
                .unwrap_or_else(|| self.event.event_type.as_str().to_owned()),
            stream: ack.stream,
            seq: ack.sequence,
            duplicate,
        })
    }
}

impl Publisher {
    /// Starts the event's PRODUCER span (or marks it unsampled), injects the trace
    /// context and encodes the first attempt.
    fn prepare<'a>(&self, event: &'a Event) -> Result<(Prepared<'a>, FirstAttempt), PublishError> {
        let subject = self.subjects.event(&event.event_type);
        let mut span = telemetry::HopSpan::none();
        let mut trace = None;
        let baggage;
        if self.tracer.enabled() {
            let parent = telemetry::publish_parent(event);
            baggage = telemetry::baggage_value(&parent);
            trace = Some(match self.tracer.skip(&parent) {
                // Not recorded: no span, but the event says so to every later hop.
                Some(unsampled) => unsampled.span().span_context().clone(),
                None => {
                    span = telemetry::HopSpan::publish(&self.tracer, &subject, &event.id, &parent);
                    match span.span_context() {
                        Some(sc) => sc.clone(),
                        None => parent.span().span_context().clone(),
                    }
                }
            });
        } else {
            // Baggage travels whether or not traces are recorded.
            baggage = telemetry::untraced_baggage();
        }
        let mark_sampled = !self.server_msg_trace;
        let publish_id = new_publish_id();
        let (headers, payload) = encode(
            event,
            trace.as_ref(),
            baggage.as_deref(),
            mark_sampled,
            &publish_id,
        )?;
        let prepared = Prepared {
            event,
            trace,
            baggage,
            span,
            mark_sampled,
            publish_id,
        };
        let first = FirstAttempt {
            subject,
            headers,
            payload,
        };
        Ok((prepared, first))
    }

    /// Publishes one event: the first attempt inline, retries (rare) boxed, so that the
    /// future a caller holds per publish stays small.
    pub(crate) async fn publish_event(
        &self,
        event: &Event,
    ) -> Result<PublishReceipt, PublishError> {
        let start = tokio::time::Instant::now();
        let sent = self.send_first(event).await;
        self.await_pub_ack(start, sent).await
    }

    /// Publishes `events` with at most `window` awaiting their PubAck; results come back
    /// in input order. Events are sent in input order as fast as the connection takes
    /// them, and a window slot holds only the PubAck wait; an event whose PubAck does not
    /// come goes through the retry loop on its own.
    pub(crate) async fn publish_batch(
        &self,
        events: &[Event],
        window: usize,
    ) -> Vec<Result<PublishReceipt, PublishError>> {
        let window = window.max(1);
        let mut results = Vec::with_capacity(events.len());
        let mut in_flight = futures::stream::FuturesOrdered::new();
        for event in events {
            while in_flight.len() >= window {
                if let Some(result) = in_flight.next().await {
                    results.push(result);
                }
            }
            let start = tokio::time::Instant::now();
            let sent = self.send_first(event).await;
            in_flight.push_back(self.await_pub_ack(start, sent));
        }
        while let Some(result) = in_flight.next().await {
            results.push(result);
        }
        results
    }

    /// Prepares `event` and hands its first attempt to the connection (in call order).
    async fn send_first<'a>(&self, event: &'a Event) -> Sent<'a> {
        let (prepared, first) = self.prepare(event)?;
        let message = PublishMessage::build()
            .payload(first.payload)
            .headers(first.headers);
        let sent = self.js.send_publish(first.subject, message).await;
        Ok((prepared, sent))
    }

    /// Waits for the PubAck of a sent event; if it does not come, retries (rare, boxed so
    /// that the futures of a window stay small) until `start` + the deadline.
    async fn await_pub_ack(
        &self,
        start: tokio::time::Instant,
        sent: Sent<'_>,
    ) -> Result<PublishReceipt, PublishError> {
        let (prepared, sent) = sent?;
        let id = &prepared.event.id;
        let result = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let retried = result.is_err();
        let result = match result {
            Ok(ack) => Ok(ack),
            Err(e) if classify(&e) != PublishErrorKind::Unavailable => {
                Err(PublishError::new(classify(&e), id, e))
            }
            Err(e) => {
                let subject = self.subjects.event(&prepared.event.event_type);
                tracing::debug!(%subject, event_id = %id, error = %e, "publish retry");
                let retries =
                    self.publish_with_retries(start, subject, None, || prepared.rebuild(), id);
                Box::pin(retries).await
            }
        };
        self.record_send(
            || self.subjects.event(&prepared.event.event_type),
            start,
            result.as_ref().err().map(PublishError::kind),
        );
        let stored = match &result {
            Ok(ack) if ack.duplicate => {
                let copy = Box::pin(self.stored_copy(ack)).await;
                Stored {
                    event_type: copy
                        .as_ref()
                        .and_then(|h| get_ignore_case(h, CE_TYPE))
                        .map(str::to_owned),
                    // Only a retry can find its own attempt; the first attempt's
                    // duplicate is always an earlier request's.
                    own: retried
                        && copy.as_ref().and_then(|h| get_ignore_case(h, PUBLISH_ID))
                            == Some(prepared.publish_id.as_str()),
                }
            }
            _ => Stored::default(),
        };
        prepared.receipt(result, stored)
    }

    /// The headers of the event stored at `ack`'s sequence, read only for a duplicate
    /// (another event with this source and id may have had another type, or the copy
    /// may be this call's own first attempt). `None` if it cannot be read: the receipt
    /// then shows the type that was sent and says "duplicate", and the log says why.
    async fn stored_copy(&self, ack: &PublishAck) -> Option<HeaderMap> {
        let read = async {
            let stream = self.js.get_stream_no_info(&ack.stream).await?;
            let message = stream.get_raw_message(ack.sequence).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(message.headers)
        };
        match read.await {
            Ok(headers) => Some(headers),
            Err(error) => {
                tracing::warn!(
                    stream = %ack.stream,
                    seq = ack.sequence,
                    %error,
                    "cannot read the stored copy of a duplicate"
                );
                None
            }
        }
    }

    /// Publishes raw headers and payload until a PubAck arrives, an error that retrying
    /// cannot fix, or the deadline. `headers` must carry `Nats-Msg-Id` for retries to be
    /// safe; a sampled `traceparent` among them gets [`server_trace::mark`]ed as an
    /// event's would.
    pub(crate) async fn publish_raw(
        &self,
        subject: String,
        mut headers: HeaderMap,
        payload: Bytes,
        id: &str,
    ) -> Result<PublishAck, PublishError> {
        if !self.server_msg_trace {
            server_trace::mark_if_sampled(&mut headers);
        }
        let first = (headers.clone(), payload.clone());
        let rebuild = || Ok((headers.clone(), payload.clone()));
        let start = tokio::time::Instant::now();
        let destination = self.meters.current().map(|_| subject.clone());
        let result = self
            .publish_with_retries(start, subject, Some(first), rebuild, id)
            .await;
        if let Some(destination) = destination {
            self.record_send(
                || destination,
                start,
                result.as_ref().err().map(PublishError::kind),
            );
        }
        result
    }

    /// Records one send in the messaging metrics, if any are recorded: one that reached
    /// the connection (a payload refused as too large before it left is none).
    fn record_send(
        &self,
        destination: impl FnOnce() -> String,
        start: tokio::time::Instant,
        error: Option<PublishErrorKind>,
    ) {
        if error == Some(PublishErrorKind::TooLarge) {
            return;
        }
        if let Some(metrics) = self.meters.current() {
            metrics.record_send(
                &destination(),
                start.elapsed(),
                error.map(PublishErrorKind::as_str),
            );
        }
    }

    /// The retry loop, until `start` + the publish deadline: the first attempt sends
    /// `first` (moved, not copied: a header map copy per publish was most of the SDK's
    /// publish overhead), each retry `rebuild()`; with no `first`, it starts with a retry.
    async fn publish_with_retries(
        &self,
        start: tokio::time::Instant,
        subject: String,
        first: Option<(HeaderMap, Bytes)>,
        rebuild: impl Fn() -> Result<(HeaderMap, Bytes), PublishError>,
        id: &str,
    ) -> Result<PublishAck, PublishError> {
        let mut attempt = 0u32;
        let mut next = first;
        if next.is_none() {
            tokio::time::sleep(backoff_delay(attempt)).await;
            attempt += 1;
        }
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

/// What the stored copy a duplicate's PubAck points at says.
#[derive(Debug, Default)]
struct Stored {
    /// Its `ce-type`, when it could be read.
    event_type: Option<String>,
    /// It is this publish call's own earlier attempt.
    own: bool,
}

/// A fresh [`PUBLISH_ID`]: a UUIDv7 (time-ordered, 74 random bits; `fast-rng`), as
/// 32 hex digits.
fn new_publish_id() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .simple()
        .encode_lower(&mut buf)
        .to_owned()
}

/// The event's headers and payload, with `trace` as its trace context if given (the
/// event itself is not copied to change it), [`server_trace::mark`]ed if `mark_sampled`
/// and the context they carry is sampled, and carrying `publish_id`.
fn encode(
    event: &Event,
    trace: Option<&SpanContext>,
    baggage: Option<&str>,
    mark_sampled: bool,
    publish_id: &str,
) -> Result<(HeaderMap, Bytes), PublishError> {
    let (mut headers, payload) = encode_traced(event, trace, mark_sampled, publish_id)?;
    if let Some(value) = baggage
        && let Ok(value) = <async_nats::header::HeaderValue as std::str::FromStr>::from_str(value)
    {
        headers.insert(bus_core::headers::BAGGAGE, value);
    }
    Ok((headers, payload))
}

fn encode_traced(
    event: &Event,
    trace: Option<&SpanContext>,
    mark_sampled: bool,
    publish_id: &str,
) -> Result<(HeaderMap, Bytes), PublishError> {
    // The context the message carries: `trace` when valid, else the event's own.
    let sampled = match trace {
        Some(sc) if sc.is_valid() => sc.is_sampled(),
        _ => event
            .traceparent
            .as_deref()
            .is_some_and(server_trace::is_sampled),
    };
    let mark = mark_sampled && sampled;
    let encoded = |e: &Event, more: usize| {
        let (mut headers, payload) = binary_mode::encode_with_room(e, more + 1 + usize::from(mark))
            .map_err(|err| PublishError::from_encode(&event.id, err))?;
        headers.insert(PUBLISH_ID, publish_id);
        if mark {
            server_trace::mark(&mut headers);
        }
        Ok((headers, payload))
    };
    let Some(sc) = trace else {
        return encoded(event, 0);
    };
    if event.tracestate.is_some() && sc.trace_state().header().is_empty() {
        // The event's own `tracestate` must go, and headers cannot lose one: copy (rare).
        let mut copy = event.clone();
        telemetry::inject_into_event(sc, &mut copy);
        return encoded(&copy, 0);
    }
    let (mut headers, payload) = encoded(event, telemetry::header_count(sc))?;
    telemetry::inject_into_headers(sc, &mut headers);
    Ok((headers, payload))
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
