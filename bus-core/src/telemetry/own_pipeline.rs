//! Whether the bus's own pipeline (`init`, or a [`super::Pipeline`]; the `otlp` feature)
//! records the hops, and its tracer. Built without the feature, the bus records only
//! through the application's provider (given to the `Bus`, or the global one).

#[cfg(feature = "otlp")]
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "otlp")]
use opentelemetry_sdk::trace::SdkTracer;

/// The instrumentation scope of the bus's spans.
pub(crate) const TRACER_NAME: &str = "bus";

/// Set while the bus's own pipeline exports with a sampler that may record.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The tracer of every span the bus builds through its own pipeline; set once, by the one
/// exporting pipeline of the process.
#[cfg(feature = "otlp")]
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether the process records spans: the bus's own pipeline exports and its sampler is
/// not always-off, or (without that pipeline) the application's global provider is live.
/// A relaxed atomic load or two: the fast path when tracing is off. A `Bus` given a
/// provider of its own records whatever this says ([`super::HopTracer::enabled`]).
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed) || (!has_pipeline() && super::global_tracer::active())
}

/// Whether the bus's own pipeline exports (sampled or not).
pub(crate) fn has_pipeline() -> bool {
    #[cfg(feature = "otlp")]
    {
        TRACER.get().is_some()
    }
    #[cfg(not(feature = "otlp"))]
    {
        false
    }
}

/// The pipeline's tracer while it records spans.
#[cfg(feature = "otlp")]
pub(crate) fn tracer() -> Option<&'static SdkTracer> {
    if ENABLED.load(Ordering::Relaxed) {
        TRACER.get()
    } else {
        None
    }
}

/// Installs the pipeline's tracer; `records`: its sampler may record. Called once, by
/// the call holding the pipeline's claim.
#[cfg(feature = "otlp")]
pub(crate) fn install(tracer: SdkTracer, records: bool) {
    let _ = TRACER.set(tracer);
    ENABLED.store(records, Ordering::Relaxed);
}

/// The pipeline shuts down: no more spans through it.
#[cfg(feature = "otlp")]
pub(crate) fn stop_recording() {
    ENABLED.store(false, Ordering::Relaxed);
}
