//! The questionable rest of the edge: credentials that contradict each other, requests
//! without one Host, bodies that never complete, batches no wait would let through,
//! attributes of the wrong format, guessed keys, and where `/metrics` is served. Each
//! refused request stores nothing.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{BusNode, NatsCluster, reserve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "edge-key-0123456789abcdef";
const SMALL: &str = "small-key-0123456789abcdef";

fn keys() -> String {
    json!([
        {"name": "edge", "key": KEY, "publish": [">"]},
        {"name": "small", "key": SMALL, "publish": [">"], "rate_per_second": 100, "burst": 2},
    ])
    .to_string()
}

async fn node(
    name: &str,
    more: &[(&str, &str)],
) -> anyhow::Result<(NatsCluster, BusNode, bus_sdk::Bus)> {
    let cluster = NatsCluster::start(1).await?;
    let mut env = node_env(&cluster);
    env.push(("BUS__AUTH__API_KEYS".into(), keys()));
    for (k, v) in more {
        env.push(((*k).into(), (*v).into()));
    }
    let node = start(name, &env).await?;
    let bus = bus_for(&cluster).await?;
    Ok((cluster, node, bus))
}

/// The status and problem type of an answer.
async fn answer(r: reqwest::Response) -> anyhow::Result<(u16, String)> {
    let status = r.status().as_u16();
    let body: Value = r.json().await?;
    Ok((status, body["type"].as_str().unwrap_or_default().to_owned()))
}

fn events_url(node: &BusNode) -> String {
    format!("{}/v1/events", node.url())
}

/// Sends raw bytes on a fresh connection and reads the answer's status line.
async fn raw(node: &BusNode, request: &[u8]) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(node.url().trim_start_matches("http://")).await?;
    s.write_all(request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_questionable_requests_should_refuse_each_with_its_4xx_and_store_nothing()
-> anyhow::Result<()> {
    let (_cluster, node, bus) = node("edges", &[("BUS__HTTP__BODY_READ_TIMEOUT", "500ms")]).await?;
    let client = http()?;
    let good = ce("edge-1", "shop.a", json!({"n": 1})).to_string();
    let post = || {
        client
            .post(events_url(&node))
            .header("content-type", "application/cloudevents+json")
    };

    // Two credentials: which one counts would be a guess.
    let r = post()
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-api-key", KEY)
        .body(good.clone())
        .send()
        .await?;
    assert_eq!(
        answer(r).await?,
        (400, "urn:bus:problem:ambiguous-credentials".into())
    );
    let r = post()
        .header("x-api-key", KEY)
        .header("x-api-key", "another-0123456789abcdef")
        .body(good.clone())
        .send()
        .await?;
    assert_eq!(
        answer(r).await?,
        (400, "urn:bus:problem:ambiguous-credentials".into())
    );

    // HTTP/1.1 without a Host, or with two.
    let body = good.as_bytes();
    let without = format!(
        "POST /v1/events HTTP/1.1\r\nx-api-key: {KEY}\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{good}",
        body.len()
    );
    assert!(
        raw(&node, without.as_bytes())
            .await?
            .starts_with("HTTP/1.1 400")
    );
    let two = format!(
        "POST /v1/events HTTP/1.1\r\nHost: a\r\nHost: b\r\nx-api-key: {KEY}\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{good}",
        body.len()
    );
    assert!(
        raw(&node, two.as_bytes())
            .await?
            .starts_with("HTTP/1.1 400")
    );

    // A body that never completes: 408 after http.body_read_timeout, then the
    // connection closes.
    let started = tokio::time::Instant::now();
    let stalled = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 1000\r\n\r\n{{\"specversion\""
    );
    let status = raw(&node, stalled.as_bytes()).await?;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(started.elapsed() >= Duration::from_millis(500));

    // A batch bigger than the key's burst could never be let through: 413, not 429;
    // and the refusal spends none of the key's tokens.
    let batch = json!([
        ce("b-1", "shop.a", json!(1)),
        ce("b-2", "shop.a", json!(2)),
        ce("b-3", "shop.a", json!(3)),
    ]);
    let r = client
        .post(events_url(&node))
        .header("content-type", "application/cloudevents-batch+json")
        .header("x-api-key", SMALL)
        .body(batch.to_string())
        .send()
        .await?;
    let (status, kind) = answer(r).await?;
    assert_eq!(
        (status, kind.as_str()),
        (413, "urn:bus:problem:batch-over-burst")
    );

    // Binary mode with a JSON content type: the body must be JSON.
    let binary = |data: &'static str| {
        client
            .post(events_url(&node))
            .header("x-api-key", KEY)
            .header("ce-specversion", "1.0")
            .header("ce-id", "bin-1")
            .header("ce-source", "/edges")
            .header("ce-type", "shop.a")
            .header("content-type", "application/json")
            .body(data)
    };
    let r = binary("{not json").send().await?;
    assert_eq!(
        answer(r).await?,
        (400, "urn:bus:problem:malformed-json".into())
    );

    // Attributes with a format: dataschema a URI, traceparent W3C.
    for (attribute, value) in [("dataschema", "order.json"), ("traceparent", "garbage")] {
        let mut event = ce("fmt-1", "shop.a", json!(1));
        event[attribute] = json!(value);
        let r = post()
            .header("x-api-key", KEY)
            .body(event.to_string())
            .send()
            .await?;
        let status = r.status().as_u16();
        let body: Value = r.json().await?;
        assert_eq!(status, 400, "{attribute}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(attribute)),
            "{attribute}: {body}"
        );
    }
    assert_eq!(
        stream_messages(&bus, "BUS_EVENTS").await?,
        0,
        "nothing was stored"
    );

    // What the rules let through still goes through.
    let r = binary("{\"n\": 1}").send().await?;
    assert_eq!(r.status(), 202);
    let mut event = ce("fmt-2", "shop.a", json!(1));
    event["dataschema"] = json!("https://schemas.example.com/a.json");
    event["traceparent"] = json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let r = post()
        .header("x-api-key", KEY)
        .body(event.to_string())
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let r = client
        .post(events_url(&node))
        .header("content-type", "application/cloudevents-batch+json")
        .header("x-api-key", SMALL)
        .body(json!([ce("s-1", "shop.a", json!(1)), ce("s-2", "shop.a", json!(2))]).to_string())
        .send()
        .await?;
    assert_eq!(r.status(), 202, "a batch within the burst");
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_wrong_keys_from_one_address_should_throttle_that_address_only() -> anyhow::Result<()>
{
    let (_cluster, node, bus) = node("guessed", &[]).await?;
    let from = |ip: Ipv4Addr| {
        bus_core::tls::install_crypto_provider();
        reqwest::Client::builder()
            .local_address(IpAddr::V4(ip))
            .timeout(Duration::from_secs(10))
            .build()
    };
    let guesser = from(Ipv4Addr::new(127, 0, 0, 1))?;
    let neighbour = from(Ipv4Addr::new(127, 0, 0, 2))?;
    let send = |client: &reqwest::Client, key: &str, id: &str| {
        client
            .post(events_url(&node))
            .header("content-type", "application/cloudevents+json")
            .header("x-api-key", key)
            .body(ce(id, "shop.a", json!(1)).to_string())
            .send()
    };
    let mut statuses = Vec::new();
    for i in 0..25 {
        let r = send(&guesser, &format!("guess-{i:04}-0123456789abcdef"), "g").await?;
        statuses.push(r.status().as_u16());
    }
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        (20..25).contains(&unauthorized) && statuses.last() == Some(&429),
        "a burst of 401s, then 429: {statuses:?}"
    );
    // The guessing address is refused before its key is looked at, right or not...
    let r = send(&guesser, KEY, "right-key").await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    // ...and another address is not affected.
    let r = send(&neighbour, KEY, "neighbour").await?;
    assert_eq!(r.status(), 202);
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_metrics_listener_should_serve_metrics_there_only() -> anyhow::Result<()> {
    let port = reserve(1)?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no port"))?;
    let addr = format!("127.0.0.1:{}", port.port());
    drop(port);
    let (_cluster, node, _bus) =
        node("metrics-apart", &[("BUS__HTTP__METRICS_LISTEN", &addr)]).await?;
    let client = http()?;
    let main = client.get(format!("{}/metrics", node.url())).send().await?;
    assert_eq!(main.status(), 404, "not on http.listen");
    let apart = client.get(format!("http://{addr}/metrics")).send().await?;
    assert_eq!(apart.status(), 200);
    assert!(
        apart
            .text()
            .await?
            .contains("http_server_request_duration_seconds_count")
    );
    let events = client
        .get(format!("http://{addr}/v1/groups"))
        .send()
        .await?;
    assert_eq!(
        events.status(),
        404,
        "the metrics listener serves nothing else"
    );
    Ok(())
}
