//! The bus's own pipeline: `init` installs the `tracing` subscriber (logs by `RUST_LOG`)
//! and, when an OTLP endpoint is configured, the `tracing-opentelemetry` layer and the
//! trace exporter; [`Pipeline`] builds the same without installing it. Reads the standard
//! variables:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (no endpoint:
//! no export), `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or `http/protobuf`),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_BSP_*` (batching), `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`.
//!
//! Spans are queued in a bounded batch queue (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048)
//! and exported from a background thread; when the queue is full new spans are dropped,
//! so a slow or dead collector never slows the bus down. OTLP/HTTP goes through the bus's
//! own processor (`batch_encoder`: spans encoded where they end), OTLP/gRPC through the
//! SDK's batch processor and the upstream exporter; both take the same `OTEL_BSP_*`
//! limits, and a value that is not a positive number stops `init` naming the variable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::span_filter::SpanFilter;
use opentelemetry::global;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, TracerProviderBuilder};
use std::io::IsTerminal;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::batch_encoder::{BatchEncoder, BatchLimits, Direct};
use super::http_export::HttpSpanExporter;

/// How long `shutdown` may spend flushing spans.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Taken by the exporting pipeline being built: there is one per process.
static PIPELINE_CLAIMED: AtomicBool = AtomicBool::new(false);

/// Why telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// An `OTEL_*` variable has a value the bus does not understand.
    #[error("{variable}={value:?}: {reason}")]
    InvalidVariable {
        /// The variable's name.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// The OTLP exporter could not be built; holds the exporter's message.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// A global `tracing` subscriber was installed before: install telemetry once per
    /// process.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    /// An exporting pipeline (`init`, or a [`Pipeline`]) was built before: the bus records
    /// through one per process.
    #[error(
        "the bus's trace pipeline was already built in this process (init or Pipeline: once per process)"
    )]
    PipelineBuilt,
}

/// Installed telemetry; call [`Telemetry::shutdown`] before exiting to flush spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends every finished span now, within [`SHUTDOWN_DEADLINE`].
    pub async fn flush(&self) {
        let Some(provider) = self.provider.clone() else {
            return;
        };
        let flush = tokio::task::spawn_blocking(move || provider.force_flush());
        if !matches!(
            tokio::time::timeout(SHUTDOWN_DEADLINE, flush).await,
            Ok(Ok(Ok(())))
        ) {
            tracing::warn!("flushing traces failed or timed out");
        }
    }

    /// Flushes and stops the exporter, within [`SHUTDOWN_DEADLINE`] whatever the collector does.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        super::own_pipeline::stop_recording();
        let flush =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_DEADLINE));
        match tokio::time::timeout(SHUTDOWN_DEADLINE + Duration::from_secs(1), flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "flushing traces failed"),
            _ => tracing::warn!("flushing traces timed out"),
        }
    }
}

/// Where and how to export traces.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpExport {
    /// Base URL (`http://collector:4317` for gRPC, `http://collector:4318` for HTTP);
    /// `None`: the `OTEL_EXPORTER_OTLP_*ENDPOINT` variables.
    pub endpoint: Option<String>,
    /// The OTLP transport.
    pub protocol: OtlpProtocol,
    /// How often queued spans are sent (`OTEL_BSP_SCHEDULE_DELAY`; default 5 s).
    pub batch_delay: Option<Duration>,
}

/// The OTLP transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`: OTLP over gRPC.
    Grpc,
    /// `http/protobuf`: OTLP protobuf over HTTP; the default.
    HttpProtobuf,
}

/// Everything [`init_with`] needs; [`TelemetrySettings::from_env`] reads the `OTEL_*`
/// variables.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// The `service.name` of every exported span.
    pub service_name: String,
    /// `None`: logs only, no trace export.
    pub export: Option<OtlpExport>,
    /// Which traces are recorded (`OTEL_TRACES_SAMPLER`; by default `parentbased_always_on`).
    pub sampler: Sampler,
    /// With a ratio, the bus samples each flow at its first hop itself, before building any
    /// span, and later hops follow the propagated decision (the SDK then records what it is
    /// given). `from_env` sets it for `traceidratio` and `parentbased_traceidratio`.
    pub head_sampling_ratio: Option<f64>,
}

impl TelemetrySettings {
    /// Reads the standard variables; `service_name` applies unless `OTEL_SERVICE_NAME` is set.
    pub fn from_env(service_name: &str) -> Result<Self, TelemetryError> {
        let service_name = var("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.to_owned());
        let (sampler, _) = sampler_from_env()?;
        let ratio_sampler = var("OTEL_TRACES_SAMPLER").is_some_and(|n| {
            n.eq_ignore_ascii_case("traceidratio")
                || n.eq_ignore_ascii_case("parentbased_traceidratio")
        });
        let head_sampling_ratio = if ratio_sampler {
            Some(
                var("OTEL_TRACES_SAMPLER_ARG")
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(1.0),
            )
        } else {
            None
        };
        let export = if export_wanted() {
            let (variable, value) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
                Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(v)),
                None => (
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    var("OTEL_EXPORTER_OTLP_PROTOCOL"),
                ),
            };
            let protocol = match value {
                None => OtlpProtocol::HttpProtobuf,
                Some(p) if p == "grpc" => OtlpProtocol::Grpc,
                Some(p) if p == "http/protobuf" => OtlpProtocol::HttpProtobuf,
                Some(p) => {
                    return Err(TelemetryError::InvalidVariable {
                        variable,
                        value: p,
                        reason: "grpc or http/protobuf",
                    });
                }
            };
            Some(OtlpExport {
                endpoint: None,
                protocol,
                batch_delay: None,
            })
        } else {
            None
        };
        Ok(Self {
            service_name,
            export,
            sampler,
            head_sampling_ratio,
        })
    }
}

/// The one-call setup for a binary, from the `OTEL_*` variables: installs a
/// `tracing-subscriber` registry with the log layer (`RUST_LOG`, `BUS_LOG_FORMAT`) and,
/// when an OTLP endpoint is configured, the `tracing-opentelemetry` layer and the exporter,
/// as the global subscriber, tracer provider and propagator. Call once, inside the tokio
/// runtime. A service with a subscriber of its own uses [`Pipeline`] instead.
pub fn init(service_name: &str) -> Result<Telemetry, TelemetryError> {
    init_with(TelemetrySettings::from_env(service_name)?)
}

/// [`init`] with `settings` instead of the `OTEL_*` variables for what they hold.
pub fn init_with(settings: TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    if tracing::dispatcher::has_been_set() {
        return Err(TelemetryError::AlreadyInstalled);
    }
    let logs = log_layer()?.with_filter(super::span_filter::log_filter());
    let pipeline = Pipeline::new(settings)?;
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(pipeline.layer())
        .try_init();
    if let Err(e) = installed {
        // `try_init` installs the subscriber, then the bridge of the `log` crate's records;
        // the second fails when the process has a `log` logger already, which leaves the
        // subscriber (and this pipeline) installed. Otherwise another subscriber came in
        // between (the pipeline is then built but not installed: see `PipelineBuilt`).
        if !tracing::dispatcher::has_been_set() {
            return Err(TelemetryError::AlreadyInstalled);
        }
        tracing::warn!(error = %e, "records of the log crate are not turned into tracing events: a logger is installed");
    }
    global::set_text_map_propagator(pipeline.propagator());
    super::propagation::installed_by_init();
    if let Some(provider) = pipeline.provider() {
        global::set_tracer_provider(provider.clone());
    }
    Ok(pipeline.into_telemetry())
}

/// The trace pipeline of [`init`], for a service that installs it in a subscriber of its
/// own: the tracer provider with the bus's exporter (configured by the `OTEL_*`
/// variables), the `tracing-opentelemetry` layer on it, and the propagator
/// `OTEL_PROPAGATORS` names. Building it installs no global subscriber, provider or
/// propagator; the bus records its own spans through it from then on. One exporting
/// pipeline per process (a second is refused with [`TelemetryError::PipelineBuilt`]).
///
/// ```no_run
/// # fn f() -> Result<(), bus_core::telemetry::TelemetryError> {
/// use tracing_subscriber::layer::SubscriberExt as _;
/// use tracing_subscriber::util::SubscriberInitExt as _;
///
/// let pipeline = bus_core::telemetry::Pipeline::from_env("billing-service")?;
/// tracing_subscriber::registry()
///     .with(tracing_subscriber::fmt::layer())
///     .with(pipeline.layer())
///     .init();
/// opentelemetry::global::set_text_map_propagator(pipeline.propagator());
/// if let Some(provider) = pipeline.provider() {
///     opentelemetry::global::set_tracer_provider(provider.clone());
/// }
/// let telemetry = pipeline.into_telemetry(); // `telemetry.shutdown().await` before exiting
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pipeline {
    service_name: String,
    provider: Option<SdkTracerProvider>,
    propagator: PropagatorChoice,
    /// Propagators `OTEL_PROPAGATORS` named that the bus does not implement, warned about
    /// when the propagator is taken (the service's subscriber is installed by then).
    ignored_propagators: Vec<String>,
}

/// The propagators `OTEL_PROPAGATORS` names, kept to build the composite again (it is not
/// `Clone`).
#[derive(Debug, Clone, Copy)]
struct PropagatorChoice {
    trace_context: bool,
    baggage: bool,
}

impl Pipeline {
    /// Reads the `OTEL_*` variables; `service_name` applies unless `OTEL_SERVICE_NAME` is set.
    pub fn from_env(service_name: &str) -> Result<Self, TelemetryError> {
        Self::new(TelemetrySettings::from_env(service_name)?)
    }

    /// Builds the pipeline `settings` describe (no export: no provider).
    pub fn new(settings: TelemetrySettings) -> Result<Self, TelemetryError> {
        let (propagator, ignored_propagators) = propagator_from_env()?;
        let Some(export) = settings.export else {
            return Ok(Self {
                service_name: settings.service_name,
                provider: None,
                propagator,
                ignored_propagators,
            });
        };
        if PIPELINE_CLAIMED.swap(true, Ordering::SeqCst) {
            return Err(TelemetryError::PipelineBuilt);
        }
        let built = Self::build(
            settings.service_name,
            &export,
            settings.sampler,
            settings.head_sampling_ratio,
            propagator,
        )
        .map(|pipeline| Self {
            ignored_propagators,
            ..pipeline
        });
        if built.is_err() {
            PIPELINE_CLAIMED.store(false, Ordering::SeqCst);
        }
        built
    }

    /// The exporting pipeline, once this call holds the claim.
    fn build(
        service_name: String,
        export: &OtlpExport,
        sampler: Sampler,
        head_sampling_ratio: Option<f64>,
        propagator: PropagatorChoice,
    ) -> Result<Self, TelemetryError> {
        let mut limits = batch_limits()?;
        if let Some(delay) = export.batch_delay {
            limits.delay = delay;
        }
        let off = matches!(sampler, Sampler::AlwaysOff)
            || matches!(sampler, Sampler::TraceIdRatioBased(r) if r <= 0.0);
        let (builder, direct) = with_exporter(SdkTracerProvider::builder(), export, limits)?;
        let sampler = super::head_sampling::configure(sampler, head_sampling_ratio);
        let provider = builder
            .with_sampler(sampler.clone())
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.clone())
                    .build(),
            )
            .build();
        if let Some(direct) = direct {
            super::publish_span::install(direct, sampler);
        }
        // This call holds the claim: the tracer is not set yet.
        super::own_pipeline::install(
            provider.tracer_with_scope(super::global_tracer::scope()),
            !off,
        );
        Ok(Self {
            service_name,
            provider: Some(provider),
            propagator,
            ignored_propagators: Vec::new(),
        })
    }

    /// The tracer provider, while traces are exported.
    pub fn provider(&self) -> Option<&SdkTracerProvider> {
        self.provider.as_ref()
    }

    /// The `tracing-opentelemetry` layer recording the service's own `tracing` spans
    /// through the provider (scope: the service's name), filtered by [`SpanFilter`];
    /// `None` without export (`Option<Layer>` is a layer that does nothing).
    pub fn layer<S>(&self) -> Option<Filtered<OpenTelemetryLayer<S, SdkTracer>, SpanFilter, S>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(self.tracer()?)
                .with_filter(SpanFilter::from_env()),
        )
    }

    /// The tracer [`Pipeline::layer`] records the service's spans with, for a service that
    /// builds its `tracing-opentelemetry` layer itself (other options; filter it with
    /// [`SpanFilter`]).
    pub fn tracer(&self) -> Option<SdkTracer> {
        Some(self.provider.as_ref()?.tracer(self.service_name.clone()))
    }

    /// The propagator `OTEL_PROPAGATORS` names (`tracecontext,baggage` by default), to
    /// install as the global one; the bus's own headers follow the global propagator.
    /// With `none`, asking for it is enough for the bus to carry no context (it would
    /// otherwise write W3C context when no propagator is installed).
    pub fn propagator(&self) -> TextMapCompositePropagator {
        if !self.ignored_propagators.is_empty() {
            tracing::warn!(
                ignored = %self.ignored_propagators.join(","),
                "OTEL_PROPAGATORS names propagators the bus does not implement: they are ignored"
            );
        }
        if !self.propagator.trace_context && !self.propagator.baggage {
            super::propagation::installed_by_init();
        }
        self.propagator.build()
    }

    /// The handle that flushes and shuts the pipeline down.
    pub fn into_telemetry(self) -> Telemetry {
        Telemetry {
            provider: self.provider,
        }
    }
}

impl PropagatorChoice {
    fn build(self) -> TextMapCompositePropagator {
        let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
        if self.trace_context {
            propagators.push(Box::new(TraceContextPropagator::new()));
        }
        if self.baggage {
            propagators.push(Box::new(BaggagePropagator::new()));
        }
        TextMapCompositePropagator::new(propagators)
    }
}

/// The provider with `export`'s exporter: OTLP/HTTP through the bus's own processor (and
/// the direct recorder of publish spans), OTLP/gRPC through the SDK's batch processor.
fn with_exporter(
    builder: TracerProviderBuilder,
    export: &OtlpExport,
    limits: BatchLimits,
) -> Result<(TracerProviderBuilder, Option<Direct>), TelemetryError> {
    Ok(match export.protocol {
        OtlpProtocol::HttpProtobuf => {
            let exporter = HttpSpanExporter::new(export.endpoint.as_deref())?;
            let encoder = BatchEncoder::start(exporter, limits)
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let direct = encoder.direct(super::global_tracer::scope());
            (builder.with_span_processor(encoder), Some(direct))
        }
        OtlpProtocol::Grpc => {
            let batch = BatchConfigBuilder::default()
                .with_max_queue_size(limits.max_queue)
                .with_max_export_batch_size(limits.max_batch)
                .with_scheduled_delay(limits.delay)
                .build();
            let processor = BatchSpanProcessor::builder(grpc_exporter(export)?)
                .with_batch_config(batch)
                .build();
            (builder.with_span_processor(processor), None)
        }
    })
}

/// `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512, at
/// most the queue size) and `OTEL_BSP_SCHEDULE_DELAY` (milliseconds, 5000).
fn batch_limits() -> Result<BatchLimits, TelemetryError> {
    let positive =
        |variable: &'static str, default: u64| -> Result<u64, TelemetryError> {
            match var(variable) {
                None => Ok(default),
                Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).ok_or(
                    TelemetryError::InvalidVariable {
                        variable,
                        value: v,
                        reason: "a whole number above 0",
                    },
                ),
            }
        };
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let max_queue = size(positive("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?);
    let max_batch = size(positive("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?).min(max_queue);
    let delay = Duration::from_millis(positive("OTEL_BSP_SCHEDULE_DELAY", 5000)?);
    Ok(BatchLimits {
        max_queue,
        max_batch,
        delay,
    })
}

/// The propagators of the specification that the bus does not implement: named in
/// `OTEL_PROPAGATORS`, each is ignored with a warning (a fleet-wide setting such as
/// `tracecontext,baggage,b3` must not stop the node), as the specification asks of a value
/// it knows but the implementation lacks.
const NOT_IMPLEMENTED: [&str; 5] = ["b3", "b3multi", "jaeger", "xray", "ottrace"];

/// `OTEL_PROPAGATORS` (comma-separated, case-insensitive; default `tracecontext,baggage`):
/// `tracecontext` (W3C trace context), `baggage` (W3C baggage), `none` (wins over the
/// others, wherever it stands); the specification's
/// others ([`NOT_IMPLEMENTED`]) are returned to be warned about and ignored. Anything else
/// (a typo) is refused, naming the variable.
fn propagator_from_env() -> Result<(PropagatorChoice, Vec<String>), TelemetryError> {
    propagators(var("OTEL_PROPAGATORS"))
}

fn propagators(value: Option<String>) -> Result<(PropagatorChoice, Vec<String>), TelemetryError> {
    let value = value.unwrap_or_else(|| "tracecontext,baggage".to_owned());
    let mut choice = PropagatorChoice {
        trace_context: false,
        baggage: false,
    };
    let mut ignored = Vec::new();
    let (mut named, mut none) = (false, false);
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.to_ascii_lowercase().as_str() {
            "tracecontext" => (choice.trace_context, named) = (true, true),
            "baggage" => (choice.baggage, named) = (true, true),
            // Wherever it stands, once every name is checked.
            "none" => none = true,
            known if NOT_IMPLEMENTED.contains(&known) => ignored.push(known.to_owned()),
            _ => {
                return Err(TelemetryError::InvalidVariable {
                    variable: "OTEL_PROPAGATORS",
                    value,
                    reason: "a comma-separated list of tracecontext, baggage or none (b3, b3multi, jaeger, xray and ottrace are ignored)",
                });
            }
        }
    }
    if none {
        let nothing = PropagatorChoice {
            trace_context: false,
            baggage: false,
        };
        return Ok((nothing, Vec::new()));
    }
    if !named {
        // Only propagators the bus lacks: the setting is ignored as a whole.
        choice = PropagatorChoice {
            trace_context: true,
            baggage: true,
        };
    }
    Ok((choice, ignored))
}

/// The log lines on stderr: text, or JSON with the hop's trace and span ids
/// (`BUS_LOG_FORMAT=json`, see [`super::JsonWithTrace`]).
fn log_layer() -> Result<Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>, TelemetryError>
{
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed()
    };
    match var("BUS_LOG_FORMAT") {
        None => Ok(text()),
        Some(f) if f.eq_ignore_ascii_case("text") => Ok(text()),
        Some(f) if f.eq_ignore_ascii_case("json") => Ok(tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(super::JsonWithTrace)
            .with_writer(std::io::stderr)
            .boxed()),
        Some(f) => Err(TelemetryError::InvalidVariable {
            variable: "BUS_LOG_FORMAT",
            value: f,
            reason: "text or json",
        }),
    }
}

/// The upstream OTLP/gRPC exporter (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`): it reads the
/// compression, headers and timeout variables and retries itself; the certificates are
/// read here (`http_export::grpc_tls`). OTLP/HTTP, the default, goes through the bus's
/// own exporter (`http_export`), which encodes spans without the upstream conversion.
fn grpc_exporter(export: &OtlpExport) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithTonicConfig};
    let mut b = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_protocol(Protocol::Grpc);
    if let Some(e) = &export.endpoint {
        b = b.with_endpoint(e.clone());
    }
    if let Some(tls) = super::http_export::grpc_tls(export.endpoint.as_deref())? {
        b = b.with_tls_config(tls);
    }
    b.build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))
}

pub(crate) fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn export_wanted() -> bool {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    if var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return false;
    }
    var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

/// The sampler named by `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`), and
/// whether it never samples.
fn sampler_from_env() -> Result<(Sampler, bool), TelemetryError> {
    let name = var("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into());
    let ratio = || -> Result<f64, TelemetryError> {
        match var("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(TelemetryError::InvalidVariable {
                    variable: "OTEL_TRACES_SAMPLER_ARG",
                    value: v,
                    reason: "a ratio from 0 to 1",
                }),
            },
        }
    };
    Ok(match name.to_ascii_lowercase().as_str() {
        "always_on" => (Sampler::AlwaysOn, false),
        "always_off" => (Sampler::AlwaysOff, true),
        "traceidratio" => {
            let r = ratio()?;
            (Sampler::TraceIdRatioBased(r), r == 0.0)
        }
        "parentbased_always_on" => (Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), false),
        "parentbased_always_off" => (Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), false),
        "parentbased_traceidratio" => {
            let r = ratio()?;
            (
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
                false,
            )
        }
        _ => {
            return Err(TelemetryError::InvalidVariable {
                variable: "OTEL_TRACES_SAMPLER",
                value: name,
                reason: "one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str) -> Result<(bool, bool, Vec<String>), TelemetryError> {
        propagators(Some(value.to_owned())).map(|(c, i)| (c.trace_context, c.baggage, i))
    }

    #[test]
    fn propagators_the_bus_lacks_are_ignored_and_a_typo_is_refused() -> Result<(), TelemetryError> {
        let none: Vec<String> = Vec::new();
        assert_eq!(
            propagators(None).map(|(c, _)| (c.trace_context, c.baggage))?,
            (true, true)
        );
        assert_eq!(parsed("tracecontext")?, (true, false, none.clone()));
        assert_eq!(
            parsed(" Baggage , TraceContext ")?,
            (true, true, none.clone())
        );
        assert_eq!(
            parsed("tracecontext,baggage,b3")?,
            (true, true, vec!["b3".to_owned()])
        );
        assert_eq!(
            parsed("baggage,XRay")?,
            (false, true, vec!["xray".to_owned()])
        );
        // Only what the bus lacks: as if unset.
        assert_eq!(parsed("b3multi")?, (true, true, vec!["b3multi".to_owned()]));
        assert_eq!(parsed("none")?, (false, false, none.clone()));
        assert_eq!(
            parsed("tracecontext,none,b3")?,
            (false, false, none.clone())
        );
        assert_eq!(parsed("none,tracecontext")?, (false, false, none));
        assert!(parsed("none,tracecontxt").is_err(), "every name is checked");
        match parsed("tracecontxt") {
            Err(TelemetryError::InvalidVariable { variable, .. }) => {
                assert_eq!(variable, "OTEL_PROPAGATORS")
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }
}
