//! Every event intact through the SDK: a publish stores ids, sources and attributes
//! exactly or refuses them at once with a kind no retry changes; identity is source + id,
//! and a plain client that computes the documented `Nats-Msg-Id` is de-duplicated with
//! the SDK's publishes.

use std::time::Duration;

use bus_sdk::{Bus, Event, EventType, PublishErrorKind};
use bus_tests::NatsCluster;
use bus_tests::fixtures::*;
use sha2::{Digest, Sha256};

/// The `Nats-Msg-Id` as the README tells a plain client to compute it, written here from
/// the README, not taken from bus-core.
fn readme_dedup_id(source: &str, id: &str) -> String {
    let mut input = source.as_bytes().to_vec();
    input.push(0);
    input.extend_from_slice(id.as_bytes());
    format!("ce1-{}", hex::encode(Sha256::digest(&input)))
}

fn event(source: &str, id: &str, event_type: &str) -> anyhow::Result<Event> {
    Ok(Event::builder(EventType::new(event_type)?, source)
        .id(id)
        .data("application/json", &b"{}"[..])
        .build())
}

/// What `publish_event` of `e` ends in: its error kind, or `None` if stored; within 5 s
/// (a refusal is at once, never after the publish deadline's retries).
async fn outcome(bus: &Bus, e: &Event) -> anyhow::Result<Option<PublishErrorKind>> {
    let r = tokio::time::timeout(Duration::from_secs(5), bus.publish_event(e)).await?;
    Ok(r.err().map(|err| err.kind()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_values_nats_would_alter_or_refuse_should_fail_the_publish_as_invalid()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let t = "shop.order.created";
    assert_eq!(outcome(&bus, &event("/s", "ws-1", t)?).await?, None);
    let long = "x".repeat(40 * 1024);
    let mut many = event("/s", "many-ext", t)?;
    for i in 0..12 {
        many.extensions.insert(format!("ext{i}"), "v".repeat(4000));
    }
    let cases = [
        (
            "leading space",
            event("/s", " ws-1", t)?,
            PublishErrorKind::InvalidEvent,
        ),
        (
            "whitespace-only id",
            event("/s", "   ", t)?,
            PublishErrorKind::InvalidEvent,
        ),
        (
            "padded source",
            event("/s ", "ws-2", t)?,
            PublishErrorKind::InvalidEvent,
        ),
        (
            "40 KiB id",
            event("/s", &long, t)?,
            PublishErrorKind::InvalidEvent,
        ),
        (
            "40 KiB source",
            event(&long, "ws-3", t)?,
            PublishErrorKind::InvalidEvent,
        ),
        ("48 KB of extensions", many, PublishErrorKind::TooLarge),
    ];
    for (name, e, kind) in cases {
        assert_eq!(outcome(&bus, &e).await?, Some(kind), "{name}");
    }
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_one_id_from_two_sources_should_store_both_and_a_plain_client_computes_the_same_id()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let a = bus
        .publish_event(&event("/a", "same-1", "shop.order.created")?)
        .await?;
    let b = bus
        .publish_event(&event("/b", "same-1", "shop.order.paid")?)
        .await?;
    assert!(!b.duplicate, "another source's event is another event");
    assert_ne!(a.seq, b.seq);
    // The first source's id again, with another type: the stored event's sequence and type.
    let again = bus
        .publish_event(&event("/a", "same-1", "shop.order.cancelled")?)
        .await?;
    assert!(again.duplicate);
    assert_eq!(
        (again.seq, again.event_type.as_str()),
        (a.seq, "shop.order.created")
    );

    // A plain client with the README's Nats-Msg-Id is the same event as the SDK's.
    let js = async_nats::jetstream::new(cluster.client().await?);
    let stored = js
        .get_stream("BUS_EVENTS")
        .await?
        .get_raw_message(b.seq)
        .await?;
    let msg_id = stored
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned());
    assert_eq!(msg_id, Some(readme_dedup_id("/b", "same-1")));
    let h = nats_headers(&[
        ("ce-id", "plain-1"),
        ("ce-source", "/legacy/php"),
        ("ce-type", "shop.order.created"),
        ("ce-specversion", "1.0"),
        ("Nats-Msg-Id", &readme_dedup_id("/legacy/php", "plain-1")),
    ]);
    plain_publish(&js, "bus.evt.shop.order.created", Some(h), "{}".into()).await?;
    let sdk = bus
        .publish_event(&event("/legacy/php", "plain-1", "shop.order.created")?)
        .await?;
    assert!(sdk.duplicate, "the plain client's event is this one");
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, 3);
    Ok(())
}
