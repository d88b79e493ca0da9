//! Every event intact at the edge: ids, sources and attributes are stored exactly as
//! posted or refused with a 4xx naming the attribute; identity is source + id; a value
//! too long for NATS is a permanent refusal, never a 503, and the answer stays short.

use bus_tests::NatsCluster;
use bus_tests::fixtures::*;
use serde_json::{Value, json};

/// POSTs `body` (structured mode, or a batch when it is an array).
async fn post(client: &reqwest::Client, base: &str, body: &Value) -> anyhow::Result<(u16, String)> {
    let ct = if body.is_array() {
        "application/cloudevents-batch+json"
    } else {
        "application/cloudevents+json"
    };
    let r = client
        .post(format!("{base}/v1/events"))
        .header("content-type", ct)
        .body(body.to_string())
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// The `detail` of a problem body ("" if it has none).
fn detail(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn event(id: &str, source: &str, event_type: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": source, "type": event_type, "data": {"n": 1}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_values_nats_would_trim_should_refuse_them_naming_the_attribute() -> anyhow::Result<()>
{
    let cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "intact-ws").await?;
    let bus = bus_for(&cluster).await?;
    let client = http()?;
    let base = node.url();
    let (status, body) = post(&client, &base, &event("ws-1", "/s", "shop.order.created")).await?;
    assert_eq!(status, 202, "{body}");
    let mut ext = event("ws-2", "/s", "shop.order.created");
    ext["tenant"] = json!("acme ");
    let cases = [
        (
            "leading space in id",
            event(" ws-1", "/s", "shop.order.created"),
            "\"id\"",
        ),
        (
            "trailing space in id",
            event("ws-1 ", "/s", "shop.order.created"),
            "\"id\"",
        ),
        (
            "whitespace-only id",
            event("   ", "/s", "shop.order.created"),
            "\"id\"",
        ),
        (
            "tab-padded source",
            event("ws-3", "\t/s", "shop.order.created"),
            "\"source\"",
        ),
        ("trailing space in an extension", ext, "\"tenant\""),
    ];
    for (name, e, attribute) in cases {
        let (status, body) = post(&client, &base, &e).await?;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(
            detail(&body).contains(attribute),
            "{name}: {body} names {attribute}"
        );
    }
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_one_id_from_two_sources_should_store_both_and_a_duplicate_shows_the_stored_event()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "intact-dedup").await?;
    let bus = bus_for(&cluster).await?;
    let client = http()?;
    let base = node.url();
    let (status, a) = post(&client, &base, &event("same-1", "/a", "shop.order.created")).await?;
    assert_eq!(status, 202, "{a}");
    let a: Value = serde_json::from_str(&a)?;
    let (status, b) = post(&client, &base, &event("same-1", "/b", "shop.order.paid")).await?;
    assert_eq!(status, 202, "{b}");
    let b: Value = serde_json::from_str(&b)?;
    assert_eq!(b["duplicate"], false, "another source's event: {b}");
    assert_ne!(a["seq"], b["seq"]);
    assert_eq!(b["type"], "shop.order.paid");
    // The first source again, with another type: a duplicate, answered with what is stored.
    let (status, again) = post(
        &client,
        &base,
        &event("same-1", "/a", "shop.order.cancelled"),
    )
    .await?;
    assert_eq!(status, 202, "{again}");
    let again: Value = serde_json::from_str(&again)?;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["seq"], a["seq"], "{again}");
    assert_eq!(again["type"], "shop.order.created", "{again}");
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_values_too_long_for_nats_should_refuse_them_permanently_with_a_short_answer()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "intact-long").await?;
    let bus = bus_for(&cluster).await?;
    let client = http()?;
    let base = node.url();
    let long = "x".repeat(40 * 1024);
    let mut long_ext = event("long-ext", "/s", "shop.order.created");
    long_ext["tenant"] = json!("t".repeat(5 * 1024));
    let mut many_ext = event("many-ext", "/s", "shop.order.created");
    for i in 0..12 {
        many_ext[format!("ext{i}")] = json!("v".repeat(4000));
    }
    let cases = [
        (
            "40 KiB id",
            event(&long, "/s", "shop.order.created"),
            400,
            "\"id\"",
        ),
        (
            "40 KiB source",
            event("long-src", &long, "shop.order.created"),
            400,
            "\"source\"",
        ),
        (
            "40 KiB id in a batch",
            json!([
                event("fine-1", "/s", "shop.order.created"),
                event(&long, "/s", "shop.order.created")
            ]),
            400,
            "\"id\"",
        ),
        ("5 KiB extension", long_ext, 400, "\"tenant\""),
        ("48 KB of extensions", many_ext, 413, "headers"),
    ];
    for (name, e, expected, names) in cases {
        let (status, body) = post(&client, &base, &e).await?;
        assert_eq!(status, expected, "{name}: {}", &body[..body.len().min(300)]);
        assert!(body.len() < 1024, "{name}: a {} byte answer", body.len());
        assert!(
            detail(&body).contains(names),
            "{name}: {body} names {names}"
        );
    }
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, 0);
    Ok(())
}
