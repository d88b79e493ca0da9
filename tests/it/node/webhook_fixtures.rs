//! What the webhook suites share: a receiver on loopback that records every request and
//! answers per path, nodes set up for webhooks, the API calls, and a Standard Webhooks
//! verifier written from the specification (not the bus's signing code).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bus_tests::fixtures::*;
use bus_tests::{BusNode, NatsCluster};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

pub const ADMIN: &str = "hook-admin-0123456789abcdef";
/// A key with the `webhooks` scope only.
pub const HOOKS: &str = "hook-scope-0123456789abcdef";
/// A key that may only publish.
pub const PUBLISHER: &str = "hook-publisher-0123456789ab";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn event(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What the receiver got, and how many more requests to each failing path it fails.
#[derive(Default)]
pub struct Receiver {
    got: Mutex<Vec<Got>>,
    /// `/flaky`: 503 with `Retry-After: 1` while this is above 0.
    pub flaky_left: Mutex<u32>,
    /// `/fails`: 500 while this is above 0.
    pub fails_left: Mutex<u32>,
    /// `/limited`: 429 with `Retry-After: 2` while this is above 0.
    pub limited_left: Mutex<u32>,
    /// `/gate` answers once this is set (or after a minute).
    released: std::sync::atomic::AtomicBool,
    release: tokio::sync::Notify,
    /// Answers `/gate` has given.
    pub gate_answered: std::sync::atomic::AtomicUsize,
}

fn take_one(left: &Mutex<u32>) -> bool {
    let mut left = left.lock().unwrap_or_else(|p| p.into_inner());
    if *left > 0 {
        *left -= 1;
        true
    } else {
        false
    }
}

pub fn set(left: &Mutex<u32>, n: u32) {
    *left.lock().unwrap_or_else(|p| p.into_inner()) = n;
}

impl Receiver {
    /// Lets every held and later `/gate` request answer.
    pub fn open_gate(&self) {
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.release.notify_waiters();
    }

    async fn gate(&self) {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.released.load(std::sync::atomic::Ordering::SeqCst) {
            let notified = self.release.notified();
            if self.released.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                break;
            }
        }
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The requests to `path`, or to paths under it (`/hooks` takes `/hooks/7`).
    pub fn at(&self, path: &str) -> Vec<Got> {
        self.got()
            .into_iter()
            .filter(|g| {
                g.path
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .collect()
    }

    /// The distinct `webhook-id`s got on `path`.
    pub fn ids(&self, path: &str) -> HashSet<String> {
        self.at(path)
            .iter()
            .map(|g| g.header("webhook-id").to_owned())
            .collect()
    }
}

/// Serves on loopback, recording each request: `/ok` (204), `/flaky`, `/fails`,
/// `/limited` (see [`Receiver`]), `/gone` (410), `/slow` (204 after 100 ms), `/slow5`
/// (204 after 5 s), `/gate` (204 after 5 s and [`Receiver::open_gate`]) and `/hooks/{name}` (204, one path per subscription). Gives the base
/// URL.
pub async fn receiver(r: Arc<Receiver>) -> anyhow::Result<String> {
    let handler = |path: &'static str| {
        let r = r.clone();
        post(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let r = r.clone();
                async move {
                    if let Ok(mut g) = r.got.lock() {
                        g.push(Got {
                            path: uri.path().to_owned(),
                            headers,
                            body,
                            at: Instant::now(),
                        });
                    }
                    match path {
                        "/gone" => StatusCode::GONE.into_response(),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            StatusCode::NO_CONTENT.into_response()
                        }
                        "/slow5" => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            StatusCode::NO_CONTENT.into_response()
                        }
                        "/gate" => {
                            // At least 5 s, and until the test opens the gate.
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            r.gate().await;
                            r.gate_answered
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            StatusCode::NO_CONTENT.into_response()
                        }
                        "/flaky" if take_one(&r.flaky_left) => {
                            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")])
                                .into_response()
                        }
                        "/fails" if take_one(&r.fails_left) => {
                            StatusCode::INTERNAL_SERVER_ERROR.into_response()
                        }
                        "/limited" if take_one(&r.limited_left) => {
                            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")]).into_response()
                        }
                        "/flaky" | "/fails" | "/limited" => StatusCode::OK.into_response(),
                        _ => StatusCode::NO_CONTENT.into_response(),
                    }
                }
            },
        )
    };
    let mut app = Router::new();
    for path in [
        "/ok", "/flaky", "/fails", "/limited", "/gone", "/slow", "/slow5", "/gate",
    ] {
        app = app.route(path, handler(path));
    }
    app = app.route("/hooks/{name}", handler("/hooks"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// The settings of a webhook test node on `cluster`: three keys (admin, `webhooks`
/// scope, publish only), the sealing key in `dir`, loopback allowed, 2 s attempts, and
/// `more`.
pub fn hook_env(
    cluster: &NatsCluster,
    dir: &std::path::Path,
    more: &[(&str, &str)],
) -> anyhow::Result<Vec<(String, String)>> {
    let key = dir.join("sealing.key");
    std::fs::write(&key, STANDARD.encode([9u8; 32]))?;
    let mut env = node_env(cluster);
    env.push((
        "BUS__AUTH__API_KEYS".into(),
        json!([
            {"name": "ops", "key": ADMIN, "admin": true, "publish": [">"],
             "rate_per_second": 100000, "burst": 10000},
            {"name": "hooks", "key": HOOKS, "webhooks": true},
            {"name": "shop", "key": PUBLISHER, "publish": ["shop.>"]},
        ])
        .to_string(),
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
        env.retain(|(have, _)| have != k);
        env.push(((*k).into(), (*v).into()));
    }
    Ok(env)
}

/// Two nodes on a one-server cluster ([`hook_env`]).
pub async fn nodes_with(
    dir: &std::path::Path,
    more: &[(&str, &str)],
) -> anyhow::Result<(NatsCluster, BusNode, BusNode)> {
    let cluster = NatsCluster::start(1).await?;
    let env = hook_env(&cluster, dir, more)?;
    let a = start("hooks-a", &env).await?;
    let b = start("hooks-b", &env).await?;
    Ok((cluster, a, b))
}

/// A call to the webhook API with `key`: its status, `ETag` and JSON body.
pub async fn call(
    node: &BusNode,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> anyhow::Result<(u16, String, Value)> {
    let mut req = http()?
        .request(method, format!("{}{path}", node.url()))
        .header("x-api-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = r.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, etag, body))
}

/// Makes a subscription with the admin key: (status, answer).
pub async fn create(node: &BusNode, body: Value) -> anyhow::Result<(u16, Value)> {
    let (status, _, answer) = call(
        node,
        reqwest::Method::POST,
        "/v1/webhooks",
        ADMIN,
        Some(body),
        None,
    )
    .await?;
    Ok((status, answer))
}

/// Makes a subscription of `types` to `url` and gives its (id, secret).
pub async fn subscribe(
    node: &BusNode,
    url: &str,
    types: &[&str],
) -> anyhow::Result<(String, String)> {
    let (status, sub) = create(node, json!({"url": url, "types": types})).await?;
    anyhow::ensure!(status == 201, "create {url}: {status} {sub}");
    let s = |k: &str| sub[k].as_str().unwrap_or_default().to_owned();
    Ok((s("id"), s("secret")))
}

/// Posts event `id` of type `shop.order.created`.
pub async fn publish(node: &BusNode, id: &str) -> anyhow::Result<()> {
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

/// The subscription as `GET` shows it.
pub async fn read(node: &BusNode, id: &str) -> anyhow::Result<Value> {
    let (status, _, body) = call(
        node,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{id}"),
        ADMIN,
        None,
        None,
    )
    .await?;
    anyhow::ensure!(status == 200, "read {id}: {status} {body}");
    Ok(body)
}

/// The subscription's attempts log, first page.
pub async fn attempts(node: &BusNode, id: &str) -> anyhow::Result<Vec<Value>> {
    let (status, _, body) = call(
        node,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{id}/attempts?limit=100"),
        ADMIN,
        None,
        None,
    )
    .await?;
    anyhow::ensure!(status == 200, "attempts {id}: {status} {body}");
    Ok(body["attempts"].as_array().cloned().unwrap_or_default())
}

/// Why a verifier refused a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingHeaders,
    StaleTimestamp,
    BadSignature,
}

/// How far a `webhook-timestamp` may be from now (the specification's suggestion).
pub const TOLERANCE_SECS: i64 = 300;

/// A receiver's check of a delivery, from the Standard Webhooks specification: the
/// timestamp within [`TOLERANCE_SECS`] of `now`, and one of the space-separated `v1,`
/// signatures equal to base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")) under
/// `secret` (`whsec_` and the base64 key), compared in constant time.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &str, now: i64) -> Result<(), Refusal> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sigs)) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    ) else {
        return Err(Refusal::MissingHeaders);
    };
    let ts_num: i64 = ts.parse().map_err(|_| Refusal::MissingHeaders)?;
    if (now - ts_num).abs() > TOLERANCE_SECS {
        return Err(Refusal::StaleTimestamp);
    }
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .map_err(|_| Refusal::BadSignature)?;
    for sig in sigs.split(' ') {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = STANDARD.decode(b64) else {
            continue;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return Err(Refusal::BadSignature);
        };
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err(Refusal::BadSignature)
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How many members subscription `id`'s group has, as `/v1/groups` on `node` says.
pub async fn members(node: &BusNode, id: &str) -> anyhow::Result<usize> {
    let group = format!("webhook-{id}");
    let (status, _, g) = call(node, reqwest::Method::GET, "/v1/groups", ADMIN, None, None).await?;
    anyhow::ensure!(status == 200, "groups: {status} {g}");
    Ok(g["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|x| x["name"] == group.as_str()))
        .and_then(|x| x["members"].as_array().map(Vec::len))
        .unwrap_or(0))
}

/// Polls (every 50 ms, up to `deadline`) until subscription `id` has `n` members.
pub async fn wait_members(
    node: &BusNode,
    id: &str,
    n: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        // A listing that failed (NATS busy) is asked again.
        let have = members(node, id).await;
        if have.as_ref().is_ok_and(|h| *h == n) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "subscription {id}: {have:?} members, not {n}, after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts events `ids` (type `shop.order.created`) in batches of 100.
pub async fn publish_batches(node: &BusNode, ids: &[String]) -> anyhow::Result<()> {
    let client = http()?;
    for chunk in ids.chunks(100) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|id| ce(id, "shop.order.created", json!({"n": id})))
            .collect();
        let r = client
            .post(format!("{}/v1/events", node.url()))
            .header("x-api-key", ADMIN)
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(batch).to_string())
            .send()
            .await?;
        anyhow::ensure!(r.status() == 202, "batch: {}", r.status());
    }
    Ok(())
}
