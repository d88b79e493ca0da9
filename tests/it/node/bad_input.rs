//! Every kind of bad input gets its status and a problem+json body, and nothing is
//! stored; no input hurts the node.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, Probe, try_poll_until};
use serde_json::{Value, json};

const PUBLISHER: &str = "pub-key-0123456789abcdef";
const ADMIN: &str = "adm-key-0123456789abcdef";
const SLOW: &str = "slow-key-0123456789abcdef";

fn keys() -> String {
    json!([
        {"name": "shop", "key": PUBLISHER, "publish": ["shop.>"]},
        {"name": "ops", "key": ADMIN, "admin": true, "publish": [">"]},
        {"name": "slow", "key": SLOW, "publish": [">"], "rate_per_second": 1, "burst": 1},
    ])
    .to_string()
}

struct Case {
    name: &'static str,
    method: reqwest::Method,
    path: &'static str,
    key: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
}

fn case(
    name: &'static str,
    key: Option<&'static str>,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        name,
        method: reqwest::Method::POST,
        path: "/v1/events",
        key,
        content_type,
        body: body.into(),
        status,
    }
}

const CE: Option<&str> = Some("application/cloudevents+json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_bad_inputs_should_answer_each_with_its_status_and_problem_json_and_store_nothing()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let mut env = node_env(&cluster);
    env.push(("BUS__AUTH__API_KEYS".into(), keys()));
    let node = start("strict", &env).await?;
    let client = http()?;
    let good = ce("ok-1", "shop.order.created", json!({"n": 1})).to_string();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases = vec![
        case(
            "malformed JSON",
            Some(PUBLISHER),
            CE,
            "{\"specversion\": ",
            400,
        ),
        case("not an object", Some(PUBLISHER), CE, "[1, 2]", 400),
        case(
            "missing id",
            Some(PUBLISHER),
            CE,
            json!({"specversion": "1.0", "source": "/s", "type": "shop.a"}).to_string(),
            400,
        ),
        case(
            "missing source",
            Some(PUBLISHER),
            CE,
            json!({"specversion": "1.0", "id": "x", "type": "shop.a"}).to_string(),
            400,
        ),
        case(
            "invalid type",
            Some(PUBLISHER),
            CE,
            json!({"specversion": "1.0", "id": "x", "source": "/s", "type": "shop.Order"})
                .to_string(),
            400,
        ),
        case(
            "bad specversion",
            Some(PUBLISHER),
            CE,
            json!({"specversion": "0.3", "id": "x", "source": "/s", "type": "shop.a"}).to_string(),
            400,
        ),
        case(
            "10,000-deep nesting",
            Some(PUBLISHER),
            CE,
            deep.clone(),
            400,
        ),
        case(
            "10,000-deep data",
            Some(PUBLISHER),
            CE,
            format!(
                r#"{{"specversion":"1.0","id":"x","source":"/s","type":"shop.a","data":{deep}}}"#
            ),
            400,
        ),
        case(
            "a duplicate attribute",
            Some(PUBLISHER),
            CE,
            r#"{"specversion":"1.0","id":"x","source":"/s","type":"shop.a","type":"shop.b"}"#,
            400,
        ),
        case(
            "empty batch",
            Some(PUBLISHER),
            Some("application/cloudevents-batch+json"),
            "[]",
            400,
        ),
        case(
            "one bad event in a batch",
            Some(PUBLISHER),
            Some("application/cloudevents-batch+json"),
            json!([ce("b-1", "shop.a", json!(1)), {"specversion": "1.0"}]).to_string(),
            400,
        ),
        case(
            "unknown content type",
            Some(PUBLISHER),
            Some("text/plain"),
            "hello",
            415,
        ),
        case("no content type", Some(PUBLISHER), None, good.clone(), 415),
        case(
            "over the body limit",
            Some(PUBLISHER),
            CE,
            vec![b' '; 2 * 1024 * 1024],
            413,
        ),
        case("no API key", None, CE, good.clone(), 401),
        case(
            "unknown API key",
            Some("nope-0123456789abcdef"),
            CE,
            good.clone(),
            401,
        ),
        case(
            "type not allowed for the key",
            Some(PUBLISHER),
            CE,
            ce("x-1", "billing.paid", json!(1)).to_string(),
            403,
        ),
        Case {
            method: reqwest::Method::GET,
            path: "/v1/groups",
            ..case(
                "admin endpoint, publisher key",
                Some(PUBLISHER),
                None,
                "",
                403,
            )
        },
        Case {
            method: reqwest::Method::GET,
            path: "/v1/dlq",
            ..case("admin endpoint, no key", None, None, "", 401)
        },
        Case {
            method: reqwest::Method::POST,
            path: "/v1/dlq/redrive",
            ..case("redrive, malformed", Some(ADMIN), None, "{", 400)
        },
        Case {
            method: reqwest::Method::GET,
            path: "/v1/dlq?limit=many",
            ..case("dead letters, bad query", Some(ADMIN), None, "", 400)
        },
        Case {
            method: reqwest::Method::GET,
            path: "/v1/dlq?bogus=1",
            ..case("dead letters, bad query, no key", None, None, "", 401)
        },
        Case {
            method: reqwest::Method::GET,
            path: "/v1/events",
            ..case("wrong method", Some(PUBLISHER), None, "", 405)
        },
        Case {
            method: reqwest::Method::GET,
            path: "/v1/nothing",
            ..case("unknown path", None, None, "", 404)
        },
    ];
    for c in &cases {
        let mut req = client
            .request(c.method.clone(), format!("{}{}", node.url(), c.path))
            .body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(key) = c.key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let r = send_until_answered(req).await?;
        assert_eq!(r.status().as_u16(), c.status, "{}", c.name);
        if c.status == 405 {
            assert_eq!(
                r.headers().get("allow").and_then(|v| v.to_str().ok()),
                Some("POST"),
                "{}",
                c.name
            );
        }
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{}",
            c.name
        );
        let body: Value = r.json().await?;
        assert_eq!(body["status"], c.status, "{}", c.name);
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}: {body}",
            c.name
        );
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:bus:problem:")),
            "{}",
            c.name
        );
    }
    let bus = bus_for(&cluster).await?;
    assert_eq!(
        stream_messages(&bus, "BUS_EVENTS").await?,
        0,
        "nothing was stored"
    );

    // The invalid type's detail names the character.
    let r = post_with(
        &client,
        &node.url(),
        PUBLISHER,
        &json!({"specversion": "1.0", "id": "x", "source": "/s", "type": "shop.Order"}),
    )
    .await?;
    let body: Value = r.json().await?;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("'O'") && d.contains("position 5")),
        "{body}"
    );

    // A 50 MiB body (no Content-Length) is refused without reading it all. The node
    // answers 413 once the body passes the bound and closes the connection; the reset of
    // the upload still under way can reach the client before the answer does. So each
    // upload ends in the 413 or in a failed upload, and either way the node must be up,
    // have answered exactly that request with 413, stored nothing, and not have taken
    // the whole body (a crashed or hung node, or one reading everything, fails here).
    // Sent again (a bounded number of times) while the client does not get to read the
    // answer, as `send_until_answered` does for bodies that can be resent.
    let refused_413 = r#"http_server_request_duration_seconds_count{http_request_method="POST",http_route="/v1/events",http_response_status_code="413"}"#;
    let stored_before = stream_messages(&bus, "BUS_EVENTS").await?;
    let mut cut_off = Vec::new();
    for attempt in 1..=5 {
        let refused_before = counter(&metrics_text(&client, &node).await?, refused_413)?;
        let (sent, pulled) = upload_50_mib(&client, &node.url()).await;
        assert_eq!(
            client
                .get(format!("{}/healthz", node.url()))
                .send()
                .await?
                .status(),
            200,
            "the node is up after 50 MiB upload {attempt}"
        );
        assert_eq!(
            counter(&metrics_text(&client, &node).await?, refused_413)?,
            refused_before + 1,
            "the node answered 50 MiB upload {attempt} with 413 (the client saw {sent:?})"
        );
        assert_eq!(
            stream_messages(&bus, "BUS_EVENTS").await?,
            stored_before,
            "50 MiB upload {attempt} stored something"
        );
        assert!(
            pulled < UPLOAD_CHUNKS,
            "the whole of 50 MiB upload {attempt} was taken ({pulled} MiB of {UPLOAD_CHUNKS})"
        );
        match sent {
            Ok(r) => {
                assert_eq!(r.status(), 413, "50 MiB upload {attempt}");
                assert_eq!(
                    r.headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok()),
                    Some("application/problem+json")
                );
                break;
            }
            Err(e) => cut_off.push(e.to_string()),
        }
    }
    if !cut_off.is_empty() {
        eprintln!("50 MiB uploads cut off before their 413 was read: {cut_off:?}");
    }

    // A redrive body over http.max_body_bytes (1 MiB here; axum's own bound is 2 MiB) is
    // refused for its size, not read and parsed.
    let r = send_until_answered(
        client
            .post(format!("{}/v1/dlq/redrive", node.url()))
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(vec![b' '; 2 * 1024 * 1024]),
    )
    .await?;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );

    // Rate: the slow key gets one, then 429 with Retry-After.
    let r = post_with(
        &client,
        &node.url(),
        SLOW,
        &ce("slow-1", "shop.a", json!(1)),
    )
    .await?;
    assert_eq!(r.status(), 202);
    let r = post_with(
        &client,
        &node.url(),
        SLOW,
        &ce("slow-2", "shop.a", json!(1)),
    )
    .await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());

    // The node is unhurt: healthy, and a good event goes through.
    assert_eq!(
        client
            .get(format!("{}/healthz", node.url()))
            .send()
            .await?
            .status(),
        200
    );
    let r = post_with(
        &client,
        &node.url(),
        PUBLISHER,
        &serde_json::from_str(&good)?,
    )
    .await?;
    assert_eq!(r.status(), 202);
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, 2);
    let r = client
        .get(format!("{}/v1/groups", node.url()))
        .header("x-api-key", ADMIN)
        .send()
        .await?;
    assert_eq!(r.status(), 200);

    // A made-up method is refused and counted as `_OTHER`: it adds no series of its own.
    let made_up = reqwest::Method::from_bytes(b"XYZ123")?;
    let r = client
        .request(made_up, format!("{}/v1/events", node.url()))
        .send()
        .await?;
    assert_eq!(r.status(), 405);
    let metrics = metrics_text(&client, &node).await?;
    assert!(!metrics.contains("XYZ123"), "{metrics}");
    assert!(metrics.contains("method=\"_OTHER\""), "{metrics}");
    Ok(())
}

/// Sends `request`, again (a bounded number of times) while the connection fails before
/// an answer is read. The node refuses some requests before reading their bodies (size,
/// content type, key) and then closes the connection, which can reset an upload still
/// under way before the client reads the answer.
async fn send_until_answered(
    request: reqwest::RequestBuilder,
) -> anyhow::Result<reqwest::Response> {
    let mut last = None;
    for _ in 0..10 {
        let attempt = request
            .try_clone()
            .ok_or_else(|| anyhow::anyhow!("a request with a streamed body cannot be resent"))?;
        match attempt.send().await {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("never sent"), anyhow::Error::from))
}

/// 1 MiB chunks in [`upload_50_mib`].
const UPLOAD_CHUNKS: usize = 50;

/// POSTs 50 MiB of `x` to `/v1/events` in 1 MiB chunks, with no Content-Length; gives
/// what the client got and how many chunks the upload took from its stream.
async fn upload_50_mib(
    client: &reqwest::Client,
    base: &str,
) -> (reqwest::Result<reqwest::Response>, usize) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let chunk = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
    let stream = futures::stream::iter((0..UPLOAD_CHUNKS).map({
        let pulled = pulled.clone();
        move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(chunk.clone())
        }
    }));
    let sent = client
        .post(format!("{base}/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .header("authorization", format!("Bearer {PUBLISHER}"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    (sent, pulled.load(Ordering::SeqCst))
}

/// The value of one series (`name{labels}`, as the node writes it) in a metrics text; 0
/// when it is not there yet.
fn counter(metrics: &str, series: &str) -> anyhow::Result<u64> {
    match metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
    {
        Some(value) => Ok(value.trim().parse()?),
        None => Ok(0),
    }
}

async fn post_with(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    event: &Value,
) -> anyhow::Result<reqwest::Response> {
    Ok(client
        .post(format!("{base}/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .header("authorization", format!("Bearer {key}"))
        .body(event.to_string())
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_nats_down_should_answer_503_with_retry_after_and_not_be_ready() -> anyhow::Result<()>
{
    let mut cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "lonely").await?;
    let client = http()?;
    cluster.kill(0)?;
    // The client library notices the dead connection within its ping interval; poll.
    let (client_ref, url) = (&client, node.url());
    let url = url.as_str();
    let r = try_poll_until(
        "a 503 with NATS down",
        Duration::from_secs(30),
        || async move {
            let r = post_event(client_ref, url, &ce("x-1", "shop.a", json!(1))).await?;
            Ok(if r.status() == 503 {
                Probe::Ready(r)
            } else {
                Probe::NotYet(format!("still {} with NATS down", r.status()))
            })
        },
    )
    .await?;
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let r = client.get(format!("{}/readyz", node.url())).send().await?;
    assert_eq!(r.status(), 503);
    assert_eq!(
        client
            .get(format!("{}/healthz", node.url()))
            .send()
            .await?
            .status(),
        200
    );
    // Back up: ready again, publishing again.
    cluster.restart(0).await?;
    try_poll_until(
        "ready after NATS came back",
        Duration::from_secs(30),
        || async move {
            let status = client_ref
                .get(format!("{url}/readyz"))
                .send()
                .await?
                .status();
            Ok(if status == 200 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("/readyz answers {status}"))
            })
        },
    )
    .await?;
    let r = post_event(&client, &node.url(), &ce("x-2", "shop.a", json!(1))).await?;
    assert_eq!(r.status(), 202);
    Ok(())
}
