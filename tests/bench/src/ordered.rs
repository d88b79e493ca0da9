//! Workload: ordered groups. 1, 2 or 4 members start on one connection and settle (each
//! sees the others, then two assignment rounds); then keyed events (1,000 keys, round
//! robin) are published (SDK, windowed) and the clock runs from the first publish until
//! every event was handled. The two sides are
//! both the bus: "raw" is the unordered group with the same members and handler slots,
//! "bus" the same group `ordered_by_key(16)`. Handlers are no-ops, or await a 200 µs
//! sleep. The ordered side's clock includes its sequencer copying each event into its
//! partition.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bus_sdk::{Bus, EventPayload, Group, HandlerError, Received};
use serde::{Deserialize, Serialize};

use crate::ab::compare;
use crate::bus_side;
use crate::cli::{GROUP_MEMBERS, Plan, Side};
use crate::env::{Env, GROUP};
use crate::recorder::Recorder;
use crate::report::Row;
use crate::side::Work;
use crate::stats::{Meter, Sample};

/// Keys of the backlog, round robin.
pub const KEYS: u64 = 1000;
/// Partitions of the ordered side.
pub const PARTITIONS: u32 = 16;
/// Time members get to share the partitions out before the events come (two of their
/// assignment rounds).
const SETTLE: Duration = Duration::from_secs(2);
/// Longest a backlog may take to be consumed.
const CONSUME_DEADLINE: Duration = Duration::from_secs(300);

/// A keyed benchmark event (small: the cost measured is the ordering's, not the bytes').
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyedEvent {
    seq: u64,
}

impl EventPayload for KeyedEvent {
    const EVENT_TYPE: &'static str = "bench.ordered.step";

    fn partition_key(&self) -> Option<String> {
        Some(format!("key-{}", self.seq % KEYS))
    }
}

pub async fn run(env: &Env, plan: &Plan) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (tag, name, work, n) in crate::group::handler_kinds(plan) {
        for members in GROUP_MEMBERS {
            let row = compare(
                plan,
                format!("ordered.{tag}.{members}"),
                format!(
                    "ordered (raw: unordered), {name}, {members} × {}",
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
    env.fresh_ordered_stream().await?;
    let bus = bus_side::connect(env).await?;
    let events = (0..n)
        .map(|seq| Ok(bus.event(&KeyedEvent { seq })?.build()))
        .collect::<Result<Vec<_>>>()?;
    let recorder = Arc::new(Recorder::new(n, 0));
    let mut running: Vec<Group> = Vec::with_capacity(members);
    for _ in 0..members {
        running.push(start_member(&bus, side, plan.group_concurrency, work, &recorder).await?);
    }
    settle(&bus, members).await?;
    // The clock runs from the first publish: members that share partitions out as they
    // join would otherwise have their start-up counted against a backlog of 2 s.
    let meter = Meter::start()?;
    for result in bus.publish_batch(&events).await {
        result?;
    }
    let end = recorder.wait(CONSUME_DEADLINE).await?;
    let mut sample = meter.stop_at(end, n, None)?;
    sample.stall = recorder.stall();
    if let Some(anomalies) = recorder.anomalies() {
        eprintln!("bus-bench: warning: {} side: {anomalies}", side.name());
    }
    for member in running {
        member.shutdown().await;
    }
    bus.close().await;
    Ok(sample)
}

/// Waits until every member sees the others and has had two rounds to take its
/// partitions (both sides, so that they start alike).
async fn settle(bus: &Bus, members: usize) -> Result<()> {
    let group = bus_sdk::GroupName::new(GROUP)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bus.members(Some(&group)).await?.len() < members {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "members did not show up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(SETTLE).await;
    Ok(())
}

async fn start_member(
    bus: &Bus,
    side: Side,
    concurrency: usize,
    work: Work,
    recorder: &Arc<Recorder>,
) -> Result<Group> {
    let recorder = recorder.clone();
    let builder =
        bus.group(GROUP)
            .concurrency(concurrency)
            .on(move |event: Received<KeyedEvent>| {
                let recorder = recorder.clone();
                async move {
                    work.run().await;
                    recorder.record(event.data.seq);
                    Ok::<(), HandlerError>(())
                }
            });
    let builder = match side {
        Side::Raw => builder,
        Side::Bus => builder.ordered_by_key(PARTITIONS),
    };
    Ok(builder.start().await?)
}
