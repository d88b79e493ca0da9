//! The push workload: SSE fan-out. For each side, one server process (`push_server`):
//! a bus-node (bus) or the bare fan-out (`bare_fanout`, the raw column), on fresh
//! streams; `plan.push_clients` SSE clients in this process (`push_clients`) on
//! `GET /v1/events/stream?types=bench.push.%3E`; events of type `bench.push.tick`
//! published with the SDK (JetStream, [`PUBLISH_WINDOW`] in flight), open loop at rising
//! rates, each for `plan.push_step`, until a rate is not kept up (deliveries/s under
//! [`KEEP_UP`] of rate × clients, or a client cut off). Each event's data is its stamp,
//! `{"step":K,"pub_ns":T}`: T is its scheduled publish time in Unix nanoseconds, so
//! latency runs from when it was due (no coordinated omission) to when its chunk came.
//!
//! After the ladder, the latency row: `plan.push_latency_clients` fresh clients at
//! [`LATENCY_RATE`], a load the box can carry, for the latency target.
//!
//! Memory: the server's resident memory before the clients connect, once every client
//! has its hello (idle: nothing published yet), and after the ladder.

use std::time::Duration;

use anyhow::Result;
use bus_core::{Event, EventType};
use bus_sdk::Bus;
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{PUBLISH_WINDOW, Plan, Side};
use crate::env::Env;
use crate::hook_receiver::unix_nanos;
use crate::pacer::{Schedule, drive};
use crate::payload::SOURCE;
use crate::procfs;
use crate::push_clients::Fleet;
use crate::push_server::Server;

/// What the clients ask for.
pub const PATTERN: &str = "bench.push.>";
/// The type of every event.
pub const EVENT_TYPE: &str = "bench.push.tick";
/// The clients' request: `types=bench.push.>`, URL-encoded.
const QUERY: &str = "/v1/events/stream?types=bench.push.%3E";
/// Share of rate × clients a rate must deliver per second to count as kept up.
pub const KEEP_UP: f64 = 0.95;
/// Longest wait, after a step's last publish, for its deliveries.
const DRAIN: Duration = Duration::from_secs(5);
/// A step's deliveries are over when none came for this long.
const NO_PROGRESS: Duration = Duration::from_secs(1);
/// Resident memory is read until two reads this far apart agree (at most 10 reads).
const SETTLE: Duration = Duration::from_millis(200);
/// The rate of the latency row (the latency target is stated at it).
pub const LATENCY_RATE: f64 = 1_000.0;
/// The server is quiet when it used at most this much CPU in [`SETTLE`]...
const QUIET_CPU: Duration = Duration::from_millis(20);
/// ...or after this long.
const QUIET_DEADLINE: Duration = Duration::from_secs(10);

/// The data of every event.
#[derive(Debug, Serialize)]
struct Stamp {
    step: usize,
    pub_ns: u64,
}

/// One rate of one side.
#[derive(Debug)]
pub struct StepRow {
    pub side: Side,
    pub rate: f64,
    /// Clients connected when the step began.
    pub clients: usize,
    pub events: u64,
    /// Deliveries received (one per client per event).
    pub delivered: u64,
    /// Deliveries over the time from the first scheduled publish to the last arrival.
    pub per_s: f64,
    /// Latency quantiles in milliseconds: p50, p99, p99.9, max.
    pub latency_ms: Option<[f64; 4]>,
    /// Clients cut off as slow during the step.
    pub cut: usize,
    /// Clients whose stream failed otherwise.
    pub failed: usize,
    /// Server CPU per delivery, µs.
    pub server_us: f64,
    /// Share of one core, over the step: server, this process, nats-server.
    pub cpu_share: [f64; 3],
    pub kept_up: bool,
    /// A step of the ladder (else: the latency row).
    pub ladder: bool,
}

/// The server's resident memory, in KiB.
#[derive(Debug)]
pub struct MemoryRow {
    pub side: Side,
    pub clients: usize,
    pub before: u64,
    pub idle: u64,
    pub after: u64,
}

impl MemoryRow {
    /// Per idle connection, KiB.
    pub fn per_client(&self) -> f64 {
        self.idle.saturating_sub(self.before) as f64 / self.clients.max(1) as f64
    }
}

/// Runs the workload; gives its section of the report.
pub async fn run(env: &Env, plan: &Plan) -> Result<String> {
    // Clients, the server's side of each, and some to spare.
    procfs::ensure_open_files(2 * plan.push_clients as u64 + 1024)?;
    let mut steps = Vec::new();
    let mut memory = Vec::new();
    for &side in &plan.sides {
        env.fresh_streams().await?;
        let server = Server::start(env, plan, side).await?;
        let bus = crate::bus_side::connect(env).await?;
        let result = ladder(plan, side, &server, &bus).await;
        bus.close().await;
        server.stop().await;
        let (mem, mut rows) = result?;
        memory.push(mem);
        steps.append(&mut rows);
    }
    Ok(crate::push_report::markdown(plan, &steps, &memory))
}

/// Waits until the process `pid` is (about) idle.
async fn quiet(pid: u32) {
    let until = Instant::now() + QUIET_DEADLINE;
    let mut last = procfs::cpu(Some(pid));
    while Instant::now() < until {
        tokio::time::sleep(SETTLE).await;
        let now = procfs::cpu(Some(pid));
        if now.saturating_sub(last) <= QUIET_CPU {
            return;
        }
        last = now;
    }
}

/// The resident memory of `pid` once it stops moving.
async fn settled_rss(pid: u32) -> Result<u64> {
    let mut last = procfs::rss_kib(pid)?;
    for _ in 0..10 {
        tokio::time::sleep(SETTLE).await;
        let now = procfs::rss_kib(pid)?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

async fn ladder(
    plan: &Plan,
    side: Side,
    server: &Server,
    bus: &Bus,
) -> Result<(MemoryRow, Vec<StepRow>)> {
    let pid = server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the server has no process id"))?;
    let before = settled_rss(pid).await?;
    let n = plan.push_clients;
    let started = Instant::now();
    let fleet = Fleet::connect(&server.url(), QUERY, n).await?;
    let idle = settled_rss(pid).await?;
    eprintln!(
        "bus-bench: push {}: {n} clients in {:.1} s; RSS {before} KiB before, {idle} KiB idle \
         ({:.1} KiB per client)",
        name(side),
        started.elapsed().as_secs_f64(),
        idle.saturating_sub(before) as f64 / n as f64,
    );
    let nats = procfs::child_named("nats-server");
    let mut rows = Vec::new();
    for (k, &rate) in plan.push_rates.iter().enumerate() {
        let row = step(plan, side, &fleet, bus, k, rate, pid, nats).await?;
        eprintln!(
            "bus-bench: push {} {rate:>6.0}/s × {}: {:>9.0} deliveries/s ({:.1} %), p50 {} ms, \
             p99 {} ms, cut {}, server {:.2} µs/delivery, CPU % server/bench/nats {:.0}/{:.0}/{:.0}",
            name(side),
            row.clients,
            row.per_s,
            100.0 * row.per_s / (rate * row.clients.max(1) as f64),
            row.latency_ms
                .map_or("—".into(), |l| format!("{:.1}", l[0])),
            row.latency_ms
                .map_or("—".into(), |l| format!("{:.1}", l[1])),
            row.cut,
            row.server_us,
            row.cpu_share[0],
            row.cpu_share[1],
            row.cpu_share[2],
        );
        let stop = !row.kept_up || fleet.alive() == 0;
        rows.push(row);
        if stop {
            break;
        }
    }
    let after = procfs::rss_kib(pid)?;
    drop(fleet);
    let latency_clients = plan.push_latency_clients;
    if latency_clients > 0 {
        // The ladder's backlog and closed connections handled first.
        quiet(pid).await;
        let fleet = Fleet::connect(&server.url(), QUERY, latency_clients).await?;
        let k = plan.push_rates.len();
        let mut row = step(plan, side, &fleet, bus, k, LATENCY_RATE, pid, nats).await?;
        row.ladder = false;
        eprintln!(
            "bus-bench: push {} latency {LATENCY_RATE:.0}/s × {latency_clients}: p50 {} ms, p99 {} ms",
            name(side),
            row.latency_ms
                .map_or("—".into(), |l| format!("{:.1}", l[0])),
            row.latency_ms
                .map_or("—".into(), |l| format!("{:.1}", l[1])),
        );
        rows.push(row);
    }
    let memory = MemoryRow {
        side,
        clients: n,
        before,
        idle,
        after,
    };
    Ok((memory, rows))
}

pub fn name(side: Side) -> &'static str {
    match side {
        Side::Raw => "bare",
        Side::Bus => "bus",
    }
}

fn event(step: usize, pub_ns: u64) -> Result<Event> {
    Ok(Event::builder(EventType::new(EVENT_TYPE)?, SOURCE)
        .data_json(&Stamp { step, pub_ns })?
        .build())
}

/// The size of one event's SSE message as the node writes it (about: the id's sequence
/// and the event id's length vary little).
pub fn sse_bytes() -> usize {
    let json = event(1, unix_nanos())
        .map(|e| bus_core::structured::to_json(&e).len())
        .unwrap_or(0);
    // "id: BUS_EVENTS.<19 digits>:<seq>\nevent: <type>\ndata: <json>\n\n"
    "id: BUS_EVENTS.0000000000000000000:1000\n".len()
        + "event: \n".len()
        + EVENT_TYPE.len()
        + "data: \n\n".len()
        + json
}

#[allow(clippy::too_many_arguments)]
async fn step(
    plan: &Plan,
    side: Side,
    fleet: &Fleet,
    bus: &Bus,
    k: usize,
    rate: f64,
    pid: u32,
    nats: Option<u32>,
) -> Result<StepRow> {
    let clients = fleet.alive();
    let (cut0, failed0) = (fleet.cut_slow(), fleet.failed());
    let events = (rate * plan.push_step.as_secs_f64()).round().max(1.0) as u64;
    let cpu0 = (
        procfs::cpu(Some(pid)),
        crate::stats::cpu_time()?,
        procfs::cpu(nats),
    );
    let origin = Instant::now();
    let unix0 = unix_nanos();
    drive(
        Schedule {
            origin,
            rate: Some(rate),
        },
        events,
        PUBLISH_WINDOW,
        |seq| async move {
            let due = unix0 + (seq as f64 * 1e9 / rate) as u64;
            bus.publish_event(&event(k, due)?).await?;
            Ok(())
        },
    )
    .await?;
    let published = Instant::now();
    let expected = events * clients as u64;
    let mut progress = (fleet.delivered(k), Instant::now());
    loop {
        let got = fleet.delivered(k);
        if got >= expected || published.elapsed() > DRAIN {
            break;
        }
        if got != progress.0 {
            progress = (got, Instant::now());
        } else if progress.1.elapsed() > NO_PROGRESS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = origin.elapsed().as_secs_f64();
    let cpu = (
        procfs::cpu(Some(pid)).saturating_sub(cpu0.0),
        crate::stats::cpu_time()?.saturating_sub(cpu0.1),
        procfs::cpu(nats).saturating_sub(cpu0.2),
    );
    let stats = fleet.take(k)?;
    let span = stats.last_ns.saturating_sub(unix0) as f64 / 1e9;
    let per_s = stats.delivered as f64 / span.max(1e-9);
    let latency_ms = (stats.delivered > 0).then(|| {
        let h = &stats.latency;
        let ms = |v: u64| v as f64 / 1e6;
        [
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
        ]
    });
    let cut = fleet.cut_slow().saturating_sub(cut0);
    let failed = fleet.failed().saturating_sub(failed0);
    let share = |d: Duration| 100.0 * d.as_secs_f64() / wall.max(1e-9);
    Ok(StepRow {
        side,
        rate,
        clients,
        events,
        delivered: stats.delivered,
        per_s,
        latency_ms,
        cut,
        failed,
        server_us: cpu.0.as_secs_f64() * 1e6 / stats.delivered.max(1) as f64,
        cpu_share: [share(cpu.0), share(cpu.1), share(cpu.2)],
        kept_up: cut == 0 && failed == 0 && per_s >= KEEP_UP * rate * clients as f64,
        ladder: true,
    })
}
