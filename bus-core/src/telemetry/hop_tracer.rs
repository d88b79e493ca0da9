//! Which tracer records a hop's span: a provider given to the `Bus`; else the pipeline
//! `init` installed (the lean OTLP path); else the application's global provider.

use std::fmt;
use std::sync::Arc;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{Span, Tracer, TracerProvider};

use super::{global_tracer, own_pipeline};

/// Where a `Bus` records its spans. The default follows the process: `init`'s pipeline
/// when `init` exports, else the application's global provider (see
/// [`global_tracer`](super::watch_global_provider)).
#[derive(Clone, Default)]
pub struct HopTracer(Given);

#[derive(Clone, Default)]
enum Given {
    /// The process's tracer.
    #[default]
    Process,
    /// A provider given to the `Bus`, making spans of its own.
    Live(Arc<BoxedTracer>),
    /// A provider given to the `Bus` that makes no spans (a no-op): no span is built,
    /// and contexts pass through the hops as the no-op tracer would pass them.
    Noop,
}

impl HopTracer {
    /// Spans go through `provider`'s tracer (scope `bus`), whatever the process installed.
    /// A no-op provider is recognised once, here (the probe of
    /// [`global_tracer`](super::watch_global_provider)): the bus then builds no span, and
    /// still carries the context its hops run in (the application's spans, its baggage)
    /// from publish to handler, as a no-op tracer's spans would.
    pub fn from_provider<P, T, S>(provider: &P) -> Self
    where
        P: TracerProvider<Tracer = T>,
        T: Tracer<Span = S> + Send + Sync + 'static,
        S: Span + Send + Sync + 'static,
    {
        let tracer = provider.tracer_with_scope(global_tracer::scope());
        if !global_tracer::is_live(&tracer) {
            return Self(Given::Noop);
        }
        Self(Given::Live(Arc::new(BoxedTracer::new(Box::new(tracer)))))
    }

    /// Whether hops take the traced path (a span, or at least the context passed on): a
    /// few relaxed atomic loads when nothing is installed.
    pub fn enabled(&self) -> bool {
        match self.0 {
            Given::Process => own_pipeline::is_enabled(),
            Given::Live(_) | Given::Noop => true,
        }
    }

    /// Whether no span is to be built (a no-op provider was given): the hops then only
    /// pass their context on, and take no part in the bus's own head sampling.
    pub(crate) fn silent(&self) -> bool {
        matches!(self.0, Given::Noop)
    }

    /// Whether spans go through a provider given to the `Bus` (a no-op one included).
    pub fn is_given(&self) -> bool {
        !matches!(self.0, Given::Process)
    }

    /// The unsampled context to pass on instead of a span when the bus's own head
    /// sampling leaves the hop under `parent` unrecorded ([`super::skip`]); never for a
    /// given no-op provider, which takes no part in it.
    pub fn skip(&self, parent: &opentelemetry::Context) -> Option<opentelemetry::Context> {
        if self.silent() {
            return None;
        }
        super::skip(parent)
    }

    /// The live provider given to the `Bus`, if any.
    pub(crate) fn given(&self) -> Option<&BoxedTracer> {
        match &self.0 {
            Given::Live(tracer) => Some(tracer),
            _ => None,
        }
    }
}

impl fmt::Debug for HopTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Given::Process => "HopTracer(process default)",
            Given::Live(_) => "HopTracer(given provider)",
            Given::Noop => "HopTracer(given no-op provider)",
        })
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry::trace::noop::NoopTracerProvider;

    use super::*;

    #[test]
    fn a_given_noop_provider_records_nothing_and_a_live_one_records() {
        let noop = HopTracer::from_provider(&NoopTracerProvider::new());
        assert!(noop.is_given() && noop.silent() && noop.given().is_none());
        let parent = opentelemetry::Context::new().with_remote_span_context(
            opentelemetry::trace::SpanContext::new(
                opentelemetry::trace::TraceId::from(7_u128),
                opentelemetry::trace::SpanId::from(7_u64),
                opentelemetry::trace::TraceFlags::SAMPLED,
                true,
                Default::default(),
            ),
        );
        let span = super::super::HopSpan::publish(&noop, "bus.evt.a", "id", &parent);
        assert!(span.span_context().is_none(), "no span built");
        let (span, hop) = super::super::HopSpan::for_hop(
            &noop,
            || false,
            || parent.clone(),
            |p| super::super::HopSpan::process(&noop, "bus.evt.a", None, "id", 1, p),
        );
        assert!(span.span_context().is_none(), "no span built");
        assert_eq!(
            hop.map(|h| h.span().span_context().clone()),
            Some(parent.span().span_context().clone()),
            "the hop runs in the producer's context"
        );
        let sdk = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let live = HopTracer::from_provider(&sdk);
        assert!(live.is_given() && live.enabled() && !live.silent() && live.given().is_some());
    }
}
