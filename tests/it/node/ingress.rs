//! HTTP ingress on real nodes and real clusters: several nodes share the work, a node's
//! death loses nothing for a client that retries, and the event id makes retries safe.

use std::collections::HashSet;
use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_nodes_when_posting_alternately_should_store_each_event_once_and_feed_a_group()
-> anyhow::Result<()> {
    const EVENTS: usize = 200;
    let cluster = NatsCluster::start(3).await?;
    let a = open_node(&cluster, "node-a").await?;
    let b = open_node(&cluster, "node-b").await?;
    let bus = bus_for(&cluster).await?;
    let handled = Recorder::default();
    // An SDK consumer group, as a Rust service would run it.
    let group = recording_member(&bus, "ingest", &handled, 0).await?;
    let client = http()?;
    for i in 0..EVENTS {
        let base = if i % 2 == 0 { a.url() } else { b.url() };
        let data = json!({"order_id": i, "customer": format!("c{}", i % 7)});
        let event = ce(&format!("order-{i}"), "shop.order.created", data);
        let r = post_event(&client, &base, &event).await?;
        assert_eq!(r.status(), 202, "event {i}");
        let body: Value = r.json().await?;
        assert_eq!(body["id"], format!("order-{i}"));
        assert_eq!(body["type"], "shop.order.created");
        assert_eq!(body["stream"], "BUS_EVENTS");
        assert_eq!(body["duplicate"], false);
        assert!(body["seq"].as_u64().is_some_and(|s| s >= 1));
    }
    // The same ids through the other node are recognised as duplicates.
    for i in 0..20 {
        let base = if i % 2 == 0 { b.url() } else { a.url() };
        let data = json!({"order_id": i, "customer": format!("c{}", i % 7)});
        let event = ce(&format!("order-{i}"), "shop.order.created", data);
        let body: Value = post_event(&client, &base, &event).await?.json().await?;
        assert_eq!(body["duplicate"], true, "event {i}");
    }
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, EVENTS as u64);
    wait_until(
        "the subscriber saw every event",
        Duration::from_secs(30),
        || handled.distinct() == EVENTS,
    )
    .await?;
    assert_eq!(handled.total(), EVENTS as u64);
    group.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_node_killed_during_posts_when_the_client_retries_on_the_other_should_store_each_exactly_once()
-> anyhow::Result<()> {
    const EVENTS: usize = 300;
    let cluster = NatsCluster::start(3).await?;
    let mut a = open_node(&cluster, "node-a").await?;
    let b = open_node(&cluster, "node-b").await?;
    let client = http()?;
    let mut retried = 0;
    let mut killed = false;
    for i in 0..EVENTS {
        if i == EVENTS / 3 {
            // Kill node A while a request to it is in flight.
            let event = ce(&format!("e-{i}"), "shop.order.created", json!({"n": i}));
            let inflight = tokio::spawn({
                let client = client.clone();
                let url = a.url();
                async move { post_event(&client, &url, &event).await }
            });
            a.kill()?;
            killed = true;
            let _ = inflight.await;
        }
        let event = ce(&format!("e-{i}"), "shop.order.created", json!({"n": i}));
        let first = if killed {
            None
        } else {
            Some(post_event(&client, &a.url(), &event).await)
        };
        let ok = matches!(&first, Some(Ok(r)) if r.status() == 202);
        if !ok {
            retried += 1;
            let r = post_event(&client, &b.url(), &event).await?;
            assert_eq!(r.status(), 202, "retry of e-{i} on node B");
        }
    }
    assert!(
        retried >= EVENTS - EVENTS / 3,
        "requests after the kill went to node B"
    );
    let bus = bus_for(&cluster).await?;
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, EVENTS as u64);
    // Every id is there once.
    let stream = bus.jetstream().get_stream("BUS_EVENTS").await?;
    let mut ids = HashSet::new();
    for seq in 1..=EVENTS as u64 {
        let m = stream.get_raw_message(seq).await?;
        let id = m.headers.get("ce-id").map(|v| v.as_str().to_owned());
        assert!(ids.insert(id.clone()), "{id:?} stored twice");
    }
    assert_eq!(ids.len(), EVENTS);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_binary_and_batch_modes_should_store_the_events_as_sent() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "node").await?;
    let client = http()?;
    let r = client
        .post(format!("{}/v1/events", node.url()))
        .header("ce-id", "bin-1")
        .header("ce-source", "/curl")
        .header("ce-type", "shop.order.created")
        .header("ce-specversion", "1.0")
        .header("ce-partitionkey", "customer-7")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let batch = json!([
        ce("batch-1", "shop.order.created", json!({"n": 1})),
        ce("batch-2", "shop.order.paid", json!({"n": 2})),
    ]);
    let r = client
        .post(format!("{}/v1/events", node.url()))
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await?;
    assert_eq!(body.as_array().map(Vec::len), Some(2));
    assert_eq!(body[1]["id"], "batch-2");

    let bus = bus_for(&cluster).await?;
    let stream = bus.jetstream().get_stream("BUS_EVENTS").await?;
    let m = stream.get_raw_message(1).await?;
    assert_eq!(&m.payload[..], b"hello");
    assert_eq!(
        m.headers.get("content-type").map(|v| v.as_str()),
        Some("text/plain")
    );
    assert_eq!(
        m.headers.get("ce-partitionkey").map(|v| v.as_str()),
        Some("customer-7")
    );
    let m = stream.get_raw_message(3).await?;
    assert_eq!(m.subject.as_str(), "bus.evt.shop.order.paid");
    assert_eq!(
        serde_json::from_slice::<Value>(&m.payload)?,
        json!({"n": 2})
    );

    // Three events sent, by the messaging conventions' names; two requests timed.
    let metrics = metrics_text(&client, &node).await?;
    let stored = r#"{messaging_system="nats",messaging_operation_name="publish",error_type=""}"#;
    assert!(
        metrics.contains(&format!("messaging_client_sent_messages_total{stored} 3")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "messaging_client_operation_duration_seconds_count{stored} 2"
        )),
        "{metrics}"
    );
    Ok(())
}
