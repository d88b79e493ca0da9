//! Binary mode is the contract: a plain NATS client with nothing but the `ce-*` headers
//! can publish events the SDK handles, and read the events the SDK publishes.

use std::time::Duration;

use bus_sdk::{HandlerError, Received};
use bus_tests::NatsCluster;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_plain_client_publishing_ce_headers_should_be_handled_by_the_sdk()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let bus = bus_for(&cluster).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let member = bus
        .group("interop")
        .on(move |ev: Received<OrderCreated>| {
            let tx = tx.clone();
            async move {
                tx.send((ev.data, ev.meta.event)).await?;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;

    let js = async_nats::jetstream::new(cluster.client().await?);
    let h = nats_headers(&[
        ("ce-id", "plain-1"),
        ("ce-source", "/legacy/php"),
        ("ce-type", "shop.order.created"),
        ("ce-specversion", "1.0"),
        ("ce-subject", "order/9"),
        ("ce-time", "2026-11-23T10:00:00Z"),
        ("content-type", "application/json"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ]);
    plain_publish(
        &js,
        "bus.evt.shop.order.created",
        Some(h),
        r#"{"order_id": 9, "customer": "c9"}"#.into(),
    )
    .await?;
    let (data, event) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("handler channel closed"))?;
    assert_eq!(
        data,
        OrderCreated {
            order_id: 9,
            customer: "c9".into()
        }
    );
    assert_eq!(event.id, "plain-1");
    assert_eq!(event.source, "/legacy/php");
    assert_eq!(event.subject.as_deref(), Some("order/9"));
    assert_eq!(
        event.traceparent.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    // The time the plain client gave, to the nanosecond.
    assert_eq!(
        event.time.map(std::time::SystemTime::from),
        rfc3339("2026-11-23T10:00:00Z"),
        "{:?}",
        event.time
    );
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_sdk_publish_should_be_readable_by_a_plain_client() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let bus = bus_for(&cluster).await?;
    let before = std::time::SystemTime::now();
    let event = bus.event(&order(5))?.subject("order/5").build();
    let after = std::time::SystemTime::now();
    let receipt = bus.publish_event(&event).await?;

    // Read back with plain async-nats by its stream sequence (a message get: no consumer,
    // whose ordered-consumer stream async-nats sometimes leaves idle for seconds on a
    // fresh 3-node cluster, which made this test time out once in a while).
    let js = async_nats::jetstream::new(cluster.client().await?);
    let stream = js.get_stream("BUS_EVENTS").await?;
    let message = stream.get_raw_message(receipt.seq).await?;
    assert_eq!(message.subject.as_str(), "bus.evt.shop.order.created");
    let h = &message.headers;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(get("ce-id"), Some(event.id.clone()));
    assert_eq!(get("Nats-Msg-Id"), Some(event.id.clone()));
    assert_eq!(get("ce-type").as_deref(), Some("shop.order.created"));
    assert_eq!(get("ce-source").as_deref(), Some("/tests"));
    assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(get("ce-subject").as_deref(), Some("order/5"));
    assert_eq!(get("content-type").as_deref(), Some("application/json"));
    // ce-time is RFC 3339 and says when the event was made: the event's own time, which
    // the builder took between `before` and `after`.
    let time = get("ce-time").ok_or_else(|| anyhow::anyhow!("no ce-time header"))?;
    let stored =
        rfc3339(&time).ok_or_else(|| anyhow::anyhow!("ce-time {time:?} is not RFC 3339"))?;
    assert_eq!(
        Some(stored),
        event.time.map(std::time::SystemTime::from),
        "ce-time {time:?}"
    );
    assert!(
        before <= stored && stored <= after,
        "ce-time {time:?} is not between {before:?} and {after:?}"
    );
    let data: OrderCreated = serde_json::from_slice(&message.payload)?;
    assert_eq!(data, order(5));
    Ok(())
}
