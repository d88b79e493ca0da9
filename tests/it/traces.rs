//! One trace per flow: HTTP ingress (node) → publish (node) → group A handles it, fails
//! once, handles it again and publishes → group B handles that. The node exports over
//! OTLP/gRPC, this process over OTLP/HTTP, both into the harness's receiver.
//!
//! A test target of its own: each test installs the process's global telemetry, so each
//! runs in a process of its own (`bus_tests::own_process`: cargo-nextest runs a process
//! per test; under plain `cargo test` the test runs itself again in a child process).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bus_core::telemetry::{self, OtlpExport, OtlpProtocol, Sampler, TelemetrySettings};
use bus_sdk::{HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, OtlpReceiver, ReceivedSpan, SpanKind, wait_until};
use serde_json::json;

fn settings(endpoint: String) -> TelemetrySettings {
    TelemetrySettings {
        service_name: "trace-test".into(),
        export: Some(OtlpExport {
            endpoint: Some(endpoint),
            protocol: OtlpProtocol::HttpProtobuf,
            batch_delay: Some(Duration::from_millis(100)),
        }),
        sampler: Sampler::AlwaysOn,
        head_sampling_ratio: None,
    }
}

/// Group A of the flows: publishes a `PaymentFailed` for each `OrderCreated` it handles.
async fn billing_group(bus: &bus_sdk::Bus) -> anyhow::Result<bus_sdk::Group> {
    let publisher = bus.clone();
    Ok(bus
        .group("billing")
        .on(move |ev: Received<OrderCreated>| {
            let publisher = publisher.clone();
            async move {
                publisher
                    .publish(&PaymentFailed {
                        order_id: ev.data.order_id,
                    })
                    .await?;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?)
}

/// The flow of two hops: group A publishes from its handler (inside a hop), group B
/// records what reaches it in the returned recorder.
async fn two_hop_flow(
    bus: &bus_sdk::Bus,
) -> anyhow::Result<(bus_sdk::Group, bus_sdk::Group, Recorder)> {
    let seen_b = Recorder::default();
    let group_a = billing_group(bus).await?;
    let group_b = alerts_group(bus, &seen_b).await?;
    Ok((group_a, group_b, seen_b))
}

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pred: impl Fn(&ReceivedSpan) -> bool,
) -> anyhow::Result<&'a ReceivedSpan> {
    let found: Vec<_> = spans.iter().filter(|s| pred(s)).collect();
    match found.as_slice() {
        [s] => Ok(s),
        _ => anyhow::bail!("expected one {what}, found {}: {spans:#?}", found.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_http_event_handled_by_two_groups_should_record_one_trace_with_the_hop_chain()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_an_http_event_handled_by_two_groups_should_record_one_trace_with_the_hop_chain",
    ) {
        return Ok(());
    }
    let receiver = OtlpReceiver::start().await?;
    let telemetry = telemetry::init_with(settings(receiver.http_endpoint()))?;
    let cluster = NatsCluster::start(1).await?;
    let mut env = node_env(&cluster);
    env.extend([
        ("BUS__AUTH__ENABLED".into(), "false".into()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            receiver.grpc_endpoint(),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
        ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ("OTEL_SERVICE_NAME".into(), "bus-node-test".into()),
    ]);
    let node = start("traced", &env).await?;

    let bus = bus_for(&cluster).await?;
    let attempts = Arc::new(AtomicU32::new(0));
    let seen_b = Recorder::default();
    let (a, publisher) = (attempts.clone(), bus.clone());
    let group_a = bus
        .group("billing")
        .backoff([Duration::from_millis(100)])
        .on(move |ev: Received<OrderCreated>| {
            let (a, publisher) = (a.clone(), publisher.clone());
            async move {
                if a.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(HandlerError::msg("first attempt fails"));
                }
                publisher
                    .publish(&PaymentFailed {
                        order_id: ev.data.order_id,
                    })
                    .await?;
                Ok(())
            }
        })
        .start()
        .await?;
    let group_b = alerts_group(&bus, &seen_b).await?;

    let event = ce(
        "order-7",
        "shop.order.created",
        json!({"order_id": 7, "customer": "c7"}),
    );
    let r = post_event(&http()?, &node.url(), &event).await?;
    assert_eq!(r.status(), 202);
    wait_until(
        "group B handled the second event",
        Duration::from_secs(30),
        || seen_b.distinct() == 1,
    )
    .await?;
    group_a.shutdown().await;
    group_b.shutdown().await;
    telemetry.flush().await;

    let spans = receiver
        .wait_for("all six spans", Duration::from_secs(30), |s| {
            s.iter().filter(|s| s.kind == SpanKind::Consumer).count() >= 3
                && s.iter().filter(|s| s.kind == SpanKind::Producer).count() >= 2
                && s.iter()
                    .any(|s| s.kind == SpanKind::Server && s.name == "POST /v1/events")
        })
        .await?;
    let server = one(&spans, "SERVER span", |s| {
        s.kind == SpanKind::Server && s.name == "POST /v1/events"
    })?;
    let publish1 = one(&spans, "first PRODUCER", |s| {
        s.kind == SpanKind::Producer && s.name == "publish bus.evt.shop.order.created"
    })?;
    let process_a: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.kind == SpanKind::Consumer
                && s.attr("messaging.consumer.group.name") == Some("billing")
        })
        .collect();
    let publish2 = one(&spans, "second PRODUCER", |s| {
        s.kind == SpanKind::Producer && s.name == "publish bus.evt.shop.payment.failed"
    })?;
    let process_b = one(&spans, "CONSUMER of group B", |s| {
        s.kind == SpanKind::Consumer && s.attr("messaging.consumer.group.name") == Some("alerts")
    })?;

    // One trace.
    let trace = &server.trace_id;
    for s in [publish1, publish2, process_b]
        .iter()
        .chain(process_a.iter())
    {
        assert_eq!(&s.trace_id, trace, "{} is in another trace", s.name);
    }
    // The chain SERVER → PRODUCER → CONSUMER → PRODUCER → CONSUMER.
    assert_eq!(server.service, "bus-node-test");
    assert_eq!(publish1.service, "bus-node-test");
    assert_eq!(publish1.parent_span_id, server.span_id);
    assert_eq!(process_a.len(), 2, "two handlings of the first event");
    let mut attempts_seen: Vec<&str> = process_a
        .iter()
        .filter_map(|s| s.attr("messaging.nats.delivery_attempt"))
        .collect();
    attempts_seen.sort();
    assert_eq!(attempts_seen, ["1", "2"]);
    for p in &process_a {
        assert_eq!(
            p.parent_span_id, publish1.span_id,
            "redelivery stays under the producer"
        );
        assert!(
            p.links
                .contains(&(publish1.trace_id.clone(), publish1.span_id.clone())),
            "link to the producer"
        );
        assert_eq!(p.name, "process bus.evt.shop.order.created");
        assert_eq!(p.service, "trace-test");
    }
    let failed = process_a
        .iter()
        .find(|s| s.attr("messaging.nats.delivery_attempt") == Some("1"));
    assert_eq!(failed.and_then(|s| s.attr("bus.settle")), Some("nak"));
    assert_eq!(
        failed.map(|s| s.status_code),
        Some(2),
        "a failed handling is an error span"
    );
    let second = process_a
        .iter()
        .find(|s| s.attr("messaging.nats.delivery_attempt") == Some("2"))
        .ok_or_else(|| anyhow::anyhow!("no second attempt"))?;
    assert_eq!(second.attr("bus.settle"), Some("ack"));
    assert_eq!(
        publish2.parent_span_id, second.span_id,
        "a publish in a handler is its child"
    );
    assert_eq!(process_b.parent_span_id, publish2.span_id);

    // Messaging attributes.
    for s in [publish1, publish2, process_b, second] {
        assert_eq!(s.attr("messaging.system"), Some("nats"), "{}", s.name);
        assert!(
            s.attr("messaging.destination.name")
                .is_some_and(|d| d.starts_with("bus.evt.")),
            "{}",
            s.name
        );
        assert!(
            s.attr("messaging.message.id")
                .is_some_and(|d| !d.is_empty()),
            "{}",
            s.name
        );
    }
    assert_eq!(publish1.attr("messaging.message.id"), Some("order-7"));
    assert_eq!(publish1.attr("messaging.operation.type"), Some("send"));
    assert_eq!(publish1.attr("messaging.nats.stream"), Some("BUS_EVENTS"));
    assert_eq!(publish1.attr("messaging.nats.stream.sequence"), Some("1"));
    assert_eq!(second.attr("messaging.operation.type"), Some("process"));
    assert_eq!(server.attr("http.response.status_code"), Some("202"));
    telemetry.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_collector_is_down_the_bus_should_keep_working_and_stop_promptly()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_the_collector_is_down_the_bus_should_keep_working_and_stop_promptly",
    ) {
        return Ok(());
    }
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let telemetry = telemetry::init_with(settings(format!("http://127.0.0.1:{dead}")))?;
    let cluster = NatsCluster::start(1).await?;
    let mut env = node_env(&cluster);
    env.extend([
        ("BUS__AUTH__ENABLED".into(), "false".into()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://127.0.0.1:{dead}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
        ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "50".into()),
    ]);
    let mut node = start("untraced", &env).await?;
    let client = http()?;
    for i in 0..300 {
        let r = post_event(
            &client,
            &node.url(),
            &ce(&format!("e-{i}"), "shop.a", json!(i)),
        )
        .await?;
        assert_eq!(r.status(), 202);
    }
    let bus = bus_for(&cluster).await?;
    let events: Vec<_> = (0..2000u64)
        .map(|n| bus.event(&order(n)).map(|b| b.build()))
        .collect::<Result<_, _>>()?;
    for r in bus.publish_batch(&events).await {
        r?;
    }
    let status = node.stop().await?;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", node.log());
    telemetry.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_ratio_sampler_each_flow_should_be_recorded_whole_or_not_at_all()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_a_ratio_sampler_each_flow_should_be_recorded_whole_or_not_at_all",
    ) {
        return Ok(());
    }
    const FLOWS: u64 = 40;
    let receiver = OtlpReceiver::start().await?;
    let mut s = settings(receiver.http_endpoint());
    s.sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5)));
    s.head_sampling_ratio = Some(0.5);
    let telemetry = telemetry::init_with(s)?;
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let (group_a, group_b, seen_b) = two_hop_flow(&bus).await?;
    for n in 0..FLOWS {
        bus.publish(&order(n)).await?;
    }
    wait_until("every flow handled", Duration::from_secs(30), || {
        seen_b.distinct() as u64 == FLOWS
    })
    .await?;
    group_a.shutdown().await;
    group_b.shutdown().await;
    telemetry.flush().await;
    // Spans arrive in batches; wait until the span count stops being a partial flow.
    let spans = receiver
        .wait_for("whole flows", Duration::from_secs(20), |s| {
            !s.is_empty() && s.len() % 4 == 0
        })
        .await?;
    let mut traces: std::collections::BTreeMap<&str, Vec<&ReceivedSpan>> = Default::default();
    for span in &spans {
        traces.entry(span.trace_id.as_str()).or_default().push(span);
    }
    assert!(
        !traces.is_empty() && (traces.len() as u64) < FLOWS,
        "about half of {FLOWS} flows recorded, got {}",
        traces.len()
    );
    for (id, hops) in &traces {
        let mut kinds: Vec<String> = hops
            .iter()
            .map(|s| format!("{:?} {}", s.kind, s.name))
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "Consumer process bus.evt.shop.order.created",
                "Consumer process bus.evt.shop.payment.failed",
                "Producer publish bus.evt.shop.order.created",
                "Producer publish bus.evt.shop.payment.failed",
            ],
            "trace {id} is not a whole flow"
        );
    }
    telemetry.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_service_span_in_the_current_context_a_publish_should_be_its_child()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_a_service_span_in_the_current_context_a_publish_should_be_its_child",
    ) {
        return Ok(());
    }
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};

    let receiver = OtlpReceiver::start().await?;
    let telemetry = telemetry::init_with(settings(receiver.http_endpoint()))?;
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;

    // A service's own span, made with the OpenTelemetry API and current while it publishes.
    let checkout = opentelemetry::global::tracer("checkout").start("checkout");
    let parent = checkout.span_context().clone();
    let cx = opentelemetry::Context::current_with_span(checkout);
    bus.publish(&order(1)).with_context(cx.clone()).await?;
    // Outside that context, a publish starts a trace of its own.
    bus.publish(&order(2)).await?;
    cx.span().end();
    telemetry.flush().await;

    let spans = receiver
        .wait_for("both publish spans", Duration::from_secs(30), |s| {
            s.iter().filter(|s| s.kind == SpanKind::Producer).count() >= 2
        })
        .await?;
    let publishes: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Producer)
        .collect();
    let [inside, outside] = publishes.as_slice() else {
        anyhow::bail!("expected two publish spans: {spans:#?}");
    };
    assert_eq!(inside.trace_id, parent.trace_id().to_string());
    assert_eq!(inside.parent_span_id, parent.span_id().to_string());
    assert_ne!(outside.trace_id, inside.trace_id);
    assert_eq!(outside.parent_span_id, "", "a root span");
    telemetry.shutdown().await;
    Ok(())
}

/// `init` installs the `tracing-opentelemetry` layer: a service's `tracing` spans are
/// exported with the hops, a span opened in a handler is a child of its CONSUMER span,
/// and a publish in it is its child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_init_tracing_spans_of_the_service_should_nest_with_the_hops_both_ways()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_init_tracing_spans_of_the_service_should_nest_with_the_hops_both_ways",
    ) {
        return Ok(());
    }
    let receiver = OtlpReceiver::start().await?;
    let telemetry = telemetry::init_with(settings(receiver.http_endpoint()))?;
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
    assert_eq!(flow.inner.service, "trace-test");
    telemetry.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_sampler_always_off_events_should_carry_no_trace_context_and_no_span_be_exported()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_the_sampler_always_off_events_should_carry_no_trace_context_and_no_span_be_exported",
    ) {
        return Ok(());
    }
    use bus_core::headers::{CE_ID, NATS_TRACE_DEST, TRACEPARENT, TRACESTATE};

    let receiver = OtlpReceiver::start().await?;
    let mut s = settings(receiver.http_endpoint());
    s.sampler = Sampler::AlwaysOff;
    let telemetry = telemetry::init_with(s)?;
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let (group_a, group_b, seen_b) = two_hop_flow(&bus).await?;
    let first = bus.publish(&order(1)).await?;
    wait_until("the flow handled", Duration::from_secs(30), || {
        seen_b.distinct() == 1
    })
    .await?;
    group_a.shutdown().await;
    group_b.shutdown().await;
    telemetry.flush().await;

    // Both events went out with the headers of a bus without telemetry: what a sampler
    // that never samples costs on the wire is nothing.
    let stream = bus.jetstream().get_stream(&first.stream).await?;
    for seq in [first.seq, first.seq + 1] {
        let headers = stream.get_raw_message(seq).await?.headers;
        assert!(headers.get(CE_ID).is_some(), "message {seq} is an event");
        for name in [TRACEPARENT, TRACESTATE, NATS_TRACE_DEST] {
            assert!(
                headers.get(name).is_none(),
                "message {seq} carries {name}: {headers:?}"
            );
        }
    }
    let spans = receiver.spans();
    assert!(spans.is_empty(), "no span exported, got {spans:#?}");
    telemetry.shutdown().await;
    Ok(())
}

/// A bus connected before `init` (its watcher of the global provider already running):
/// `init`'s provider, its sampler off, is the bus's pipeline and not "an application's
/// provider" to record through; events carry no trace context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_bus_connected_before_init_with_the_sampler_off_events_should_carry_no_trace_context()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_a_bus_connected_before_init_with_the_sampler_off_events_should_carry_no_trace_context",
    ) {
        return Ok(());
    }
    use bus_core::headers::{TRACEPARENT, TRACESTATE};

    let receiver = OtlpReceiver::start().await?;
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let mut s = settings(receiver.http_endpoint());
    s.sampler = Sampler::AlwaysOff;
    let telemetry = telemetry::init_with(s)?;
    // Not readiness: the watcher's next looks, which must not take init's provider up.
    tokio::time::sleep(telemetry::LOOK_EVERY * 2).await;
    let receipt = bus.publish(&order(1)).await?;
    let stream = bus.jetstream().get_stream(&receipt.stream).await?;
    let headers = stream.get_raw_message(receipt.seq).await?.headers;
    for name in [TRACEPARENT, TRACESTATE] {
        assert!(
            headers.get(name).is_none(),
            "the event carries {name}: {headers:?}"
        );
    }
    telemetry.flush().await;
    assert!(receiver.spans().is_empty(), "no span exported");
    telemetry.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_push_clients_each_event_should_have_one_push_span_per_node_in_its_trace()
-> anyhow::Result<()> {
    // Installs nothing in this process; only the node exports.
    let receiver = OtlpReceiver::start().await?;
    let cluster = NatsCluster::start(1).await?;
    let mut env = node_env(&cluster);
    env.extend([
        ("BUS__AUTH__ENABLED".into(), "false".into()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            receiver.grpc_endpoint(),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
        ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ("OTEL_SERVICE_NAME".into(), "bus-node-push".into()),
    ]);
    let node = start("pushing", &env).await?;
    bus_core::tls::install_crypto_provider();
    let client = reqwest::Client::new();
    // Three SSE clients, each read until its hello.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let r = client
            .get(format!("{}/v1/events/stream?types=shop.%3E", node.url()))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "SSE answered {}", r.status());
        let mut body = futures::StreamExt::boxed(r.bytes_stream());
        let mut text = String::new();
        while !text.contains("bus.push.hello") {
            match tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut body))
                .await
            {
                Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
                other => anyhow::bail!("no hello: {other:?}"),
            }
        }
        streams.push(body);
    }
    let event = ce("order-9", "shop.order.created", json!({"order_id": 9}));
    assert_eq!(
        post_event(&http()?, &node.url(), &event).await?.status(),
        202
    );
    let spans = receiver
        .wait_for("the push span", Duration::from_secs(30), |s| {
            s.iter()
                .any(|s| s.name == "push bus.evt.shop.order.created")
                && s.iter().any(|s| s.kind == SpanKind::Producer)
        })
        .await?;
    let publish = one(&spans, "PRODUCER", |s| s.kind == SpanKind::Producer)?;
    let push = one(&spans, "push span (one for three clients)", |s| {
        s.name == "push bus.evt.shop.order.created"
    })?;
    assert_eq!(push.kind, SpanKind::Consumer);
    assert_eq!(push.trace_id, publish.trace_id);
    assert_eq!(push.parent_span_id, publish.span_id);
    assert_eq!(push.attr("bus.push.clients"), Some("3"));
    assert_eq!(push.attr("bus.node"), Some("pushing"));
    assert_eq!(push.attr("messaging.operation.type"), Some("process"));
    drop(streams);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_baggage_at_publish_each_attempt_of_the_handler_should_read_it_and_its_dead_letter_keep_it()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_baggage_at_publish_each_attempt_of_the_handler_should_read_it_and_its_dead_letter_keep_it",
    ) {
        return Ok(());
    }
    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::context::FutureExt as _;

    let receiver = OtlpReceiver::start().await?;
    let telemetry = telemetry::init_with(settings(receiver.http_endpoint()))?;
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Option<String>>::new()));
    let handler_seen = seen.clone();
    // Every attempt fails: two attempts, then a dead letter.
    let group = bus
        .group("baggage")
        .backoff([Duration::from_millis(50)])
        .max_deliver(2)
        .on(move |_: Received<OrderCreated>| {
            let seen = handler_seen.clone();
            async move {
                let tenant = opentelemetry::Context::current()
                    .baggage()
                    .get("tenant")
                    .map(|v| v.as_str().to_owned());
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(tenant);
                Err::<(), _>(HandlerError::msg("always"))
            }
        })
        .start()
        .await?;
    let cx = opentelemetry::Context::current_with_baggage([opentelemetry::KeyValue::new(
        "tenant", "acme",
    )]);
    bus.publish(&order(1)).with_context(cx).await?;
    wait_until("a dead letter", Duration::from_secs(30), || {
        seen.lock().map(|s| s.len() >= 2).unwrap_or(false)
    })
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let letter = loop {
        let page = bus.dead_letters(None, 0, 10).await?;
        if let Some(l) = page.letters.into_iter().next() {
            break l.letter;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        seen,
        vec![Some("acme".to_owned()); 2],
        "each attempt reads it"
    );
    assert_eq!(
        letter.headers.get("baggage").map(|v| v.as_str()),
        Some("tenant=acme"),
        "the dead letter keeps it"
    );
    group.shutdown().await;
    telemetry.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_no_telemetry_at_all_baggage_should_reach_each_attempt_and_the_next_hop()
-> anyhow::Result<()> {
    if !bus_tests::own_process(
        "given_no_telemetry_at_all_baggage_should_reach_each_attempt_and_the_next_hop",
    ) {
        return Ok(());
    }
    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::context::FutureExt as _;

    fn tenant() -> Option<String> {
        opentelemetry::Context::current()
            .baggage()
            .get("tenant")
            .map(|v| v.as_str().to_owned())
    }

    // No init, no provider, no propagator: the bus records nothing.
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    assert!(!telemetry::is_enabled());
    let seen_a = Arc::new(std::sync::Mutex::new(Vec::<Option<String>>::new()));
    let seen_b = Arc::new(std::sync::Mutex::new(Vec::<Option<String>>::new()));
    let (in_a, in_b) = (seen_a.clone(), seen_b.clone());
    let publisher = bus.clone();
    // Group A fails its first attempt, then publishes from the second.
    let group_a = bus
        .group("billing")
        .backoff([Duration::from_millis(50)])
        .on(move |ev: Received<OrderCreated>| {
            let (seen, publisher) = (in_a.clone(), publisher.clone());
            async move {
                let first = {
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    seen.push(tenant());
                    seen.len() == 1
                };
                if first {
                    return Err(HandlerError::msg("first attempt"));
                }
                publisher
                    .publish(&PaymentFailed {
                        order_id: ev.data.order_id,
                    })
                    .await?;
                Ok(())
            }
        })
        .start()
        .await?;
    let group_b = bus
        .group("alerts")
        .on(move |_: Received<PaymentFailed>| {
            let seen = in_b.clone();
            async move {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(tenant());
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    let cx = opentelemetry::Context::current_with_baggage([opentelemetry::KeyValue::new(
        "tenant", "acme",
    )]);
    bus.publish(&order(1)).with_context(cx).await?;
    wait_until("the next hop handled it", Duration::from_secs(30), || {
        seen_b.lock().map(|s| !s.is_empty()).unwrap_or(false)
    })
    .await?;
    let acme = Some("acme".to_owned());
    let a = seen_a.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(a, vec![acme.clone(); 2], "each attempt reads it");
    let b = seen_b.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        b,
        vec![acme],
        "the event published in the handler carries it"
    );
    group_a.shutdown().await;
    group_b.shutdown().await;
    Ok(())
}
