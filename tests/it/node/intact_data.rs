//! Structured-mode `data` reaches consumers exactly as the producer wrote it: numbers,
//! key order, duplicate keys, escapes and whitespace, one event at a time and in
//! batches, as the SDK and a plain NATS client read it back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};
use serde_json::Value;

/// JSON data that a parse into `serde_json::Value` and back would change.
const DATA: &[(&str, &str)] = &[
    ("big integer", r#"{"n": 12345678901234567890123}"#),
    ("exponent", r#"{"x": 1e2, "y": 1E+2, "z": 0.1e-7}"#),
    ("long decimal", "3.14159265358979323846"),
    ("negative zero", "[-0, -0.0]"),
    ("key order", r#"{"z": 1, "a": 2, "m": 3}"#),
    ("duplicate keys", r#"{"a": 1, "a": 2}"#),
    (
        "nested",
        r#"{"a": [1, [2, {"b": [3, {"c": {}}]}], []], "d": {"e": {"f": null}}}"#,
    ),
    (
        "escapes and unicode",
        r#"{"s": "tab\t quote\" back\\ \u00e9 é 😀 \ud83d\ude00 \/ \n"}"#,
    ),
    ("string", r#""\u0041BC""#),
    ("null", "null"),
    ("empty object", "{}"),
    ("whitespace inside", "{ \"a\" :\n\t[ 1 ,2 ] }"),
];

fn envelope(id: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/tests/http","type":"shop.data.kept","data":{data}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_structured_and_batch_events_should_store_and_deliver_their_data_bytes_as_sent()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "node").await?;
    let client = http()?;
    let url = format!("{}/v1/events", node.url());
    // id -> (data as sent, stream sequence)
    let mut sent: HashMap<String, (&str, u64)> = HashMap::new();
    for (i, (name, data)) in DATA.iter().enumerate() {
        let id = format!("one-{i}");
        let r = client
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(envelope(&id, data))
            .send()
            .await?;
        assert_eq!(r.status(), 202, "{name}: {}", r.text().await?);
        let body: Value = r.json().await?;
        let seq = body["seq"].as_u64().unwrap_or_default();
        sent.insert(id, (data, seq));
    }
    let batch = DATA
        .iter()
        .enumerate()
        .map(|(i, (_, data))| envelope(&format!("batch-{i}"), data))
        .collect::<Vec<_>>()
        .join(",\n ");
    let r = client
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(format!("[{batch}]"))
        .send()
        .await?;
    assert_eq!(r.status(), 202, "batch: {}", r.text().await?);
    let receipts: Value = r.json().await?;
    for (i, (_, data)) in DATA.iter().enumerate() {
        let seq = receipts[i]["seq"].as_u64().unwrap_or_default();
        sent.insert(format!("batch-{i}"), (data, seq));
    }

    // A plain NATS client: a direct get of each stored message.
    let bus = bus_for(&cluster).await?;
    let stream = bus.jetstream().get_stream("BUS_EVENTS").await?;
    for (id, (data, seq)) in &sent {
        let m = stream.direct_get(*seq).await?;
        assert_eq!(
            m.headers.get("ce-id").map(|v| v.as_str()),
            Some(id.as_str())
        );
        assert_eq!(
            String::from_utf8_lossy(&m.payload),
            *data,
            "{id}: stored payload"
        );
        assert_eq!(
            m.headers.get("content-type").map(|v| v.as_str()),
            Some("application/json"),
            "{id}"
        );
    }

    // The SDK: a broadcast handler that takes every event raw.
    let seen: Arc<Mutex<HashMap<String, bytes::Bytes>>> = Arc::default();
    let record = seen.clone();
    let sub = bus
        .broadcast()
        .on_any(
            bus_core::EventPattern::new("shop.>")?,
            move |m: bus_sdk::EventMeta| {
                let record = record.clone();
                async move {
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(m.event.id.clone(), m.event.data.clone());
                    Ok::<(), bus_sdk::HandlerError>(())
                }
            },
        )
        .start_at(bus_sdk::StartAt::All)
        .start()
        .await?;
    wait_until("the SDK saw every event", Duration::from_secs(10), || {
        seen.lock().unwrap_or_else(|p| p.into_inner()).len() == sent.len()
    })
    .await?;
    sub.shutdown().await;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (id, (data, _)) in &sent {
        let got = seen
            .get(id)
            .map(|b| String::from_utf8_lossy(b).into_owned());
        assert_eq!(
            got.as_deref(),
            Some(*data),
            "{id}: data delivered by the SDK"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_duplicate_attribute_should_refuse_the_event_naming_it() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "node").await?;
    let client = http()?;
    let url = format!("{}/v1/events", node.url());
    let twice = r#"{"specversion":"1.0","id":"a","source":"/s","type":"shop.a","id":"b"}"#;
    for (ct, body) in [
        ("application/cloudevents+json", twice.to_owned()),
        (
            "application/cloudevents-batch+json",
            format!("[{}, {twice}]", envelope("fine", "1")),
        ),
    ] {
        let r = client
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{ct}");
        let problem: Value = r.json().await?;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("\"id\""), "{ct}: {detail}");
    }
    let bus = bus_for(&cluster).await?;
    assert_eq!(
        stream_messages(&bus, "BUS_EVENTS").await?,
        0,
        "nothing stored"
    );
    Ok(())
}
