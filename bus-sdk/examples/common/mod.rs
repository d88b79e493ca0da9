//! What the example services share: the event types and how to reach NATS.

use bus_sdk::EventPayload;
use bus_sdk::bus_core::BusConfig;
use serde::{Deserialize, Serialize};

/// Published by the order service, handled by billing and the dashboard.
#[allow(dead_code)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: u64,
    pub customer: String,
    pub total_cents: u64,
}

impl EventPayload for OrderCreated {
    const EVENT_TYPE: &'static str = "shop.order.created";

    fn partition_key(&self) -> Option<String> {
        Some(self.customer.clone())
    }
}

/// Published by billing once an order is paid.
#[allow(dead_code)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderBilled {
    pub order_id: u64,
}

impl EventPayload for OrderBilled {
    const EVENT_TYPE: &'static str = "shop.order.billed";
}

/// One change to an order, in the order they happened; handled in that order per order
/// by the ordered group of the `order_projection` example.
#[allow(dead_code)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderStep {
    pub order_id: String,
    pub step: u64,
}

impl EventPayload for OrderStep {
    const EVENT_TYPE: &'static str = "shop.order.step";

    fn partition_key(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

/// `NATS_URL` (comma-separated, default `nats://127.0.0.1:4222`).
#[allow(dead_code)]
pub fn config() -> BusConfig {
    let urls = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    BusConfig::with_servers(urls.split(',').map(str::to_owned))
}

/// Logs to stderr (`RUST_LOG`), and traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set (e.g. `http://127.0.0.1:4318` for a local Jaeger).
#[allow(dead_code)]
pub fn init_telemetry(service: &str) -> anyhow::Result<bus_sdk::bus_core::telemetry::Telemetry> {
    Ok(bus_sdk::bus_core::telemetry::init(service)?)
}

/// Resolves on SIGINT or SIGTERM.
#[allow(dead_code)]
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
