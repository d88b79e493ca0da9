//! The spans of each hop, per the OpenTelemetry messaging conventions: `publish`
//! (PRODUCER), `process` (CONSUMER, child of the producer's context and linked to it), and
//! the HTTP ingress (SERVER). With telemetry off every constructor returns
//! [`HopSpan::none`] after a few relaxed atomic loads: no span is built.
//!
//! Spans are built with the OpenTelemetry API directly (through [`HopTracer`]: a provider
//! given to the `Bus`, `init`'s pipeline, or the application's global provider), not as
//! `tracing` spans through `tracing-opentelemetry`: the bridge (a registry entry per span,
//! field visitors, layer filters, a context lookup per record) cost more per span than the
//! span itself, and nothing the bus runs needs a hop as a `tracing` span. What runs inside
//! a hop (a handler, an HTTP request) runs with the hop's context as the current one
//! ([`super::within_hop`]): spans it opens, `tracing` ones included, are its children.

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::Tracer as _;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt,
};
use opentelemetry::{Context, KeyValue};
#[cfg(feature = "otlp")]
use opentelemetry_sdk::trace::Span as SdkSpan;

use super::hop_tracer::HopTracer;
#[cfg(feature = "otlp")]
use super::publish_span::{self, PublishSpan};
use super::{global_tracer, own_pipeline};

/// The span of one hop; it ends when dropped. Boxed: an SDK span is ~280 bytes, and a
/// `HopSpan` lives in every publish window slot and every delivery's task, traced or not
/// (24 bytes: an application's span is a boxed trait object, a pointer pair).
#[derive(Debug, Default)]
pub struct HopSpan(Recorder);

#[derive(Debug, Default)]
enum Recorder {
    #[default]
    None,
    /// Through `init`'s pipeline.
    #[cfg(feature = "otlp")]
    Sdk(Box<SdkSpan>),
    /// A publish span recorded without the SDK (`init`'s OTLP/HTTP export).
    #[cfg(feature = "otlp")]
    Publish(Box<PublishSpan>),
    /// Through the application's provider (given to the `Bus`, or the global one).
    App(BoxedSpan),
}

/// Attributes a span may add after it starts (PubAck, settle, error): reserved up front
/// so that recording them does not grow the list.
const LATER_ATTRIBUTES: usize = 4;

impl HopSpan {
    /// No span (telemetry off, or a flow that is not recorded).
    pub fn none() -> Self {
        Self(Recorder::None)
    }

    /// The span of a hop whose parent is `parent()`, built by `start`, and the context the
    /// work inside the hop runs under (see [`super::within_hop`]): for a flow that is not
    /// recorded, no span and the unsampled context, so that what the hop publishes is not
    /// recorded either; when no span was built (a no-op provider given), the parent. With
    /// telemetry off, no span, and a context holding only the parent's baggage when the
    /// carrier has a `baggage` header (`carries_baggage`, asked only then) with any in it:
    /// baggage is a signal of its own, carried whether or not traces are recorded.
    /// Otherwise `parent` is not called.
    pub fn for_hop(
        tracer: &HopTracer,
        carries_baggage: impl FnOnce() -> bool,
        parent: impl FnOnce() -> Context,
        start: impl FnOnce(&Context) -> HopSpan,
    ) -> (HopSpan, Option<Context>) {
        if !tracer.enabled() {
            let hop = carries_baggage()
                .then(parent)
                .filter(|cx| !cx.baggage().is_empty())
                // Not the sender's span: no trace is recorded here.
                .map(|cx| {
                    Context::new().with_baggage(cx.baggage().iter().map(|(k, (v, m))| {
                        opentelemetry::baggage::KeyValueMetadata::new(
                            k.clone(),
                            v.clone(),
                            m.clone(),
                        )
                    }))
                });
            return (Self::none(), hop);
        }
        let parent = parent();
        if let Some(unsampled) = tracer.skip(&parent) {
            return (Self::none(), Some(unsampled));
        }
        let span = start(&parent);
        let hop = span.context_in(&parent).or_else(|| {
            let carries = parent.span().span_context().is_valid() || !parent.baggage().is_empty();
            carries.then_some(parent)
        });
        (span, hop)
    }

    /// `publish {destination}`, kind PRODUCER, a child of `parent`. Without
    /// `messaging.message.body.size`: the conventions make it opt-in, and every attribute
    /// costs each exported span.
    pub fn publish(
        tracer: &HopTracer,
        destination: &str,
        message_id: &str,
        parent: &Context,
    ) -> Self {
        if !tracer.enabled() || tracer.silent() || parent.is_telemetry_suppressed() {
            return Self::none();
        }
        #[cfg(feature = "otlp")]
        if tracer.given().is_none()
            && let Some(span) = publish_span::start(destination, message_id, parent)
        {
            return Self(Recorder::Publish(Box::new(span)));
        }
        Self::start(
            tracer,
            name("publish", destination),
            SpanKind::Producer,
            [
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.name", "publish"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", destination.to_owned()),
                KeyValue::new("messaging.message.id", message_id.to_owned()),
            ],
            parent,
            false,
        )
    }

    /// `process {destination}`, kind CONSUMER: one handling of one delivery. Its parent is
    /// the producer's context (so redeliveries and redrives stay in the producer's trace)
    /// and it links to it, as the conventions suggest.
    pub fn process(
        tracer: &HopTracer,
        destination: &str,
        group: Option<&str>,
        message_id: &str,
        attempt: u32,
        producer: &Context,
    ) -> Self {
        let attributes = [
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", destination.to_owned()),
            KeyValue::new("messaging.message.id", message_id.to_owned()),
            KeyValue::new("messaging.nats.delivery_attempt", i64::from(attempt)),
        ]
        .into_iter()
        .chain(group.map(|g| KeyValue::new("messaging.consumer.group.name", g.to_owned())));
        Self::start(
            tracer,
            name("process", destination),
            SpanKind::Consumer,
            attributes,
            producer,
            true,
        )
    }

    /// `push {destination}`, kind CONSUMER: one event handed to a node's push clients
    /// (SSE, WebSocket), one span per event per node whatever their number (see
    /// [`HopSpan::record_push`]); child of the producer's context and linked to it.
    pub fn push(
        tracer: &HopTracer,
        destination: &str,
        message_id: &str,
        node: &str,
        producer: &Context,
    ) -> Self {
        Self::start(
            tracer,
            name("push", destination),
            SpanKind::Consumer,
            [
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.name", "push"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", destination.to_owned()),
                KeyValue::new("messaging.message.id", message_id.to_owned()),
                KeyValue::new("bus.node", node.to_owned()),
            ],
            producer,
            true,
        )
    }

    /// How many push clients an event reached (`bus.push.clients`).
    pub fn record_push(&mut self, clients: usize) {
        if let Some(mut span) = self.recording() {
            span.set(KeyValue::new(
                "bus.push.clients",
                i64::try_from(clients).unwrap_or(i64::MAX),
            ));
        }
    }

    /// `{method} {route}`, kind SERVER (the route template, never the path), continuing
    /// the caller's trace when it sent `traceparent`.
    pub fn server(tracer: &HopTracer, method: &str, route: &str, caller: &Context) -> Self {
        Self::start(
            tracer,
            name(method, route),
            SpanKind::Server,
            [
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("http.route", route.to_owned()),
            ],
            caller,
            false,
        )
    }

    /// `POST`, kind CLIENT: one webhook delivery attempt, a child of the handling's
    /// CONSUMER span. `url_full` must carry no secrets (see `crate::redacted_url`).
    pub fn client_post(
        tracer: &HopTracer,
        url_full: &str,
        server: (&str, u16),
        message_id: &str,
        attempt: u32,
        parent: &Context,
    ) -> Self {
        if !tracer.enabled() || parent.is_telemetry_suppressed() {
            return Self::none();
        }
        let attributes = [
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.full", url_full.to_owned()),
            KeyValue::new("server.address", server.0.to_owned()),
            KeyValue::new("server.port", i64::from(server.1)),
            KeyValue::new("messaging.message.id", message_id.to_owned()),
            KeyValue::new("bus.webhook.attempt", i64::from(attempt)),
        ]
        .into_iter()
        .chain(
            (attempt > 1)
                .then(|| KeyValue::new("http.request.resend_count", i64::from(attempt - 1))),
        );
        Self::start(
            tracer,
            "POST".to_owned(),
            SpanKind::Client,
            attributes,
            parent,
            false,
        )
    }

    fn start(
        tracer: &HopTracer,
        name: String,
        kind: SpanKind,
        attributes: impl IntoIterator<Item = KeyValue>,
        parent: &Context,
        link_parent: bool,
    ) -> Self {
        if tracer.silent() {
            return Self::none();
        }
        let global;
        let via = if let Some(given) = tracer.given() {
            Via::App(given)
        } else if own_pipeline::has_pipeline() {
            // `init`'s pipeline; nothing while its sampler is off.
            match own_pipeline_via() {
                Some(via) => via,
                None => return Self::none(),
            }
        } else if let Some(app) = global_tracer::tracer() {
            global = app;
            Via::App(&global)
        } else {
            return Self::none();
        };
        let attributes = attributes.into_iter();
        // One allocation, with room for what the span records later.
        let mut all = Vec::with_capacity(attributes.size_hint().0 + LATER_ATTRIBUTES);
        all.extend(attributes);
        // Fields set in place: the builder is large, and each `with_*` moves it.
        let mut builder = SpanBuilder::from_name(name);
        builder.span_kind = Some(kind);
        builder.attributes = Some(all);
        let parent_span = parent.span();
        let parent_sc = parent_span.span_context();
        if link_parent && parent_sc.is_valid() {
            builder.links = Some(vec![opentelemetry::trace::Link::with_context(
                parent_sc.clone(),
            )]);
        }
        match via {
            #[cfg(feature = "otlp")]
            Via::Sdk(sdk) => Self(Recorder::Sdk(Box::new(
                builder.start_with_context(sdk, parent),
            ))),
            Via::App(app) => Self(Recorder::App(app.build_with_context(builder, parent))),
        }
    }

    /// The span's context, to propagate and to parent what runs inside the hop: `None`
    /// without a span. Valid (with the sampled flag unset) when the SDK's sampler
    /// dropped it.
    pub fn span_context(&self) -> Option<&SpanContext> {
        match &self.0 {
            Recorder::None => None,
            #[cfg(feature = "otlp")]
            Recorder::Sdk(s) => Some(s.span_context()).filter(|sc| sc.is_valid()),
            #[cfg(feature = "otlp")]
            Recorder::Publish(p) => Some(p.span_context()),
            Recorder::App(s) => Some(s.span_context()).filter(|sc| sc.is_valid()),
        }
    }

    /// `parent` (its baggage and whatever else it carries) with this span as its span,
    /// for [`super::within_hop`].
    pub fn context_in(&self, parent: &Context) -> Option<Context> {
        let sc = self.span_context()?;
        let local = SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            false,
            sc.trace_state().clone(),
        );
        Some(parent.with_remote_span_context(local))
    }

    /// The span, while it records (an SDK or application span).
    fn recording(&mut self) -> Option<Recording<'_>> {
        match &mut self.0 {
            #[cfg(feature = "otlp")]
            Recorder::Sdk(s) if s.is_recording() => Some(Recording::Sdk(s.as_mut())),
            Recorder::App(s) if s.is_recording() => Some(Recording::App(s)),
            _ => None,
        }
    }

    /// Adds what the PubAck said (`messaging.nats.duplicate` only when it was one).
    pub fn record_ack(&mut self, stream: &str, sequence: u64, duplicate: bool) {
        #[cfg(feature = "otlp")]
        if let Recorder::Publish(p) = &mut self.0 {
            return p.record_ack(stream, sequence, duplicate);
        }
        let Some(mut span) = self.recording() else {
            return;
        };
        span.set(KeyValue::new("messaging.nats.stream", stream.to_owned()));
        span.set(KeyValue::new(
            "messaging.nats.stream.sequence",
            i64::try_from(sequence).unwrap_or(i64::MAX),
        ));
        if duplicate {
            span.set(KeyValue::new("messaging.nats.duplicate", true));
        }
    }

    /// How a delivery was settled: `ack`, `nak`, `hand_back` (no handler in this member),
    /// `dead_letter`.
    pub fn record_settle(&mut self, outcome: &'static str) {
        if let Some(mut span) = self.recording() {
            span.set(KeyValue::new("bus.settle", outcome));
        }
    }

    /// The HTTP status the request got.
    pub fn record_status_code(&mut self, status: u16) {
        if let Some(mut span) = self.recording() {
            span.set(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
    }

    /// Marks the span failed, with a short error type.
    pub fn record_error(&mut self, error_type: &str) {
        #[cfg(feature = "otlp")]
        if let Recorder::Publish(p) = &mut self.0 {
            return p.record_error(error_type);
        }
        if let Some(mut span) = self.recording() {
            span.fail();
            span.set(KeyValue::new("error.type", error_type.to_owned()));
        }
    }
}

/// The tracer a span is started with.
enum Via<'a> {
    #[cfg(feature = "otlp")]
    Sdk(&'static opentelemetry_sdk::trace::SdkTracer),
    App(&'a opentelemetry::global::BoxedTracer),
}

/// A recording span of either kind (the `Span` trait is not object safe).
enum Recording<'a> {
    #[cfg(feature = "otlp")]
    Sdk(&'a mut SdkSpan),
    App(&'a mut BoxedSpan),
}

impl Recording<'_> {
    fn set(&mut self, attribute: KeyValue) {
        match self {
            #[cfg(feature = "otlp")]
            Recording::Sdk(s) => s.set_attribute(attribute),
            Recording::App(s) => s.set_attribute(attribute),
        }
    }

    fn fail(&mut self) {
        match self {
            #[cfg(feature = "otlp")]
            Recording::Sdk(s) => s.set_status(Status::error("")),
            Recording::App(s) => s.set_status(Status::error("")),
        }
    }
}

/// The bus's own pipeline's tracer, while it records (`init`; the `otlp` feature).
#[cfg(feature = "otlp")]
fn own_pipeline_via() -> Option<Via<'static>> {
    own_pipeline::tracer().map(Via::Sdk)
}

/// Built without the `otlp` feature: the bus has no pipeline of its own.
#[cfg(not(feature = "otlp"))]
fn own_pipeline_via() -> Option<Via<'static>> {
    None
}

/// `{first} {second}`, without `format!` (which cost ~900 instructions per span here).
fn name(first: &str, second: &str) -> String {
    let mut s = String::with_capacity(first.len() + 1 + second.len());
    s.push_str(first);
    s.push(' ');
    s.push_str(second);
    s
}
