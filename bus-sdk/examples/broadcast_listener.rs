//! A dashboard: a broadcast subscription, so every running copy sees every order and bill.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p bus-sdk --example broadcast_listener`

mod common;

use bus_sdk::{Bus, HandlerError, Received};
use common::{OrderBilled, OrderCreated};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = common::init_telemetry("dashboard")?;
    let bus = Bus::connect(common::config()).await?;
    let sub = bus
        .broadcast()
        .on(|ev: Received<OrderCreated>| async move {
            println!(
                "dashboard: order {} created (#{})",
                ev.data.order_id, ev.meta.stream_seq
            );
            Ok::<(), HandlerError>(())
        })
        .on(|ev: Received<OrderBilled>| async move {
            println!(
                "dashboard: order {} billed (#{})",
                ev.data.order_id, ev.meta.stream_seq
            );
            Ok::<(), HandlerError>(())
        })
        .start()
        .await?;
    println!("dashboard: ready");
    common::shutdown_signal().await;
    sub.shutdown().await;
    bus.close().await;
    telemetry.shutdown().await;
    Ok(())
}
