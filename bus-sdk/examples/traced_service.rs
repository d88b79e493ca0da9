//! A service that brings its own telemetry: its own OpenTelemetry tracer provider and
//! exporter, its own `tracing` subscriber with the `tracing-opentelemetry` layer, installed
//! before connecting. It never calls `bus_core::telemetry::init`: the bus records its spans
//! through the application's global provider, as an instrumentation library does, and one
//! trace shows each order from the service's own span to the last handler:
//!
//! ```text
//! place_order (the service's span)
//! └─ publish bus.evt.shop.order.created        PRODUCER
//!    └─ process bus.evt.shop.order.created     CONSUMER, group billing
//!       └─ charge (#[instrument] in the handler)
//!          └─ publish bus.evt.shop.order.billed    PRODUCER
//!             └─ process bus.evt.shop.order.billed CONSUMER, group ledger
//! ```
//!
//! Its log lines are JSON with the `trace_id` and `span_id` of the hop or span they were
//! written in, and the fields of the `tracing` spans they are in
//! (`bus_core::telemetry::JsonWithTrace` as the fmt layer's format, `JsonFields` as its
//! field formatter).
//!
//! It places `ORDERS` orders (default 3), waits until the ledger saw each billed, and
//! exits. With a local Jaeger:
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 NATS_URL=nats://127.0.0.1:4222 \
//!     cargo run -p bus-sdk --example traced_service
//! ```

mod common;

use std::sync::Arc;
use std::time::Duration;

use bus_sdk::bus_core::telemetry::JsonWithTrace;
use bus_sdk::{Bus, HandlerError, Received};
use common::{OrderBilled, OrderCreated};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::sync::Semaphore;
use tracing::{Instrument as _, info, info_span, instrument};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt};

/// How long the service waits for its orders to go through the bus.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let provider = own_pipeline()?;
    let orders: u64 = match std::env::var("ORDERS") {
        Ok(n) => n.parse()?,
        Err(_) => 3,
    };
    let bus = Bus::builder(common::config())
        .source("/examples/traced-service")
        .connect()
        .await?;

    let publisher = bus.clone();
    let billing = bus
        .group("billing")
        .on(move |order: Received<OrderCreated>| {
            let bus = publisher.clone();
            async move {
                info!(order_id = order.data.order_id, "billing an order");
                charge(&bus, &order.data).await
            }
        })
        .start()
        .await?;
    let billed = Arc::new(Semaphore::new(0));
    let seen = billed.clone();
    let ledger = bus
        .group("ledger")
        .on(move |event: Received<OrderBilled>| {
            let seen = seen.clone();
            async move {
                info!(order_id = event.data.order_id, "order billed");
                seen.add_permits(1);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;

    for order_id in 1..=orders {
        let order = OrderCreated {
            order_id,
            customer: format!("customer-{order_id}"),
            total_cents: 1_000 * order_id,
        };
        bus.publish(&order)
            .instrument(info_span!("place_order", order_id))
            .await?;
    }
    let all = u32::try_from(orders)?;
    let done = tokio::time::timeout(DEADLINE, billed.acquire_many(all)).await;
    billing.shutdown().await;
    ledger.shutdown().await;
    bus.close().await;
    provider.shutdown()?;
    match done {
        Ok(Ok(_)) => {
            println!("traced-service: {orders} orders billed");
            Ok(())
        }
        _ => anyhow::bail!("the orders were not all billed within {DEADLINE:?}"),
    }
}

/// Charges an order: a span of the service's own, nested under the handling's CONSUMER
/// span, and the publish made in it is its child.
#[instrument(skip_all, fields(order_id = order.order_id))]
async fn charge(bus: &Bus, order: &OrderCreated) -> Result<(), HandlerError> {
    info!(cents = order.total_cents, "charged");
    bus.publish(&OrderBilled {
        order_id: order.order_id,
    })
    .await?;
    Ok(())
}

/// What a service sets up for itself, with nothing from the bus but the log format: the
/// OTLP exporter (gRPC, `OTEL_EXPORTER_OTLP_ENDPOINT`), the tracer provider and W3C
/// propagator as globals, and the subscriber with the `tracing-opentelemetry` layer.
fn own_pipeline() -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_protocol(opentelemetry_otlp::Protocol::Grpc)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("traced-service")
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with(
            fmt::layer()
                .fmt_fields(fmt::format::JsonFields::new())
                .event_format(JsonWithTrace)
                .with_writer(std::io::stderr),
        )
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("traced-service")))
        .try_init()?;
    Ok(provider)
}
