//! The parent of a publish: the innermost context the code publishing runs in.

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::event::Event;

/// The context an event published now is a child of, innermost first:
/// 1. the service's current `tracing` span, through `tracing-opentelemetry` (a span the
///    service opened, in a handler or not, whether or not its layer activates contexts);
/// 2. the current OpenTelemetry context: inside a handler or an HTTP request, its hop
///    (see [`super::within_hop`]); elsewhere a span the service made current itself;
/// 3. the trace context the event already carries (a redrive, a forwarded event);
///
/// else no parent: the publish starts a trace. The baggage is the chosen context's.
pub fn publish_parent(event: &Event) -> Context {
    let span = tracing::Span::current();
    if !span.is_none() {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            return cx;
        }
    }
    let current = Context::current();
    if current.span().span_context().is_valid() {
        return current;
    }
    super::context_from_event(event)
}
