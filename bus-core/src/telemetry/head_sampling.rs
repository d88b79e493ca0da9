//! Head sampling before any span is built (the bus's own pipeline, with a ratio sampler:
//! `traceidratio` or `parentbased_traceidratio`). The bus decides at the first hop of a
//! flow whether to record it, and every later hop follows the `sampled` flag in the
//! propagated `traceparent`. A flow that is not recorded builds no span anywhere: the
//! hops only pass an unsampled context along (in the event's headers, and to a handler's
//! own publishes through the hop task-local), so that downstream hops skip it too and no
//! partial trace appears. Other samplers are left to the SDK.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler};

static PRESAMPLING: AtomicBool = AtomicBool::new(false);
static RATIO_BITS: AtomicU64 = AtomicU64::new(0);

/// With `ratio`, takes over sampling from the SDK (see the module docs) and returns the
/// sampler the SDK should use; without, leaves `sampler` to the SDK.
pub(crate) fn configure(sampler: Sampler, ratio: Option<f64>) -> Sampler {
    match ratio {
        Some(r) => {
            RATIO_BITS.store(r.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
            PRESAMPLING.store(true, Ordering::Relaxed);
            // Whatever reaches the SDK was chosen here (or by the parent): record it.
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
        }
        None => {
            PRESAMPLING.store(false, Ordering::Relaxed);
            sampler
        }
    }
}

/// `None` when the hop under `parent` is to be recorded; otherwise the unsampled context
/// to pass on instead of a span.
pub(crate) fn skip(parent: &Context) -> Option<Context> {
    if !PRESAMPLING.load(Ordering::Relaxed) {
        return None;
    }
    let span = parent.span();
    let sc = span.span_context();
    if sc.is_valid() {
        return (!sc.is_sampled()).then(|| parent.clone());
    }
    let ids = RandomIdGenerator::default();
    let trace_id = ids.new_trace_id();
    let ratio = f64::from_bits(RATIO_BITS.load(Ordering::Relaxed));
    // As the specification's TraceIdRatioBased: the trace id's low 64 bits against the ratio.
    let low = u128::from_be_bytes(trace_id.to_bytes()) as u64;
    if (low as f64) < ratio * (u64::MAX as f64) {
        return None;
    }
    let unsampled = SpanContext::new(
        trace_id,
        ids.new_span_id(),
        TraceFlags::default(),
        false,
        TraceState::default(),
    );
    // The parent's baggage goes on with the flow, recorded or not.
    Some(parent.with_remote_span_context(unsampled))
}
