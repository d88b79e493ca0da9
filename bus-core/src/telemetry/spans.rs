//! The spans of each hop, per the OpenTelemetry messaging conventions. With telemetry
//! off every helper returns `Span::none()` after one atomic load: no span is built.

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::setup::is_enabled;

/// The `tracing` target of every span the bus records (the exporter layer keeps these).
pub const SPAN_TARGET: &str = "bus::trace";

/// `publish {destination}`, kind PRODUCER; a child of the current span.
pub fn publish_span(destination: &str, message_id: &str, body_size: usize) -> Span {
    if !is_enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: SPAN_TARGET,
        "publish",
        otel.name = %format_args!("publish {destination}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = "nats",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        messaging.message.id = message_id,
        messaging.message.body.size = body_size,
        messaging.nats.stream = Empty,
        messaging.nats.stream.sequence = Empty,
        messaging.nats.duplicate = Empty,
        error.type = Empty,
    )
}

/// Adds what the PubAck said.
pub fn record_publish_ack(span: &Span, stream: &str, sequence: u64, duplicate: bool) {
    span.record("messaging.nats.stream", stream);
    span.record("messaging.nats.stream.sequence", sequence);
    span.record("messaging.nats.duplicate", duplicate);
}

/// `process {destination}`, kind CONSUMER: one handling of one delivery. Its parent is
/// the producer's context (so redeliveries and redrives stay in the producer's trace)
/// and it links to it, as the conventions suggest.
pub fn process_span(
    destination: &str,
    group: Option<&str>,
    message_id: &str,
    attempt: u32,
    producer: &Context,
) -> Span {
    if !is_enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "process",
        otel.name = %format_args!("process {destination}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "nats",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = destination,
        messaging.consumer.group.name = group,
        messaging.message.id = message_id,
        messaging.nats.delivery_attempt = attempt,
        bus.settle = Empty,
        error.type = Empty,
    );
    let producer_span = producer.span().span_context().clone();
    if producer_span.is_valid() {
        let _ = span.set_parent(producer.clone());
        span.add_link(producer_span);
    }
    span
}

/// How a delivery was settled: `ack`, `nak`, `dead_letter`.
pub fn record_settle(span: &Span, outcome: &'static str) {
    span.record("bus.settle", outcome);
}

/// Marks the span failed, with a short error type.
pub fn record_error(span: &Span, error_type: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
}

/// An HTTP SERVER span named `{method} {route}` (the route template, never the path),
/// continuing the caller's trace when it sent `traceparent`.
pub fn server_span(method: &str, route: &str, caller: &Context) -> Span {
    if !is_enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
        error.type = Empty,
    );
    if caller.span().span_context().is_valid() {
        let _ = span.set_parent(caller.clone());
    }
    span
}
