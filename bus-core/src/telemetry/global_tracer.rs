//! The application's global tracer provider, as the bus records its spans through it when
//! `init` did not install a pipeline and the `Bus` was given no provider (the
//! OpenTelemetry convention for instrumentation libraries).
//!
//! Rust's global provider does not delegate: a tracer taken before the application sets
//! its provider stays a no-op. Whether the provider is a no-op cannot be asked, and
//! building a span for a no-op tracer costs as much as building a real one; so a watcher
//! looks at the global provider once at [`watch`] (every `Bus::connect`) and then once a
//! second from a thread of its own (one per process, named `bus-otel-global`), and keeps
//! a tracer only when the provider is a live one. With no provider installed the hot path
//! reads a few relaxed atomics and no hop builds anything; a recorded hop takes the tracer under a
//! read lock (a lock and a reference count, beside the span's ~2 µs). A provider installed
//! after connecting is used from the next look (within [`LOOK_EVERY`]). The tracer
//! provider is not used once the bus's own pipeline exists (`init` exporting, or a
//! [`super::Pipeline`]); the same thread looks at the global meter provider
//! ([`super::messaging_metrics`]).
//!
//! No-op or live: the no-op tracer hands a span its parent's span context back, while a
//! live one makes a span of its own, so a probe is started under a *remote, unsampled,
//! telemetry-suppressed* parent. The OpenTelemetry SDK answers a suppressed parent with
//! an empty context and records nothing (a provider that ignores suppression would still
//! drop the unsampled parent with a parent-based sampler). A provider the application
//! shut down but left installed still looks live: the bus then builds spans that go
//! nowhere until the process exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, RwLock};
use std::time::Duration;

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope};

/// How often the watcher looks at the global provider again.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

static ACTIVE: AtomicBool = AtomicBool::new(false);
static TRACER: RwLock<Option<Arc<BoxedTracer>>> = RwLock::new(None);
static WATCHER: Once = Once::new();

/// The instrumentation scope of every span the bus records.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(super::own_pipeline::TRACER_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Looks at the global tracer and meter providers now, and starts the watcher (once per
/// process). The tracer provider is not used once the bus's own pipeline exists (it then
/// records every hop); the meter provider always is.
pub fn watch() {
    look_all();
    WATCHER.call_once(|| {
        let started = std::thread::Builder::new()
            .name("bus-otel-global".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(LOOK_EVERY);
                    look_all();
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot watch the global OpenTelemetry providers; one installed from now on is not used");
        }
    });
}

/// Each look on its own: a provider that panics stops neither the other's look nor the
/// caller (`Bus::connect`).
fn look_all() {
    if std::panic::catch_unwind(look).is_err() {
        tracing::warn!("looking at the global tracer provider panicked");
    }
    if std::panic::catch_unwind(super::messaging_metrics::look).is_err() {
        tracing::warn!("looking at the global meter provider panicked");
    }
}

/// Whether the global provider was live at the last look.
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// The global provider's tracer, while it is live.
pub(crate) fn tracer() -> Option<Arc<BoxedTracer>> {
    if !active() {
        return None;
    }
    TRACER
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn look() {
    if super::own_pipeline::has_pipeline() {
        ACTIVE.store(false, Ordering::Relaxed);
        return;
    }
    let tracer = global::tracer_provider().tracer_with_scope(scope());
    let live = is_live(&tracer);
    *TRACER
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = live.then(|| Arc::new(tracer));
    ACTIVE.store(live, Ordering::Relaxed);
}

/// Whether `tracer` makes spans of its own (see the module docs).
pub(crate) fn is_live(tracer: &impl opentelemetry::trace::Tracer) -> bool {
    let probe = SpanContext::new(
        TraceId::from(0x0b05_u128),
        SpanId::from(0x0b05_u64),
        TraceFlags::default(),
        true,
        TraceState::default(),
    );
    let parent = Context::new()
        .with_remote_span_context(probe.clone())
        .with_telemetry_suppressed();
    let mut span = tracer.build_with_context(SpanBuilder::from_name("bus.probe"), &parent);
    let live = span.span_context() != &probe;
    span.end();
    live
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use opentelemetry::trace::noop::NoopTracerProvider;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{
        Sampler, SdkTracerProvider, Span as SdkSpan, SpanData, SpanProcessor,
    };

    /// Counts the spans the SDK hands its processors.
    #[derive(Debug, Default, Clone)]
    struct Counted(Arc<AtomicUsize>);

    impl SpanProcessor for Counted {
        fn on_start(&self, _span: &mut SdkSpan, _cx: &Context) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn on_end(&self, _span: SpanData) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn a_no_op_tracer_is_not_live_and_the_sdk_is_without_recording_the_probe() {
        assert!(!is_live(&NoopTracerProvider::new().tracer("t")));
        let counted = Counted::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(counted.clone())
            .with_sampler(Sampler::AlwaysOn)
            .build();
        assert!(is_live(&provider.tracer("t")));
        assert_eq!(
            counted.0.load(Ordering::Relaxed),
            0,
            "the probe reached a processor"
        );
    }
}
