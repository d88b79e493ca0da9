//! Command line of `bus-bench` and the plan it turns into: what runs, how often, how much.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Events awaiting their PubAck at once in every windowed or open-loop publish, both sides.
pub const PUBLISH_WINDOW: usize = 256;
/// Handler slots of the end-to-end group (the bus's `DEFAULT_CONCURRENCY`).
pub const DEFAULT_E2E_CONCURRENCY: usize = bus_sdk::DEFAULT_CONCURRENCY;
/// Handler slots per member in the group-throughput workload: small enough that the
/// 200 µs handler, not the box, limits one member, so that adding members can show scaling.
pub const DEFAULT_GROUP_CONCURRENCY: usize = 4;
/// What the slow handler of the group-throughput workload awaits.
pub const SLOW_HANDLER: Duration = Duration::from_micros(200);
/// End-to-end rates besides half the measured maximum, in events per second.
pub const E2E_RATES: [f64; 2] = [1_000.0, 10_000.0];
/// Deliveries in flight in the webhook workload, both sides.
pub const WEBHOOK_CONCURRENCY: usize = 16;
/// Member counts of the group-throughput workload.
pub const GROUP_MEMBERS: [usize; 3] = [1, 2, 4];
/// SSE clients of the push workload (the targets are for 1,000).
pub const PUSH_CLIENTS: usize = 1_000;

/// Benchmarks the bus against raw async-nats on nats-server processes it starts itself
/// (127.0.0.1 only). Prints a markdown table on stdout, progress on stderr.
#[derive(Debug, Parser)]
#[command(name = "bus-bench", version)]
pub struct Args {
    /// nats-server nodes: 1 (streams R1) or 3 (a cluster, streams R3).
    #[arg(long, default_value_t = 1, value_parser = parse_cluster)]
    pub cluster: usize,
    /// Small counts (about a minute in all): a smoke run, not numbers to quote.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of each raw/bus pair, interleaved raw, bus, raw, bus... (default 3; 2 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: Option<u32>,
    /// Workloads to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["publish", "e2e", "group", "webhooks"])]
    pub workloads: Vec<Workload>,
    /// Sides to run, comma-separated (one side alone is for profiling: no ratios).
    #[arg(long, value_delimiter = ',', default_values = ["raw", "bus"])]
    pub sides: Vec<Side>,
    /// Handler slots of the end-to-end workload's group (raw: messages per pull batch
    /// and handlers at once).
    #[arg(long, default_value_t = DEFAULT_E2E_CONCURRENCY)]
    pub concurrency: usize,
    /// Handler slots per member in the group-throughput workload.
    #[arg(long, default_value_t = DEFAULT_GROUP_CONCURRENCY)]
    pub group_concurrency: usize,
    /// Run only these rows, comma-separated keys or key prefixes ending before a dot (keys:
    /// publish.sync, publish.window, e2e.max, e2e.<rate>, group.noop.<members>,
    /// group.slow.<members>); for profiling and reruns.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Tracing workload: run the sequence of telemetry modes this many times (each mode a
    /// process of its own, modes alternating); the cost table takes the median of the
    /// runs' costs, each against the same run's `none`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub mode_runs: u32,
    /// Tracing workload: the telemetry modes to run, comma-separated (`none` runs in any
    /// case: every cost is against it); with `--only`, the traced rows to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values = ["none", "sampler-off", "ratio", "always", "always-raw-context"]
    )]
    pub modes: Vec<crate::tracing_cost::TelemetryMode>,
    /// Telemetry of this process (the tracing workload sets it for its child runs).
    #[arg(long, value_enum, default_value = "none")]
    pub telemetry: crate::tracing_cost::TelemetryMode,
    /// OTLP/HTTP endpoint (base URL) to export to; without it, a receiver starts in this
    /// process (the tracing workload runs one in the parent and passes it to its children,
    /// so that receiving the spans is not counted as the bus's cost).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// OTLP/gRPC endpoint for the `app-*` telemetry modes (the service's own exporter);
    /// as `--otlp-endpoint`.
    #[arg(long)]
    pub otlp_grpc_endpoint: Option<String>,
    /// Run no benchmark: serve a span-counting OTLP receiver, print its endpoints, and on
    /// Ctrl-C print how many spans it received (for profiling a `--telemetry always` run
    /// with its collector in another process).
    #[arg(long)]
    pub serve_otlp: bool,
    /// Push workload: SSE clients (default 1000; 200 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub push_clients: Option<u64>,
    /// Push workload: the rates to try in turn, events/s, comma-separated; the ladder
    /// stops after the first one not kept up.
    #[arg(long, value_delimiter = ',', default_values = ["100", "250", "500", "750", "1000", "1500", "2000"])]
    pub push_rates: Vec<f64>,
    /// Push workload: how long each rate publishes, in seconds (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub push_step: Option<u64>,
    /// Push workload: clients of the latency row (1,000 events/s after the ladder, on fresh
    /// connections); 0 leaves the row out.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub push_latency_clients: u64,
    /// Push workload: leave Nagle's algorithm on in the bare server's connections (as
    /// bus-node leaves it), instead of `TCP_NODELAY`.
    #[arg(long)]
    pub bare_nagle: bool,
    /// Run no benchmark: serve the push workload's bare SSE fan-out from this NATS URL
    /// until stdin closes (the workload starts it as a child process).
    #[arg(long, hide = true)]
    pub serve_bare_push: Option<String>,
}

fn parse_cluster(s: &str) -> Result<usize, String> {
    match s {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!("{s:?}: use 1 (R1) or 3 (R3)")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// JetStream publish of a 1 KiB typed event: one at a time, and 256 in flight.
    Publish,
    /// Publish to group handler latency under fixed-rate load.
    E2e,
    /// Consuming a backlog with 1, 2 and 4 members.
    Group,
    /// Cost of tracing: workloads 1 and 2 under each telemetry mode, one process each.
    Tracing,
    /// Webhook deliveries by a bus-node to a local receiver, against a bare reqwest loop.
    Webhooks,
    /// SSE fan-out by a bus-node to 1,000 clients at rising rates, against a bare hyper
    /// fan-out from a core NATS subscription; memory per idle connection.
    Push,
    /// An ordered group (1,000 keys, 16 partitions) consuming a backlog with 1, 2 and 4
    /// members, against the unordered group with the same members and slots.
    Ordered,
}

/// Which client does the work: plain async-nats, or the bus SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    Raw,
    Bus,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::Bus => "bus",
        }
    }
}

/// Counts and durations of one run of the benchmark.
#[derive(Debug, Clone)]
pub struct Plan {
    pub nodes: usize,
    pub quick: bool,
    pub rounds: u32,
    pub sides: Vec<Side>,
    /// Untimed publishes on a fresh connection before a publish workload's clock starts.
    pub warmup: u64,
    pub sync_msgs: u64,
    pub window_msgs: u64,
    /// Events of the saturated end-to-end run that finds the maximum rate.
    pub e2e_max_msgs: u64,
    /// How long each fixed-rate end-to-end run publishes.
    pub e2e_duration: Duration,
    /// Events at the start of an end-to-end run left out of its latency histogram.
    pub e2e_warmup: u64,
    pub e2e_concurrency: usize,
    pub group_noop_msgs: u64,
    pub group_slow_msgs: u64,
    pub group_concurrency: usize,
    /// Events of the webhook throughput and isolation rows.
    pub webhook_msgs: u64,
    /// How long the fixed-rate webhook row publishes.
    pub webhook_duration: Duration,
    /// SSE clients of the push workload.
    pub push_clients: usize,
    /// The push workload's rates, in the order tried.
    pub push_rates: Vec<f64>,
    /// How long each push rate publishes.
    pub push_step: Duration,
    /// Clients of the push latency row (0: none).
    pub push_latency_clients: usize,
    /// Whether the bare push server leaves Nagle's algorithm on.
    pub bare_nagle: bool,
    /// Row key prefixes to run; empty: all.
    pub only: Vec<String>,
}

impl Plan {
    /// Whether the row `key` is to run.
    pub fn wants(&self, key: &str) -> bool {
        self.only.is_empty()
            || self.only.iter().any(|p| {
                key == p || (key.starts_with(p.as_str()) && key[p.len()..].starts_with('.'))
            })
    }

    pub fn new(args: &Args) -> Self {
        let quick = args.quick;
        let pick = |full: u64, small: u64| if quick { small } else { full };
        Plan {
            nodes: args.cluster,
            quick,
            rounds: args.rounds.unwrap_or(if quick { 2 } else { 3 }),
            sides: dedup(&args.sides),
            warmup: pick(200, 50),
            sync_msgs: pick(3_000, 500),
            window_msgs: pick(30_000, 5_000),
            e2e_max_msgs: pick(30_000, 5_000),
            e2e_duration: Duration::from_secs(pick(4, 1)),
            e2e_warmup: pick(500, 100),
            e2e_concurrency: args.concurrency.max(1),
            group_noop_msgs: pick(20_000, 3_000),
            group_slow_msgs: pick(10_000, 1_500),
            group_concurrency: args.group_concurrency.max(1),
            webhook_msgs: pick(10_000, 1_500),
            webhook_duration: Duration::from_secs(pick(4, 1)),
            push_clients: args
                .push_clients
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(if quick { 200 } else { PUSH_CLIENTS }),
            push_rates: args
                .push_rates
                .iter()
                .copied()
                .filter(|r| r.is_finite() && *r > 0.0)
                .collect(),
            push_step: Duration::from_secs(args.push_step.unwrap_or(pick(3, 1))),
            push_latency_clients: usize::try_from(args.push_latency_clients).unwrap_or(0),
            bare_nagle: args.bare_nagle,
            only: args.only.clone(),
        }
    }
}

fn dedup(sides: &[Side]) -> Vec<Side> {
    let mut out = Vec::new();
    for side in [Side::Raw, Side::Bus] {
        if sides.contains(&side) {
            out.push(side);
        }
    }
    out
}
