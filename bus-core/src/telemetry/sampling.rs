//! The hop task-local ([`within_hop`], [`current_hop`]): how work running inside a hop
//! (a handler, an HTTP request) finds the hop's context, recorded or not: the parent of
//! the events it publishes unless it opened a span of its own in the hop's trace
//! ([`super::publish_parent`]), and of each webhook attempt. And [`skip`]: whether a hop
//! is left unrecorded by the bus's own head sampling (`head_sampling`, with the `otlp`
//! feature).

use opentelemetry::Context;

tokio::task_local! {
    static HOP: Context;
}

/// `None` when the hop under `parent` is to be recorded; otherwise the unsampled context
/// to pass on instead of a span (the bus's own pipeline sampling by ratio, see
/// `head_sampling`).
pub fn skip(parent: &Context) -> Option<Context> {
    #[cfg(feature = "otlp")]
    {
        super::head_sampling::skip(parent)
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = parent;
        None
    }
}

/// Runs `work` (a handler, an HTTP request) with `cx`, its hop's context (the hop's span,
/// or the unsampled context of a hop not recorded), as the parent of what it publishes
/// and as the current OpenTelemetry context: a span the work opens (through the
/// application's tracer, or a `tracing` span through `tracing-opentelemetry`) is a child
/// of the hop, and the baggage the event carried is `Context::current().baggage()`.
// Not an `async fn`: that would store `work` twice (argument and scope) in the caller's task.
pub fn within_hop<F: Future>(cx: Context, work: F) -> impl Future<Output = F::Output> {
    use opentelemetry::context::FutureExt as _;
    HOP.scope(cx.clone(), work.with_context(cx))
}

/// The context of the hop running now, if any.
pub fn current_hop() -> Option<Context> {
    HOP.try_with(Clone::clone).ok()
}
