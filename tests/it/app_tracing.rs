//! The SDK as an instrumentation library: a service that brings its own telemetry and
//! never calls `bus_core::telemetry::init` gets the bus's spans in its own pipeline, nested
//! with its own spans both ways.
//!
//! A test target of its own: the in-process tests install the process's global provider,
//! so each runs in a process of its own (`bus_tests::own_process`).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::telemetry;
use bus_sdk::tracing_opentelemetry;
use bus_sdk::{HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, OtlpReceiver, SpanKind, wait_until};
use opentelemetry::trace::{
    Span as _, SpanKind as OtelKind, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span as SdkSpan, SpanData, SpanProcessor};
use serde_json::Value;

fn order(order_id: u64) -> OrderCreated {
    OrderCreated {
        order_id,
        customer: format!("c{order_id}"),
    }
}

/// The Must-show of the instrumentation library, with the `traced_service` example: its
/// own provider, OTLP/gRPC exporter and subscriber (JSON logs, `tracing-opentelemetry`
/// layer), installed before connecting, never `init`. For each order one trace: the
/// service's span → PRODUCER → CONSUMER → the handler's `#[instrument]` span → PRODUCER
/// → CONSUMER, and the handler's log lines carry its trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_service_with_its_own_pipeline_should_nest_its_spans_and_the_bus_hops_in_one_trace()
-> anyhow::Result<()> {
    const ORDERS: usize = 2;
    let receiver = OtlpReceiver::start().await?;
    let cluster = NatsCluster::start(1).await?;
    let child = tokio::process::Command::new(bus_tests::example_binary("traced_service")?)
        .env("NATS_URL", cluster.client_urls().join(","))
        .env("ORDERS", ORDERS.to_string())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "traced_service failed ({}):\n{stderr}",
        out.status
    );

    let spans = receiver
        .wait_for("every order's six spans", Duration::from_secs(30), |s| {
            s.iter()
                .filter(|s| s.name == "process bus.evt.shop.order.billed")
                .count()
                >= ORDERS
                && s.iter().filter(|s| s.name == "place_order").count() >= ORDERS
        })
        .await?;
    let logs: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for place in spans.iter().filter(|s| s.name == "place_order") {
        let trace = &place.trace_id;
        let flow = nested_flow(
            &spans,
            place,
            "shop.order.created",
            "charge",
            "shop.order.billed",
        )?;
        assert_eq!(flow.inner.kind, SpanKind::Internal);
        assert_eq!(
            flow.process.attr("messaging.consumer.group.name"),
            Some("billing")
        );
        assert_eq!(
            flow.second_process.attr("messaging.consumer.group.name"),
            Some("ledger")
        );
        for s in [
            flow.root,
            flow.publish,
            flow.process,
            flow.inner,
            flow.second_publish,
        ] {
            assert_eq!(s.service, "traced-service", "{}", s.name);
        }

        // The handler's log lines carry the trace: the one in the hop its CONSUMER span,
        // the one inside `charge` that span.
        let line = |message: &str| {
            logs.iter()
                .find(|l| l["message"] == message && l["trace_id"].as_str() == Some(trace.as_str()))
        };
        let billing = line("billing an order").ok_or_else(|| {
            anyhow::anyhow!("no 'billing an order' line in trace {trace}:\n{stderr}")
        })?;
        assert_eq!(
            billing["span_id"].as_str(),
            Some(flow.process.span_id.as_str())
        );
        let charged = line("charged")
            .ok_or_else(|| anyhow::anyhow!("no 'charged' line in trace {trace}:\n{stderr}"))?;
        assert_eq!(
            charged["span_id"].as_str(),
            Some(flow.inner.span_id.as_str())
        );
        // And the `tracing` span it was written in, with its fields.
        assert_eq!(charged["span"]["name"], "charge", "{charged}");
        assert!(charged["span"]["order_id"].is_u64(), "{charged}");
    }
    assert_eq!(
        spans.iter().filter(|s| s.name == "place_order").count(),
        ORDERS
    );
    Ok(())
}

/// Keeps every span the SDK ends.
#[derive(Debug, Default, Clone)]
struct Kept(Arc<Mutex<Vec<SpanData>>>);

impl Kept {
    fn spans(&self) -> Vec<SpanData> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn provider(&self) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(self.clone())
            .build()
    }
}

impl SpanProcessor for Kept {
    fn on_start(&self, _span: &mut SdkSpan, _cx: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        if let Ok(mut s) = self.0.lock() {
            s.push(span);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn kinds(spans: &[SpanData]) -> Vec<(String, OtelKind)> {
    spans
        .iter()
        .map(|s| (s.name.to_string(), s.span_kind.clone()))
        .collect()
}

/// A provider given to the `Bus` builder records its hops, not the process's global
/// provider; a span the service opens through the OpenTelemetry API is the parent of a
/// publish made while it is current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_provider_on_the_builder_should_record_the_hops_there_not_in_the_global_one()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_a_provider_on_the_builder_should_record_the_hops_there_not_in_the_global_one",
    ) {
        return Ok(());
    }
    let kept = Kept::default();
    let provider = kept.provider();
    // A live global provider too: the one given to the builder wins.
    let global = Kept::default();
    opentelemetry::global::set_tracer_provider(global.provider());
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_sdk::Bus::builder(config_for(&cluster))
        .tracer_provider(&provider)
        .connect()
        .await?;
    let seen = Recorder::default();
    let group = alerts_group(&bus, &seen).await?;

    let service_span = provider.tracer("service").start("checkout");
    let service_cx = opentelemetry::Context::current_with_span(service_span);
    let checkout_span_id = service_cx.span().span_context().span_id();
    {
        let _current = service_cx.clone().attach();
        bus.publish(&PaymentFailed { order_id: 1 }).await?;
    }
    service_cx.span().end();
    wait_until("the alert handled", Duration::from_secs(30), || {
        seen.distinct() == 1
    })
    .await?;
    group.shutdown().await;

    let spans = kept.spans();
    let publish = spans
        .iter()
        .find(|s| s.span_kind == OtelKind::Producer)
        .ok_or_else(|| anyhow::anyhow!("no PRODUCER in {:?}", kinds(&spans)))?;
    assert_eq!(publish.parent_span_id, checkout_span_id);
    assert_eq!(publish.instrumentation_scope.name(), "bus");
    let process = spans
        .iter()
        .find(|s| s.span_kind == OtelKind::Consumer)
        .ok_or_else(|| anyhow::anyhow!("no CONSUMER in {:?}", kinds(&spans)))?;
    assert_eq!(process.parent_span_id, publish.span_context.span_id());
    assert_eq!(
        process.span_context.trace_id(),
        publish.span_context.trace_id()
    );
    assert!(
        global.spans().is_empty(),
        "the global provider recorded {:?}",
        kinds(&global.spans())
    );
    // The bus installs no global propagator (the service installed none either).
    let fields = opentelemetry::global::get_text_map_propagator(|p| p.fields().count());
    assert_eq!(fields, 0, "the bus installed a global propagator");
    Ok(())
}

/// With no provider at connect, the bus records nothing and works; a global provider the
/// service installs afterwards gets the bus's spans from the next look (within
/// `LOOK_EVERY`), a handler's hop parenting a span the handler opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_global_provider_installed_after_connect_should_get_the_bus_spans()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_a_global_provider_installed_after_connect_should_get_the_bus_spans",
    ) {
        return Ok(());
    }
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let inner = Arc::new(Mutex::new(Vec::new()));
    let (publisher, opened) = (bus.clone(), inner.clone());
    let group = bus
        .group("billing")
        .on(move |ev: Received<OrderCreated>| {
            let (publisher, opened) = (publisher.clone(), opened.clone());
            async move {
                // A span the handler opens through the global tracer: a child of its hop.
                let span = opentelemetry::global::tracer("handler").start("charge");
                if let Ok(mut o) = opened.lock() {
                    o.push(span.span_context().span_id());
                }
                publisher
                    .publish(&PaymentFailed {
                        order_id: ev.data.order_id,
                    })
                    .await?;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    let seen = Recorder::default();
    let alerts = alerts_group(&bus, &seen).await?;
    bus.publish(&order(1)).await?;
    wait_until("the first flow", Duration::from_secs(30), || {
        seen.distinct() == 1
    })
    .await?;

    let kept = Kept::default();
    opentelemetry::global::set_tracer_provider(kept.provider());
    // The next look is at most LOOK_EVERY away: publish until the bus records, within
    // ten looks.
    let mut order_id = 2;
    let deadline = tokio::time::Instant::now() + telemetry::LOOK_EVERY * 10;
    while !kept
        .spans()
        .iter()
        .any(|s| s.span_kind == OtelKind::Producer)
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the bus never recorded into the provider installed after connect"
        );
        bus.publish(&order(order_id)).await?;
        order_id += 1;
        tokio::time::sleep(telemetry::LOOK_EVERY / 4).await;
    }
    let traced = order_id - 1;
    wait_until("the traced flow", Duration::from_secs(30), || {
        seen.distinct() == usize::try_from(traced).unwrap_or(usize::MAX)
    })
    .await?;
    group.shutdown().await;
    alerts.shutdown().await;

    let spans = kept.spans();
    assert!(
        !spans.iter().any(|s| s.name == "bus.probe"),
        "the watcher's probe was recorded"
    );
    let trace_of = |name: &str, kind: OtelKind| {
        spans
            .iter()
            .rfind(|s| s.name == name && s.span_kind == kind)
            .cloned()
    };
    let publish = trace_of("publish bus.evt.shop.order.created", OtelKind::Producer)
        .ok_or_else(|| anyhow::anyhow!("no PRODUCER: {:?}", kinds(&spans)))?;
    let process = spans
        .iter()
        .find(|s| {
            s.span_kind == OtelKind::Consumer && s.parent_span_id == publish.span_context.span_id()
        })
        .ok_or_else(|| anyhow::anyhow!("no CONSUMER under the PRODUCER: {:?}", kinds(&spans)))?;
    let charge = spans
        .iter()
        .find(|s| s.name == "charge" && s.parent_span_id == process.span_context.span_id())
        .ok_or_else(|| anyhow::anyhow!("the handler's span is not under its CONSUMER"))?;
    let opened_ids = inner.lock().map(|o| o.clone()).unwrap_or_default();
    assert!(opened_ids.contains(&charge.span_context.span_id()));
    let second = spans
        .iter()
        .find(|s| {
            s.span_kind == OtelKind::Producer && s.parent_span_id == process.span_context.span_id()
        })
        .ok_or_else(|| anyhow::anyhow!("the handler's publish is not under its CONSUMER"))?;
    assert_eq!(second.name, "publish bus.evt.shop.payment.failed");
    Ok(())
}

/// The composable form: a service's own subscriber with `Pipeline::layer`, never `init`,
/// and no global provider or propagator at all: the bus records through the pipeline, and
/// the service's `tracing` spans nest with the hops both ways, even with the layer's
/// context activation off (its spans then never become the current OpenTelemetry context:
/// a publish finds its parent through the `tracing` span itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_pipeline_in_a_subscriber_of_the_service_should_nest_its_spans_and_the_hops()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_the_pipeline_in_a_subscriber_of_the_service_should_nest_its_spans_and_the_hops",
    ) {
        return Ok(());
    }
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let receiver = OtlpReceiver::start().await?;
    let pipeline = telemetry::Pipeline::new(telemetry::TelemetrySettings {
        service_name: "pipeline-test".into(),
        export: Some(telemetry::OtlpExport {
            endpoint: Some(receiver.http_endpoint()),
            protocol: telemetry::OtlpProtocol::HttpProtobuf,
            batch_delay: Some(Duration::from_millis(100)),
        }),
        sampler: telemetry::Sampler::AlwaysOn,
        head_sampling_ratio: None,
    })?;
    tracing_subscriber::registry()
        .with(pipeline.tracer().map(|tracer| {
            use tracing_subscriber::Layer as _;
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_context_activation(false)
                .with_filter(telemetry::SpanFilter::from_env())
        }))
        .try_init()?;
    let telemetry = pipeline.into_telemetry();
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let spans = record_nested_flow(&bus, &telemetry, &receiver).await?;
    let root = root_span(&spans)?;
    let flow = nested_flow(
        &spans,
        root,
        "shop.order.created",
        "charge",
        "shop.payment.failed",
    )?;
    assert_eq!(flow.second_process.service, "pipeline-test");
    telemetry.shutdown().await;
    Ok(())
}

/// One data point a meter provider exported: the instrument, its unit, the point's
/// attributes, and its value (a sum's) or count (a histogram's).
#[derive(Debug, Clone)]
struct Point {
    name: String,
    unit: String,
    attributes: std::collections::BTreeMap<String, String>,
    value: u64,
}

/// Keeps what the meter provider exports (cumulative: the last export has every point).
#[derive(Debug, Default, Clone)]
struct KeptMetrics(Arc<Mutex<Vec<Point>>>);

impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for KeptMetrics {
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> OTelSdkResult {
        use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
        let mut points = Vec::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics() {
                let mut push = |attributes: &mut dyn Iterator<Item = &opentelemetry::KeyValue>,
                                value: u64| {
                    points.push(Point {
                        name: metric.name().to_owned(),
                        unit: metric.unit().to_owned(),
                        attributes: attributes
                            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                            .collect(),
                        value,
                    })
                };
                match metric.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        for p in sum.data_points() {
                            push(&mut p.attributes(), p.value());
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            push(&mut p.attributes(), p.count());
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Ok(mut kept) = self.0.lock() {
            *kept = points;
        }
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        opentelemetry_sdk::metrics::Temporality::Cumulative
    }
}

/// The messaging metrics of the conventions go through the application's global meter
/// provider (the bus installs none): publishes with their duration, deliveries consumed
/// and their processing duration, a failed handling with its `error.type`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_global_meter_provider_the_bus_should_record_the_messaging_metrics()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_a_global_meter_provider_the_bus_should_record_the_messaging_metrics",
    ) {
        return Ok(());
    }
    let kept = KeptMetrics::default();
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(kept.clone()).build();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader)
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let seen = Recorder::default();
    let (recorded, failed_once) = (
        seen.clone(),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let group = bus
        .group("billing")
        .backoff([Duration::from_millis(50)])
        .on(move |ev: Received<OrderCreated>| {
            let (seen, failed_once) = (recorded.clone(), failed_once.clone());
            async move {
                if ev.data.order_id == 2
                    && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    return Err(HandlerError::msg("the first attempt fails"));
                }
                seen.record(0, ev.meta.id());
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    for id in 1..=3 {
        bus.publish(&order(id)).await?;
    }
    wait_until("three orders handled", Duration::from_secs(30), || {
        seen.distinct() == 3
    })
    .await?;
    group.shutdown().await;
    provider.force_flush()?;

    let points = kept.0.lock().map(|p| p.clone()).unwrap_or_default();
    let total = |name: &str, extra: &[(&str, &str)]| -> u64 {
        points
            .iter()
            .filter(|p| p.name == name)
            .filter(|p| {
                extra
                    .iter()
                    .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|p| p.value)
            .sum()
    };
    let sent = [
        ("messaging.system", "nats"),
        ("messaging.operation.name", "publish"),
        ("messaging.destination.name", "bus.evt.shop.order.created"),
    ];
    assert_eq!(
        total("messaging.client.sent.messages", &sent),
        3,
        "{points:#?}"
    );
    assert_eq!(total("messaging.client.operation.duration", &sent), 3);
    let handled = [
        ("messaging.system", "nats"),
        ("messaging.operation.name", "process"),
        ("messaging.destination.name", "bus.evt.shop.order.created"),
        ("messaging.consumer.group.name", "billing"),
    ];
    assert_eq!(
        total("messaging.client.consumed.messages", &handled),
        4,
        "{points:#?}"
    );
    assert_eq!(total("messaging.process.duration", &handled), 4);
    assert_eq!(
        total(
            "messaging.process.duration",
            &[("error.type", "handler_error")]
        ),
        1
    );
    for p in &points {
        let unit = if p.name.ends_with(".duration") {
            "s"
        } else {
            "{message}"
        };
        assert_eq!(p.unit, unit, "{}", p.name);
    }
    Ok(())
}
