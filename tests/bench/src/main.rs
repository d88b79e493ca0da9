//! `bus-bench`: the bus against raw async-nats on nats-server processes it starts itself.
//! See BENCHMARKS.md for what each workload does and how to read the table, and
//! `scripts/bench.sh` for the command.
//!
//! Code map: `cli` (arguments and the plan), `env` (servers, fresh streams, shared
//! settings), `side` over `raw_side` and `bus_side` (the same operations on either client),
//! `pacer` (open-loop schedule), `recorder` (what handlers saw), `stats` (clock, CPU,
//! histograms, medians), `ab` (interleaved rounds), one module per workload (`publish`,
//! `e2e`, `group`, `tracing_cost`, `webhooks` with `hook_receiver`, `push` with
//! `push_server`, `push_clients`, `bare_fanout` and `push_report`), `procfs` (CPU and
//! memory of other processes, the open-files limit), and `report` (the markdown).

mod ab;
mod bare_fanout;
mod bus_side;
mod cli;
mod e2e;
mod env;
mod group;
mod hook_receiver;
mod ordered;
mod pacer;
mod payload;
mod procfs;
mod publish;
mod push;
mod push_clients;
mod push_report;
mod push_server;
mod raw_side;
mod recorder;
mod report;
mod side;
mod stats;
mod tracing_cost;
mod webhooks;

use anyhow::{Context as _, Result};
use bus_tests::NatsCluster;
use clap::Parser;
use tokio::time::Instant;

use crate::cli::{Args, Plan, Workload};
use crate::env::Env;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.serve_otlp {
        return tracing_cost::serve_receiver().await;
    }
    if let Some(url) = &args.serve_bare_push {
        return bare_fanout::serve(url, args.bare_nagle).await;
    }
    let plan = Plan::new(&args);
    let telemetry = tracing_cost::install(
        args.telemetry,
        args.otlp_endpoint.clone(),
        args.otlp_grpc_endpoint.clone(),
    )
    .await?;
    let started = Instant::now();
    eprintln!(
        "bus-bench: starting {} nats-server node(s) ({})",
        plan.nodes,
        std::env::var(bus_tests::BINARY_ENV).unwrap_or_else(|_| "nats-server on PATH".into())
    );
    let cluster = NatsCluster::start(plan.nodes)
        .await
        .context("starting nats-server")?;
    let env = Env::new(&cluster).await?;

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut sections = String::new();
    for workload in dedup(&args.workloads) {
        let mut more = match workload {
            Workload::Publish => publish::run(&env, &plan).await?,
            Workload::E2e => e2e::run(&env, &plan).await?,
            Workload::Group => group::run(&env, &plan).await?,
            Workload::Webhooks => webhooks::run(&env, &plan).await?,
            Workload::Ordered => ordered::run(&env, &plan).await?,
            Workload::Push => {
                sections.push_str(&push::run(&env, &plan).await?);
                Vec::new()
            }
            Workload::Tracing => {
                sections.push_str(&tracing_cost::run(&args).await?);
                Vec::new()
            }
        };
        rows.append(&mut more);
    }
    notes.push(format!(
        "Run time {:.0} s.",
        started.elapsed().as_secs_f64()
    ));

    let mut markdown = report::markdown(&plan, &rows, &notes);
    markdown.push_str(&sections);
    print!("{markdown}");
    if let Some(path) = &args.out {
        std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    drop(cluster);
    telemetry.shutdown().await;
    Ok(())
}

/// The workloads in the order given, each once.
fn dedup(workloads: &[Workload]) -> Vec<Workload> {
    let mut out: Vec<Workload> = Vec::new();
    for w in workloads {
        if !out.contains(w) {
            out.push(*w);
        }
    }
    out
}
