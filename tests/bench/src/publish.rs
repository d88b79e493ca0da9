//! Workload 1: JetStream publish of a 1 KiB typed JSON event, one at a time (latency of
//! each call, closed loop: the next call starts when the previous PubAck arrived) and with
//! [`PUBLISH_WINDOW`](crate::cli::PUBLISH_WINDOW) PubAcks in flight (throughput; building
//! the events is inside the clock on both sides).

use anyhow::Result;
use tokio::time::Instant;

use crate::ab::compare;
use crate::cli::{PUBLISH_WINDOW, Plan, Side};
use crate::env::Env;
use crate::report::Row;
use crate::side::Conn;
use crate::stats::{Meter, Sample, histogram, nanos};

pub async fn run(env: &Env, plan: &Plan) -> Result<Vec<Row>> {
    let one_at_a_time = compare(
        plan,
        "publish.sync",
        "publish, wait for each PubAck",
        true,
        move |side| one_at_a_time(env, plan, side),
    )
    .await?;
    let windowed = compare(
        plan,
        "publish.window",
        format!("publish, {PUBLISH_WINDOW} in flight"),
        false,
        move |side| windowed(env, plan, side),
    )
    .await?;
    Ok([one_at_a_time, windowed].into_iter().flatten().collect())
}

async fn one_at_a_time(env: &Env, plan: &Plan, side: Side) -> Result<Sample> {
    env.fresh_streams().await?;
    let conn = Conn::open(env, side).await?;
    conn.warm_up(plan.warmup).await?;
    let mut latency = histogram()?;
    let meter = Meter::start()?;
    for seq in plan.warmup..plan.warmup + plan.sync_msgs {
        let start = Instant::now();
        conn.publish_one(seq).await?;
        latency.saturating_record(nanos(start.elapsed()));
    }
    let sample = meter.stop(plan.sync_msgs, Some(latency))?;
    conn.close().await;
    Ok(sample)
}

async fn windowed(env: &Env, plan: &Plan, side: Side) -> Result<Sample> {
    env.fresh_streams().await?;
    let conn = Conn::open(env, side).await?;
    conn.warm_up(plan.warmup).await?;
    let meter = Meter::start()?;
    conn.publish_window(plan.warmup, plan.window_msgs).await?;
    let sample = meter.stop(plan.window_msgs, None)?;
    conn.close().await;
    Ok(sample)
}
