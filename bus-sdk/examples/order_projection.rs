//! An order projection: one member of the ordered group `order-projection`, which
//! handles each order's steps (`shop.order.step`, keyed by order id) one at a time in
//! the order they were published, different orders in parallel across the members.
//! Start several and stop or kill some: every order's steps still come in order. Each
//! handling prints `handled <order> <step> <start ns> <end ns>` (Unix time) on stdout.
//! Stops on SIGINT/SIGTERM, finishing what it has in hand and handing its partitions
//! over.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p bus-sdk --example order_projection`
//!
//! `ACK_WAIT_SECS` (default 30) sets the group's ack deadline: how long a killed
//! member's partitions wait before another member takes its unsettled events.

mod common;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_sdk::{Bus, HandlerError, Received};
use common::OrderStep;

/// Partitions of the group: fixed once the group exists.
const PARTITIONS: u32 = 16;

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = common::init_telemetry("order-projection")?;
    let ack_wait = match std::env::var("ACK_WAIT_SECS") {
        Ok(s) => Duration::from_secs(s.parse()?),
        Err(_) => Duration::from_secs(30),
    };
    let bus = Bus::builder(common::config())
        .source("/examples/projection")
        .connect()
        .await?;
    let member = bus
        .group("order-projection")
        .ack_wait(ack_wait)
        .on(|step: Received<OrderStep>| async move {
            let start = unix_ns();
            // Some work, so that a member killed mid-run has handlings in hand.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let end = unix_ns();
            let line = format!(
                "handled {} {} {start} {end}\n",
                step.data.order_id, step.data.step
            );
            // One write per line, so lines from parallel handlings never interleave.
            std::io::stdout().lock().write_all(line.as_bytes())?;
            Ok::<(), HandlerError>(())
        })
        .ordered_by_key(PARTITIONS)
        .start()
        .await?;
    println!("projection: ready");
    common::shutdown_signal().await;
    let clean = member.shutdown().await;
    bus.close().await;
    println!("projection: stopped (all handlers settled: {clean})");
    telemetry.shutdown().await;
    Ok(())
}
