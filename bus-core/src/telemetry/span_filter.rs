//! What the `tracing-opentelemetry` layer of `init` and [`super::Pipeline`] records: what
//! `RUST_LOG` lets through (default `info`), never the crates an OTLP export runs on.
//! Unfiltered, the layer would turn every `trace!` of every crate on (async-nats writes
//! several per message), and the export's own spans would be exported by the export they
//! trace.

use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber, span};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

/// The crates of an export (HTTP/2, HTTP, gRPC, their middleware, the HTTP client): their
/// own spans and events, by exact crate (`tower`, not `tower_http`: a service's HTTP
/// server spans stay).
const EXPORT_CRATES: [&str; 6] = ["h2", "hyper", "hyper_util", "tonic", "tower", "reqwest"];

/// `RUST_LOG`, without the crates of an export (`h2`, `hyper`, `hyper_util`, `tonic`,
/// `tower`, `reqwest`).
#[derive(Debug)]
pub struct SpanFilter(EnvFilter);

impl SpanFilter {
    /// With `RUST_LOG` (default `info`).
    pub fn from_env() -> Self {
        Self(log_filter())
    }
}

/// `RUST_LOG`, by default `info`.
pub(crate) fn log_filter() -> EnvFilter {
    std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Whether `target` is in one of [`EXPORT_CRATES`].
fn from_export(target: &str) -> bool {
    EXPORT_CRATES.iter().any(|c| {
        target
            .strip_prefix(c)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Filter<S> for SpanFilter {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        !from_export(meta.target()) && Filter::<S>::enabled(&self.0, meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if from_export(meta.target()) {
            Interest::never()
        } else {
            Filter::<S>::callsite_enabled(&self.0, meta)
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Filter::<S>::max_level_hint(&self.0)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        Filter::<S>::on_new_span(&self.0, attrs, id, cx)
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        Filter::<S>::on_record(&self.0, id, values, cx)
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        Filter::<S>::on_enter(&self.0, id, cx)
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        Filter::<S>::on_exit(&self.0, id, cx)
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        Filter::<S>::on_close(&self.0, id, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_crate_is_matched_whole_not_by_prefix() {
        for target in [
            "h2",
            "h2::proto::connection",
            "tower::buffer",
            "hyper_util::client",
            "reqwest::connect",
        ] {
            assert!(from_export(target), "{target}");
        }
        for target in [
            "tower_http::trace",
            "reqwest_middleware",
            "tonic_health",
            "h2o",
            "billing",
        ] {
            assert!(!from_export(target), "{target}");
        }
    }
}
