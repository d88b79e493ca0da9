//! An order service: publishes `COUNT` (default 10) typed `shop.order.created` events and
//! prints each one's stream sequence once JetStream has stored it.
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run -p bus-sdk --example order_service -- 10`

mod common;

use bus_sdk::Bus;
use common::OrderCreated;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = common::init_telemetry("order-service")?;
    let count: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let bus = Bus::builder(common::config())
        .source("/examples/order-service")
        .connect()
        .await?;
    for n in 1..=count {
        let order = OrderCreated {
            order_id: n,
            customer: format!("customer-{}", n % 3),
            total_cents: 1999 * n,
        };
        let receipt = bus.publish(&order).await?;
        println!(
            "order-service: published order {n} as {} (#{} in {})",
            receipt.id, receipt.seq, receipt.stream
        );
    }
    bus.close().await;
    telemetry.shutdown().await;
    Ok(())
}
