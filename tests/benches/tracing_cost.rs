//! Workload 4: the cost of tracing. NOT MEASURED YET: the bus's tracing feature is being
//! written; `--workloads tracing` only says so.
//!
//! TODO(tracing): once bus-sdk can propagate trace context and emit spans, measure the bus
//! against itself rather than against raw: side A = the bus with tracing off, side B = the
//! bus with tracing on and a subscriber that exports to nowhere (a no-op exporter, so the
//! number is the SDK's own cost, not an exporter's). Reuse `e2e::one` at 10k/s and
//! `publish::windowed` through `ab::compare`, give `side::Conn` a `BusTraced` variant
//! opened with the tracing option, and add targets for the overhead to `report.rs`.

use anyhow::Result;

use crate::cli::Plan;
use crate::env::Env;
use crate::report::Row;

pub async fn run(_env: &Env, _plan: &Plan) -> Result<Vec<Row>> {
    eprintln!("bus-bench: tracing: not measured yet (see tests/benches/tracing_cost.rs)");
    Ok(Vec::new())
}
