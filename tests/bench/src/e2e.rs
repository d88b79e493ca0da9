//! Workload 2: end-to-end latency, publish to group handler, under fixed-rate open-loop
//! load (see `pacer.rs`): at 1k/s, 10k/s and half the measured maximum. The maximum comes
//! from a saturated run of the same pipeline (every event due at once), whose throughput is
//! a row of its own. Publisher and group share one connection per side; one member with
//! `--concurrency` handler slots; a no-op handler that notes when the event arrived.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::ab::compare;
use crate::cli::{E2E_RATES, Plan, Side};
use crate::env::Env;
use crate::pacer::Schedule;
use crate::recorder::Recorder;
use crate::report::Row;
use crate::side::{Conn, Work};
use crate::stats::{Meter, Sample};

/// How long handlers may take to catch up once the last event was published.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// How far ahead of the first event the schedule starts (room for the pacer to start).
const SCHEDULE_LEAD: Duration = Duration::from_millis(5);

pub async fn run(env: &Env, plan: &Plan) -> Result<Vec<Row>> {
    let n = plan.e2e_max_msgs;
    let max = compare(
        plan,
        "e2e.max",
        format!("end to end, saturated ({n} events)"),
        false,
        move |side| one(env, plan, side, None, n),
    )
    .await?;
    let mut rates = E2E_RATES.to_vec();
    // Half the raw side's maximum (the bus's when raw is not run), to 100 events/s.
    if let Some(summary) = max.as_ref().and_then(|m| m.raw.or(m.bus)) {
        rates.push(((summary.rate / 2.0) / 100.0).round().max(1.0) * 100.0);
    }
    let mut rows: Vec<Row> = max.into_iter().collect();
    for rate in rates {
        let n = (rate * plan.e2e_duration.as_secs_f64()).round() as u64;
        let row = compare(
            plan,
            format!("e2e.{rate:.0}"),
            format!("end to end at {rate:.0}/s"),
            true,
            move |side| one(env, plan, side, Some(rate), n),
        )
        .await?;
        rows.extend(row);
    }
    Ok(rows)
}

async fn one(env: &Env, plan: &Plan, side: Side, rate: Option<f64>, n: u64) -> Result<Sample> {
    env.fresh_streams().await?;
    let conn = Conn::open(env, side).await?;
    let warmup = if rate.is_some() { plan.e2e_warmup } else { 0 };
    let recorder = Arc::new(Recorder::new(n, warmup));
    let members = conn
        .start_members(1, plan.e2e_concurrency, Work::Noop, &recorder)
        .await?;
    let meter = Meter::start()?;
    let schedule = Schedule {
        origin: meter.started() + SCHEDULE_LEAD,
        rate,
    };
    recorder.set_schedule(schedule);
    conn.publish_open_loop(schedule, n).await?;
    let end = recorder.wait(DRAIN_DEADLINE).await?;
    let latency = match rate {
        Some(_) => Some(recorder.histogram()?),
        None => None,
    };
    let mut sample = meter.stop_at(end, n, latency)?;
    sample.stall = recorder.stall();
    if let Some(anomalies) = recorder.anomalies() {
        eprintln!("bus-bench: warning: {} side: {anomalies}", side.name());
    }
    members.stop().await;
    conn.close().await;
    Ok(sample)
}
