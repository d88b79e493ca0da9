//! Workload 4: what tracing costs. The telemetry subscriber is global to a process, so
//! each tracing mode runs in its own `bus-bench` process (`--telemetry MODE`), started
//! here one after the other, each measuring its rows raw against bus as usual. The raw
//! side never traces, so a mode's bus/raw ratio, set against the ratio with no telemetry,
//! is the cost of that mode; the raw side of each process keeps the box's drift out of it.
//!
//! Modes: `none` (no telemetry installed), `sampler-off` (exporter installed, sampler
//! `always_off`: no span is built), `ratio` (parent-based 10 % sampling), `always` (every
//! span exported over OTLP/HTTP, the bus's default protocol), and `always-raw-context`:
//! `always`, with the raw side's messages carrying the headers a sampled bus message
//! carries (a `traceparent` of the same length and `Nats-Trace-Dest: trace disabled`,
//! `bus_core::server_trace`). Part of what `always` costs is carrying W3C context at all
//! (about 100 bytes on the wire per message, for async-nats, the kernel and the server to
//! handle), which any traced client pays; this mode's cost is what the bus adds on top.
//! `app-always` and `app-sampler-off`: a service that brings its own pipeline and never
//! calls `init` (the SDK as an instrumentation library): its own SDK tracer provider with
//! the batch processor and the upstream OTLP/gRPC exporter, installed as the global
//! provider, and a `tracing` subscriber with the `tracing-opentelemetry` layer; the bus
//! records through that provider, with no span of the service's own around it.
//! The receiver runs in the parent process, as a collector would run outside the
//! service, and only counts the spans (reading lengths, not decoding): it shares the
//! machine's two cores with the measured process and the servers, and should take as
//! little of them as a receiver can.

use anyhow::{Context as _, Result};
use clap::ValueEnum;

use crate::cli::Args;

/// Rows measured under each tracing mode (workloads 1 and 2).
pub const TRACED_ROWS: &str = "publish.sync,publish.window,e2e.1000,e2e.10000";

/// How the benchmark process sets up telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TelemetryMode {
    /// No telemetry installed.
    None,
    /// An exporter, but the sampler never samples.
    SamplerOff,
    /// Parent-based sampling of 10 % of traces.
    Ratio,
    /// Every span, exported to a local OTLP receiver.
    Always,
    /// `always`, and the raw side's messages carry the same trace headers too.
    AlwaysRawContext,
    /// The service's own provider (every span sampled) and subscriber, never `init`.
    AppAlways,
    /// The service's own provider, its sampler `always_off`, and subscriber.
    AppSamplerOff,
}

impl TelemetryMode {
    fn flag(self) -> &'static str {
        match self {
            TelemetryMode::None => "none",
            TelemetryMode::SamplerOff => "sampler-off",
            TelemetryMode::Ratio => "ratio",
            TelemetryMode::Always => "always",
            TelemetryMode::AlwaysRawContext => "always-raw-context",
            TelemetryMode::AppAlways => "app-always",
            TelemetryMode::AppSamplerOff => "app-sampler-off",
        }
    }
}

/// Installed telemetry of this process (and the receiver it exports to).
pub struct Installed {
    telemetry: Option<bus_core::telemetry::Telemetry>,
    /// The service's own provider (`app-*` modes).
    app: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    _receiver: Option<bus_tests::OtlpReceiver>,
}

impl Installed {
    pub async fn shutdown(self) {
        if let Some(t) = self.telemetry {
            t.shutdown().await;
        }
        if let Some(p) = self.app {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

/// What a service sets up for itself (see the module docs), exporting to `grpc_endpoint`.
fn app_pipeline(
    grpc_endpoint: String,
    sampler: opentelemetry_sdk::trace::Sampler,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(grpc_endpoint)
        .build()?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("warn"))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bus-bench")))
        .try_init()?;
    Ok(provider)
}

/// Sets this process's telemetry up for `mode`, exporting to `endpoint` (or to a receiver
/// started here).
pub async fn install(
    mode: TelemetryMode,
    endpoint: Option<String>,
    grpc_endpoint: Option<String>,
) -> Result<Installed> {
    use bus_core::telemetry::{OtlpExport, OtlpProtocol, Sampler, TelemetrySettings, init_with};
    crate::raw_side::carry_context(mode == TelemetryMode::AlwaysRawContext);
    if mode == TelemetryMode::None {
        return Ok(Installed {
            telemetry: None,
            app: None,
            _receiver: None,
        });
    }
    let receiver = match (&endpoint, &grpc_endpoint) {
        (Some(_), Some(_)) => None,
        _ => Some(bus_tests::OtlpReceiver::start_counting().await?),
    };
    let (endpoint, grpc_endpoint) = match (endpoint, grpc_endpoint, &receiver) {
        (Some(e), Some(g), _) => (e, g),
        (_, _, Some(r)) => (r.http_endpoint(), r.grpc_endpoint()),
        _ => anyhow::bail!("no OTLP endpoint"),
    };
    if matches!(
        mode,
        TelemetryMode::AppAlways | TelemetryMode::AppSamplerOff
    ) {
        let sampler = match mode {
            TelemetryMode::AppSamplerOff => Sampler::AlwaysOff,
            _ => Sampler::AlwaysOn,
        };
        return Ok(Installed {
            telemetry: None,
            app: Some(app_pipeline(grpc_endpoint, sampler)?),
            _receiver: receiver,
        });
    }
    let sampler = match mode {
        TelemetryMode::SamplerOff => Sampler::AlwaysOff,
        TelemetryMode::Ratio => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.1))),
        _ => Sampler::AlwaysOn,
    };
    let telemetry = init_with(TelemetrySettings {
        service_name: "bus-bench".into(),
        export: Some(OtlpExport {
            endpoint: Some(endpoint),
            protocol: OtlpProtocol::HttpProtobuf,
            batch_delay: None,
        }),
        sampler,
        head_sampling_ratio: (mode == TelemetryMode::Ratio).then_some(0.1),
    })?;
    Ok(Installed {
        telemetry: Some(telemetry),
        app: None,
        _receiver: receiver,
    })
}

/// Runs the traced rows once per mode, each in a child `bus-bench`, `--mode-runs` times
/// over, and returns their reports as one markdown section: the first run's tables, and
/// the cost of each mode over every run.
pub async fn run(args: &Args) -> Result<String> {
    let exe = std::env::current_exe().context("finding bus-bench itself")?;
    let dir = tempfile::tempdir()?;
    // Outside the measured processes, as a collector would be.
    let receiver = bus_tests::OtlpReceiver::start_counting().await?;
    let mut out = format!(
        "\n## Tracing cost (workload 4)\n\nEach mode in its own process; compare each mode's \
         bus/raw ratios with those of `none`. Targets: always-on costs at most 10 % of \
         throughput, sampler off at most 2 %. Modes run {} time(s), alternating; the tables \
         are the first run's.\n",
        args.mode_runs
    );
    let modes = modes(&args.modes);
    let rows = if args.only.is_empty() {
        TRACED_ROWS.to_owned()
    } else {
        args.only.join(",")
    };
    let mut runs = Vec::new();
    for run in 1..=args.mode_runs {
        let mut ratios = Vec::new();
        for &mode in &modes {
            let report = dir.path().join(format!("{}-{run}.md", mode.flag()));
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.args(["--cluster", &args.cluster.to_string()])
                .args(["--telemetry", mode.flag()])
                .args(["--workloads", "publish,e2e"])
                .args(["--only", &rows])
                .args(["--otlp-endpoint", &receiver.http_endpoint()])
                .args(["--otlp-grpc-endpoint", &receiver.grpc_endpoint()])
                .arg("--out")
                .arg(&report)
                .stdout(std::process::Stdio::null());
            if args.quick {
                cmd.arg("--quick");
            }
            if let Some(r) = args.rounds {
                cmd.args(["--rounds", &r.to_string()]);
            }
            eprintln!(
                "bus-bench: tracing mode {} (run {run} of {})",
                mode.flag(),
                args.mode_runs
            );
            let before = receiver.span_count();
            let status = cmd
                .status()
                .await
                .context("running bus-bench for a tracing mode")?;
            anyhow::ensure!(
                status.success(),
                "bus-bench --telemetry {} failed: {status}",
                mode.flag()
            );
            let text = std::fs::read_to_string(&report)?;
            if run == 1 {
                out.push_str(&format!(
                    "\n### Telemetry: {}\n\nSpans received by the collector: {}.\n\n",
                    mode.flag(),
                    receiver.span_count() - before
                ));
                // The child's result table, without its title and its targets (the cost
                // table below is this workload's target).
                let rows = text
                    .lines()
                    .skip_while(|l| !l.starts_with("| workload"))
                    .take_while(|l| l.starts_with('|') && !l.starts_with("| target"));
                for line in rows {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            ratios.push((mode, ROWS.map(|row| throughput_ratio(&text, row))));
        }
        runs.push(ratios);
    }
    out.push_str(&cost_table(&runs));
    Ok(out)
}

/// The modes to run, in the order given and each once: `none` first, whether given or not.
fn modes(given: &[TelemetryMode]) -> Vec<TelemetryMode> {
    let mut modes = vec![TelemetryMode::None];
    for mode in given {
        if !modes.contains(mode) {
            modes.push(*mode);
        }
    }
    modes
}

/// The throughput rows whose cost is summed up: windowed, then one at a time.
const ROWS: [&str; 2] = ["publish, 256 in flight", "publish, wait for each PubAck"];

/// The bus/raw throughput ratio of `row` in a child's report.
fn throughput_ratio(report: &str, row: &str) -> Option<f64> {
    let prefix = format!("| {row} | **bus/raw** | **");
    let line = report.lines().find(|l| l.starts_with(&prefix))?;
    line[prefix.len()..].split('×').next()?.parse().ok()
}

/// One run: each mode's throughput ratios for [`ROWS`].
type Run = Vec<(TelemetryMode, [Option<f64>; 2])>;

/// Each mode's cost: one minus its bus/raw throughput ratio over that of `none` in the
/// same run; with several runs, the median cost, the runs' range, their mean cost and its
/// standard error, and the median ratio.
fn cost_table(runs: &[Run]) -> String {
    let ratio = |run: &Run, mode: TelemetryMode, row: usize| {
        run.iter()
            .find(|(m, _)| *m == mode)
            .and_then(|(_, r)| r[row])
    };
    let mut out = String::from(
        "\n### Cost of each mode\n\nOne minus the mode's bus/raw throughput ratio over that of \
         `none` in the same run; with several runs, the median cost (and the runs' range; \
         their mean cost ± its standard error) and the median ratio (targets: sampler off ≤ 2 %, always on ≤ 10 %). \
         `always-raw-context`: the raw side carries the same trace headers, so its cost is the \
         bus's part of `always`.\n\n\
         | telemetry | windowed publish bus/raw | cost | one at a time bus/raw | cost |\n\
         |---|--:|--:|--:|--:|\n",
    );
    let modes: Vec<TelemetryMode> = runs
        .first()
        .map(|r| r.iter().map(|(m, _)| *m).collect())
        .unwrap_or_default();
    for mode in modes {
        out.push_str(&format!("| {} |", mode.flag()));
        for row in 0..ROWS.len() {
            let ratios: Vec<f64> = runs.iter().filter_map(|r| ratio(r, mode, row)).collect();
            let costs: Vec<f64> = runs
                .iter()
                .filter_map(|r| {
                    let x = ratio(r, mode, row)?;
                    let base = ratio(r, TelemetryMode::None, row)?;
                    Some((1.0 - x / base) * 100.0)
                })
                .collect();
            match crate::stats::median(ratios) {
                Some(x) => out.push_str(&format!(" {x:.2}× |")),
                None => out.push_str(" — |"),
            }
            let (low, high) = costs
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), c| (l.min(*c), h.max(*c)));
            let spread = crate::stats::mean_and_error(&costs);
            match (crate::stats::median(costs.clone()), spread) {
                (Some(c), Some((mean, error))) if mode != TelemetryMode::None => out.push_str(
                    &format!(" {c:.0} % ({low:.0} to {high:.0}; mean {mean:.1} ± {error:.1}) |"),
                ),
                (Some(c), None) if mode != TelemetryMode::None => {
                    out.push_str(&format!(" {c:.0} % |"))
                }
                _ => out.push_str(" — |"),
            }
        }
        out.push('\n');
    }
    out
}

/// `--serve-otlp`: a span-counting receiver until Ctrl-C.
pub async fn serve_receiver() -> Result<()> {
    let receiver = bus_tests::OtlpReceiver::start_counting().await?;
    println!("grpc {}", receiver.grpc_endpoint());
    println!("http {}", receiver.http_endpoint());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("spans {}", receiver.span_count());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_read_from_the_ratio_rows_against_none() {
        let report = |w: &str, s: &str| {
            format!(
                "| publish, wait for each PubAck | **bus/raw** | **{s}×** | 1.00× |\n\
                 | publish, 256 in flight | bus | 45739 | — |\n\
                 | publish, 256 in flight | **bus/raw** | **{w}×** | — |\n"
            )
        };
        let none = report("0.90", "1.00");
        assert_eq!(throughput_ratio(&none, ROWS[0]), Some(0.90));
        assert_eq!(
            throughput_ratio(&report("0.81", "0.95"), ROWS[1]),
            Some(0.95)
        );
        let run = |w: &str, s: &str| {
            let always = report(w, s);
            vec![
                (
                    TelemetryMode::None,
                    ROWS.map(|r| throughput_ratio(&none, r)),
                ),
                (
                    TelemetryMode::Always,
                    ROWS.map(|r| throughput_ratio(&always, r)),
                ),
            ]
        };
        let table = cost_table(&[run("0.81", "0.95")]);
        assert!(
            table.contains("| none | 0.90× | — | 1.00× | — |"),
            "{table}"
        );
        assert!(
            table.contains("| always | 0.81× | 10 % | 0.95× | 5 % |"),
            "{table}"
        );
        // Three runs: the median cost, the range, the mean and its standard error.
        let table = cost_table(&[
            run("0.81", "0.95"),
            run("0.72", "0.90"),
            run("0.855", "1.00"),
        ]);
        assert!(
            table.contains(
                "| always | 0.81× | 10 % (5 to 20; mean 11.7 ± 4.4) | 0.95× | 5 % (0 to 10; mean 5.0 ± 2.9) |"
            ),
            "{table}"
        );
    }

    #[test]
    fn none_runs_first_and_each_mode_once() {
        use TelemetryMode::*;
        assert_eq!(modes(&[Always]), [None, Always]);
        assert_eq!(
            modes(&[Always, None, SamplerOff, Always]),
            [None, Always, SamplerOff]
        );
        assert_eq!(modes(&[]), [None]);
    }
}
