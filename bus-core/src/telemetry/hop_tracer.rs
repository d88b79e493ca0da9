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
pub struct HopTracer(Option<Arc<BoxedTracer>>);

impl HopTracer {
    /// Spans go through `provider`'s tracer (scope `bus`), whatever the process installed.
    pub fn from_provider<P, T, S>(provider: &P) -> Self
    where
        P: TracerProvider<Tracer = T>,
        T: Tracer<Span = S> + Send + Sync + 'static,
        S: Span + Send + Sync + 'static,
    {
        let tracer = provider.tracer_with_scope(global_tracer::scope());
        Self(Some(Arc::new(BoxedTracer::new(Box::new(tracer)))))
    }

    /// Whether a hop records anything: a few relaxed atomic loads when nothing is installed.
    pub fn enabled(&self) -> bool {
        self.0.is_some() || own_pipeline::is_enabled()
    }

    /// Whether spans go through a provider given to the `Bus`.
    pub fn is_given(&self) -> bool {
        self.0.is_some()
    }

    /// The provider given to the `Bus`, if any.
    pub(crate) fn given(&self) -> Option<&BoxedTracer> {
        self.0.as_deref()
    }
}

impl fmt::Debug for HopTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "HopTracer(given provider)"
        } else {
            "HopTracer(process default)"
        })
    }
}
