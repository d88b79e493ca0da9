//! A billing worker: one member of the consumer group `billing`. Start several: they
//! share the orders, and when one dies the others take over its unacknowledged ones.
//! Every handled order is billed by publishing `shop.order.billed`. Stops on SIGINT/SIGTERM,
//! finishing the orders in hand.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p bus-sdk --example billing_worker`

mod common;

use std::time::Duration;

use bus_sdk::{Bus, HandlerError, Received};
use common::{OrderBilled, OrderCreated};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = common::init_telemetry("billing-worker")?;
    let bus = Bus::builder(common::config())
        .source("/examples/billing")
        .connect()
        .await?;
    let publisher = bus.clone();
    let member = bus
        .group("billing")
        .max_deliver(5)
        .backoff([Duration::from_secs(1), Duration::from_secs(5)])
        .on(move |order: Received<OrderCreated>| {
            let bus = publisher.clone();
            async move {
                println!(
                    "billing: order {} for {} ({} cents), attempt {}",
                    order.data.order_id,
                    order.data.customer,
                    order.data.total_cents,
                    order.meta.attempt
                );
                bus.publish(&OrderBilled {
                    order_id: order.data.order_id,
                })
                .await?;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    println!("billing: ready");
    common::shutdown_signal().await;
    let clean = member.shutdown().await;
    bus.close().await;
    println!("billing: stopped (all handlers settled: {clean})");
    telemetry.shutdown().await;
    Ok(())
}
