//! Webhooks end to end: subscriptions made over the API on one node, events posted to
//! another, deliveries signed as Standard Webhooks say to a real receiver on loopback,
//! retried after a 503 with its `Retry-After`, a `410 Gone` disabling the subscription,
//! and addresses the SSRF guard refuses refused at creation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bus_tests::fixtures::*;
use bus_tests::{BusNode, NatsCluster, wait_until};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const ADMIN: &str = "hook-admin-0123456789abcdef";

/// What the receiver got: (path, headers, body) of each request, and how many more
/// requests to `/flaky` it answers 503.
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<(String, HeaderMap, Bytes)>>,
    flaky_left: Mutex<u32>,
}

impl Receiver {
    fn got(&self) -> Vec<(String, HeaderMap, Bytes)> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// Serves `/ok` (204), `/flaky` (503 with `Retry-After: 1` while `flaky_left`, then
/// 200), `/gone` (410) and `/slow` (204 after 100 ms) on loopback; gives the base URL.
async fn receiver(r: Arc<Receiver>) -> anyhow::Result<String> {
    let handler = |path: &'static str| {
        let r = r.clone();
        post(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            async move {
                if let Ok(mut g) = r.got.lock() {
                    g.push((path.to_owned(), headers, body));
                }
                match path {
                    "/gone" => StatusCode::GONE.into_response(),
                    "/slow" => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        StatusCode::NO_CONTENT.into_response()
                    }
                    "/flaky" => {
                        let mut left = r.flaky_left.lock().unwrap_or_else(|p| p.into_inner());
                        if *left > 0 {
                            *left -= 1;
                            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")])
                                .into_response()
                        } else {
                            StatusCode::OK.into_response()
                        }
                    }
                    _ => StatusCode::NO_CONTENT.into_response(),
                }
            }
        })
    };
    let app = Router::new()
        .route("/ok", handler("/ok"))
        .route("/flaky", handler("/flaky"))
        .route("/gone", handler("/gone"))
        .route("/slow", handler("/slow"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// Two nodes on one server, sharing a sealing key, allowed to reach loopback.
async fn nodes(dir: &std::path::Path) -> anyhow::Result<(NatsCluster, BusNode, BusNode)> {
    nodes_with(dir, &[]).await
}

/// [`nodes`], with more settings.
async fn nodes_with(
    dir: &std::path::Path,
    more: &[(&str, &str)],
) -> anyhow::Result<(NatsCluster, BusNode, BusNode)> {
    let cluster = NatsCluster::start(1).await?;
    let key = dir.join("sealing.key");
    std::fs::write(&key, STANDARD.encode([9u8; 32]))?;
    let mut env = node_env(&cluster);
    env.push((
        "BUS__AUTH__API_KEYS".into(),
        json!([{"name": "ops", "key": ADMIN, "admin": true, "publish": [">"]}]).to_string(),
    ));
    env.push((
        "BUS__WEBHOOKS__SECRET_KEY_FILE".into(),
        key.display().to_string(),
    ));
    env.push((
        "BUS__WEBHOOKS__ALLOWED_NETWORKS".into(),
        "127.0.0.0/8".into(),
    ));
    env.push(("BUS__WEBHOOKS__TIMEOUT".into(), "2s".into()));
    for (k, v) in more {
        env.push(((*k).into(), (*v).into()));
    }
    let a = start("hooks-a", &env).await?;
    let b = start("hooks-b", &env).await?;
    Ok((cluster, a, b))
}

async fn create(node: &BusNode, body: Value) -> anyhow::Result<(u16, Value)> {
    let r = http()?
        .post(format!("{}/v1/webhooks", node.url()))
        .header("x-api-key", ADMIN)
        .json(&body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

async fn publish(node: &BusNode, id: &str) -> anyhow::Result<()> {
    let r = http()?
        .post(format!("{}/v1/events", node.url()))
        .header("x-api-key", ADMIN)
        .header("content-type", "application/cloudevents+json")
        .body(ce(id, "shop.order.created", json!({"n": id})).to_string())
        .send()
        .await?;
    anyhow::ensure!(r.status() == 202, "publish {id}: {}", r.status());
    Ok(())
}

/// Whether `headers` carry a valid Standard Webhooks signature of `body` under `secret`.
fn signed(headers: &HeaderMap, body: &[u8], secret: &str) -> anyhow::Result<bool> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = STANDARD.decode(secret.trim_start_matches("whsec_"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)?;
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    Ok(h("webhook-signature").split(' ').any(|s| s == expected))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_subscription_each_event_should_be_delivered_signed_and_retried_after_a_503()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, a, b) = nodes(dir.path()).await?;
    let r = Arc::new(Receiver::default());
    *r.flaky_left.lock().map_err(|e| anyhow::anyhow!("{e}"))? = 2;
    let base = receiver(r.clone()).await?;

    let (status, sub) = create(
        &a,
        json!({"url": format!("{base}/flaky"), "types": ["shop.>"]}),
    )
    .await?;
    assert_eq!(status, 201, "{sub}");
    let secret = sub["secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("whsec_"), "{sub}");
    let id = sub["id"].as_str().unwrap_or_default().to_owned();
    // The secret is shown once: never in a read.
    let read: Value = http()?
        .get(format!("{}/v1/webhooks/{id}", b.url()))
        .header("x-api-key", ADMIN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(read["url"], sub["url"]);
    assert!(read.get("secret").is_none(), "{read}");

    let ids: Vec<String> = (0..10).map(|i| format!("hook-{i}")).collect();
    for (i, event) in ids.iter().enumerate() {
        publish(if i % 2 == 0 { &a } else { &b }, event).await?;
    }
    wait_until("every event answered 200", Duration::from_secs(30), || {
        let delivered: std::collections::HashSet<String> = r
            .got()
            .iter()
            .filter_map(|(_, h, _)| h.get("webhook-id")?.to_str().ok().map(str::to_owned))
            .collect();
        delivered.len() == ids.len() && r.got().len() >= ids.len() + 2
    })
    .await?;
    let got = r.got();
    let mut per_id: HashMap<String, u32> = HashMap::new();
    for (_, headers, body) in &got {
        assert!(
            signed(headers, body, &secret)?,
            "a valid signature: {headers:?}"
        );
        let event: Value = serde_json::from_slice(body)?;
        let wid = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(event["id"], wid, "webhook-id is the event id");
        assert_eq!(event["type"], "shop.order.created");
        assert_eq!(event["data"], json!({"n": wid}));
        *per_id.entry(wid.to_owned()).or_default() += 1;
    }
    assert_eq!(per_id.len(), ids.len());
    // The two 503s were retried: 12 requests for 10 events.
    assert_eq!(got.len(), ids.len() + 2, "{per_id:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_410_gone_the_subscription_should_be_disabled_and_refused_addresses_never_made()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, a, _b) = nodes(dir.path()).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;
    let (status, sub) = create(
        &a,
        json!({"url": format!("{base}/gone"), "types": ["shop.>"]}),
    )
    .await?;
    assert_eq!(status, 201, "{sub}");
    let id = sub["id"].as_str().unwrap_or_default().to_owned();
    publish(&a, "gone-1").await?;
    let url = format!("{}/v1/webhooks/{id}", a.url());
    let client = http()?;
    let mut last = Value::Null;
    for _ in 0..100 {
        last = client
            .get(&url)
            .header("x-api-key", ADMIN)
            .send()
            .await?
            .json()
            .await?;
        if last["enabled"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["enabled"], false, "{last}");
    assert!(
        last["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{last}"
    );
    // Addresses the guard refuses are refused when the subscription is made.
    for url in [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/",
        "ftp://example.com/",
    ] {
        let (status, body) = create(&a, json!({"url": url, "types": ["shop.>"]})).await?;
        assert_eq!(status, 400, "{url}: {body}");
    }
    let (status, _) = create(
        &a,
        json!({"url": format!("{base}/ok"), "types": ["Not A Type"]}),
    )
    .await?;
    assert_eq!(status, 400);
    // Deleted: gone from the list, its consumer too.
    let r_del = client
        .delete(&url)
        .header("x-api-key", ADMIN)
        .send()
        .await?;
    assert_eq!(r_del.status(), 204);
    let list: Value = client
        .get(format!("{}/v1/webhooks", a.url()))
        .header("x-api-key", ADMIN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list["webhooks"], json!([]), "{list}");
    // 410 is final: the event was not retried.
    let paths: Vec<String> = r.got().into_iter().map(|(p, _, _)| p).collect();
    assert_eq!(paths, vec!["/gone".to_owned()]);
    Ok(())
}

/// The distinct `webhook-id`s the receiver got.
fn delivered_ids(r: &Receiver) -> std::collections::HashSet<String> {
    r.got()
        .iter()
        .filter_map(|(_, h, _)| h.get("webhook-id")?.to_str().ok().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_node_killed_mid_delivery_every_event_should_still_be_delivered()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, mut a, b) = nodes(dir.path()).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;
    let (status, sub) = create(
        &b,
        json!({"url": format!("{base}/slow"), "types": ["shop.>"]}),
    )
    .await?;
    assert_eq!(status, 201, "{sub}");
    // Both nodes deliver: wait until a's member is there too (two members' pulls).
    let group = format!("webhook-{}", sub["id"].as_str().unwrap_or_default());
    let client = http()?;
    let groups_url = format!("{}/v1/groups", b.url());
    let mut members = 0;
    for _ in 0..100 {
        let g: Value = client
            .get(&groups_url)
            .header("x-api-key", ADMIN)
            .send()
            .await?
            .json()
            .await?;
        members = g["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|x| x["name"] == group.as_str()))
            .and_then(|x| x["members"].as_array().map(Vec::len))
            .unwrap_or(0);
        if members == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(members, 2, "both nodes run the subscription's member");
    let ids: Vec<String> = (0..60).map(|i| format!("kill-{i}")).collect();
    for event in &ids {
        publish(&b, event).await?;
    }
    wait_until("some deliveries under way", Duration::from_secs(20), || {
        delivered_ids(&r).len() >= 5
    })
    .await?;
    a.kill()?;
    // What a had in flight comes back after the ack deadline (timeout 2 s + 10 s).
    wait_until("every event delivered", Duration::from_secs(40), || {
        delivered_ids(&r).len() == ids.len()
    })
    .await?;
    let delivered = delivered_ids(&r);
    let missing: Vec<_> = ids.iter().filter(|i| !delivered.contains(*i)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    Ok(())
}
