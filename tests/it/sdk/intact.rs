//! Every event intact through the SDK: a publish stores ids, sources and attributes
//! exactly or refuses them at once with a kind no retry changes.

use std::time::Duration;

use bus_sdk::{Bus, Event, EventType, PublishErrorKind};
use bus_tests::NatsCluster;
use bus_tests::fixtures::*;

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
