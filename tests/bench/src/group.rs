//! Workload 3: group throughput. A backlog of events is published first (raw, windowed,
//! outside the clock); then 1, 2 or 4 members start on one connection and the clock runs
//! until every event was handled. Handlers are no-ops, or await a 200 µs sleep.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::ab::compare;
use crate::cli::{GROUP_MEMBERS, PUBLISH_WINDOW, Plan, SLOW_HANDLER, Side};
use crate::env::Env;
use crate::raw_side::RawConn;
use crate::recorder::Recorder;
use crate::report::Row;
use crate::side::{Conn, Work};
use crate::stats::{Meter, Sample};

/// Longest a backlog may take to be consumed.
const CONSUME_DEADLINE: Duration = Duration::from_secs(300);

/// The handlers the group workloads (`group`, `ordered`) run: (row tag, name, work,
/// events per round).
pub fn handler_kinds(plan: &Plan) -> [(&'static str, &'static str, Work, u64); 2] {
    [
        ("noop", "no-op", Work::Noop, plan.group_noop_msgs),
        (
            "slow",
            "200 µs",
            Work::Sleep(SLOW_HANDLER),
            plan.group_slow_msgs,
        ),
    ]
}

pub async fn run(env: &Env, plan: &Plan) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (tag, name, work, n) in handler_kinds(plan) {
        for members in GROUP_MEMBERS {
            let row = compare(
                plan,
                format!("group.{tag}.{members}"),
                format!(
                    "group, {name} handler, {members} member{} × {}",
                    if members == 1 { "" } else { "s" },
                    plan.group_concurrency
                ),
                false,
                move |side| one(env, plan, side, work, n, members),
            )
            .await?;
            rows.extend(row);
        }
    }
    Ok(rows)
}

async fn one(
    env: &Env,
    plan: &Plan,
    side: Side,
    work: Work,
    n: u64,
    members: usize,
) -> Result<Sample> {
    env.fresh_streams().await?;
    let loader = RawConn::connect(env).await?;
    loader.publish_window(0, n, PUBLISH_WINDOW).await?;
    loader.close().await;

    let conn = Conn::open(env, side).await?;
    let recorder = Arc::new(Recorder::new(n, 0));
    let meter = Meter::start()?;
    let running = conn
        .start_members(members, plan.group_concurrency, work, &recorder)
        .await?;
    let end = recorder.wait(CONSUME_DEADLINE).await?;
    let mut sample = meter.stop_at(end, n, None)?;
    sample.stall = recorder.stall();
    if let Some(anomalies) = recorder.anomalies() {
        eprintln!("bus-bench: warning: {} side: {anomalies}", side.name());
    }
    running.stop().await;
    conn.close().await;
    Ok(sample)
}
