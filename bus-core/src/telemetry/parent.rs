//! The parent of a publish: the innermost context the code publishing runs in.

use opentelemetry::Context;
use opentelemetry::trace::{TraceContextExt as _, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::event::Event;

/// The context an event published now is a child of, innermost first:
/// 1. the service's current `tracing` span, through `tracing-opentelemetry` (a span the
///    service opened, in a handler or not, whether or not its layer activates contexts);
/// 2. the current OpenTelemetry context (a span the service made current itself);
/// 3. inside a handler or an HTTP request, its hop (see [`super::within_hop`]);
/// 4. the trace context the event already carries (a redrive, a forwarded event);
///
/// else no parent: the publish starts a trace. Inside a hop, 1 and 2 count only when they
/// are in the hop's trace: a span entered across an `.await` by code the handler does
/// not own (a library's) stays "current" for whatever that thread polls next, and must
/// not take a handler's publish into another trace. The baggage is the chosen context's.
/// Asking a `tracing` span for its context starts its OpenTelemetry span (the layer builds
/// them lazily): a span published in cannot be given another parent afterwards.
pub fn publish_parent(event: &Event) -> Context {
    let hop = super::current_hop();
    let hop_trace = hop
        .as_ref()
        .map(|h| h.span().span_context().trace_id())
        .filter(|t| *t != TraceId::INVALID);
    let fits = |cx: &Context| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid() && hop_trace.is_none_or(|t| sc.trace_id() == t)
    };
    let span = tracing::Span::current();
    if !span.is_none() {
        let cx = span.context();
        if fits(&cx) {
            return cx;
        }
    }
    let current = Context::current();
    if fits(&current) {
        return current;
    }
    if let Some(hop) = hop {
        return hop;
    }
    super::context_from_event(event)
}
