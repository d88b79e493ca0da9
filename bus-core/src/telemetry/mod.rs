//! Telemetry in one place: OTLP trace export configured by the standard `OTEL_*`
//! variables, W3C trace context in NATS headers, and the messaging spans (publish,
//! process, HTTP server) that every hop records, following the OpenTelemetry messaging
//! semantic conventions. Used by `bus-node` and, through `bus-sdk`, by services.
//!
//! The hops are recorded through the application's tracer provider (see [`HopTracer`]):
//! a service with a pipeline of its own needs nothing from here. With the `otlp` feature, a
//! binary sets tracing up in one call with `init`; a service with a subscriber of its own
//! can build the same pipeline as a `Pipeline` and add its layer.
//!
//! ```no_run
//! # async fn f() -> Result<(), bus_core::telemetry::TelemetryError> {
//! // In a service's main, inside the tokio runtime:
//! let telemetry = bus_core::telemetry::init("billing-service")?;
//! // ... run ...
//! telemetry.shutdown().await; // flushes spans, bounded by a deadline
//! # Ok(()) }
//! ```

// The bus's own pipeline (`init`, `Pipeline`) and its exporters: the `otlp` feature,
// which holds the OpenTelemetry SDK, tonic and reqwest. Without it the bus records through
// the application's provider and propagates W3C context itself.
#[cfg(feature = "otlp")]
mod batch_encoder;
mod global_tracer;
#[cfg(feature = "otlp")]
mod head_sampling;
mod hop_tracer;
#[cfg(feature = "otlp")]
mod http_export;
mod json_logs;
mod messaging_metrics;
#[cfg(feature = "otlp")]
mod otlp_wire;
mod own_pipeline;
mod parent;
mod propagation;
#[cfg(feature = "otlp")]
mod publish_span;
mod sampling;
#[cfg(feature = "otlp")]
mod setup;
mod span_filter;
mod spans;
mod w3c;

pub use global_tracer::LOOK_EVERY;
#[doc(hidden)]
pub use global_tracer::watch as watch_global_provider;
pub use hop_tracer::HopTracer;
pub use json_logs::JsonWithTrace;
pub use messaging_metrics::{BusMeters, MessagingMetrics};
#[cfg(feature = "otlp")]
pub use opentelemetry_sdk::trace::Sampler;
pub use own_pipeline::is_enabled;
#[doc(hidden)]
pub use parent::publish_parent;
pub use propagation::{
    HeaderExtractor, HeaderInjector, MAX_BAGGAGE_BYTES, baggage_value, context_from_event,
    context_from_headers, extract_with, extract_with_baggage, header_count, inject_into_event,
    inject_into_headers, plausible_baggage, traceparent_value, untraced_baggage,
};
pub use sampling::{current_hop, skip, within_hop};
#[cfg(feature = "otlp")]
pub use setup::{
    OtlpExport, OtlpProtocol, Pipeline, SHUTDOWN_DEADLINE, Telemetry, TelemetryError,
    TelemetrySettings, init, init_with,
};
pub use span_filter::SpanFilter;
pub use spans::HopSpan;
