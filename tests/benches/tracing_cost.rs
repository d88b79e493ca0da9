//! Workload 4: what tracing costs. The telemetry subscriber is global to a process, so
//! each tracing mode runs in its own `bus-bench` process (`--telemetry MODE`), started
//! here one after the other, each measuring its rows raw against bus as usual. The raw
//! side never traces, so a mode's bus/raw ratio, set against the ratio with no telemetry,
//! is the cost of that mode; the raw side of each process keeps the box's drift out of it.
//!
//! Modes: `none` (no telemetry installed), `sampler-off` (exporter installed, sampler
//! `always_off`: no span is built), `ratio` (parent-based 10 % sampling), `always` (every
//! span exported over OTLP/gRPC). The receiver runs in the parent process, as a collector
//! would run outside the service: its decoding is not the bus's cost, though it shares
//! the machine's two cores with the measured process and the servers.

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
}

impl TelemetryMode {
    fn flag(self) -> &'static str {
        match self {
            TelemetryMode::None => "none",
            TelemetryMode::SamplerOff => "sampler-off",
            TelemetryMode::Ratio => "ratio",
            TelemetryMode::Always => "always",
        }
    }
}

/// Installed telemetry of this process (and the receiver it exports to).
pub struct Installed {
    telemetry: Option<bus_core::telemetry::Telemetry>,
    _receiver: Option<bus_tests::OtlpReceiver>,
}

impl Installed {
    pub async fn shutdown(self) {
        if let Some(t) = self.telemetry {
            t.shutdown().await;
        }
    }
}

/// Sets this process's telemetry up for `mode`, exporting to `endpoint` (or to a receiver
/// started here).
pub async fn install(mode: TelemetryMode, endpoint: Option<String>) -> Result<Installed> {
    use bus_core::telemetry::{OtlpExport, OtlpProtocol, Sampler, TelemetrySettings, init_with};
    if mode == TelemetryMode::None {
        return Ok(Installed {
            telemetry: None,
            _receiver: None,
        });
    }
    let receiver = match endpoint {
        Some(_) => None,
        None => Some(bus_tests::OtlpReceiver::start().await?),
    };
    let endpoint = match (endpoint, &receiver) {
        (Some(e), _) => e,
        (None, Some(r)) => r.grpc_endpoint(),
        (None, None) => anyhow::bail!("no OTLP endpoint"),
    };
    let sampler = match mode {
        TelemetryMode::SamplerOff => Sampler::AlwaysOff,
        TelemetryMode::Ratio => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.1))),
        _ => Sampler::AlwaysOn,
    };
    let telemetry = init_with(TelemetrySettings {
        service_name: "bus-bench".into(),
        export: Some(OtlpExport {
            endpoint: Some(endpoint),
            protocol: OtlpProtocol::Grpc,
            batch_delay: None,
        }),
        sampler,
        head_sampling_ratio: (mode == TelemetryMode::Ratio).then_some(0.1),
    })?;
    Ok(Installed {
        telemetry: Some(telemetry),
        _receiver: receiver,
    })
}

/// Runs the traced rows once per mode, each in a child `bus-bench`, and returns their
/// reports as one markdown section.
pub async fn run(args: &Args) -> Result<String> {
    let exe = std::env::current_exe().context("finding bus-bench itself")?;
    let dir = tempfile::tempdir()?;
    // Outside the measured processes, as a collector would be.
    let receiver = bus_tests::OtlpReceiver::start().await?;
    let mut out = String::from(
        "\n## Tracing cost (workload 4)\n\nEach mode in its own process; compare each mode's \
         bus/raw ratios with those of `none`. Targets: always-on costs at most 10 % of \
         throughput, sampler off at most 2 %.\n",
    );
    for mode in [
        TelemetryMode::None,
        TelemetryMode::SamplerOff,
        TelemetryMode::Ratio,
        TelemetryMode::Always,
    ] {
        let report = dir.path().join(format!("{}.md", mode.flag()));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["--cluster", &args.cluster.to_string()])
            .args(["--telemetry", mode.flag()])
            .args(["--workloads", "publish,e2e"])
            .args(["--only", TRACED_ROWS])
            .args(["--otlp-endpoint", &receiver.grpc_endpoint()])
            .arg("--out")
            .arg(&report)
            .stdout(std::process::Stdio::null());
        if args.quick {
            cmd.arg("--quick");
        }
        if let Some(r) = args.rounds {
            cmd.args(["--rounds", &r.to_string()]);
        }
        eprintln!("bus-bench: tracing mode {}", mode.flag());
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
        out.push_str(&format!("\n### Telemetry: {}\n\n", mode.flag()));
        // The child's table, without its own title and targets.
        for line in text.lines().filter(|l| l.starts_with('|')) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}
