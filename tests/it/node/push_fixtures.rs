//! What the push suites share: nodes with read-scoped keys and a token key, an SSE
//! client (the `eventsource-stream` parser over reqwest's byte stream) and a WebSocket
//! client (`tokio-tungstenite`) that record what they receive, and events published
//! through the SDK.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_sdk::Bus;
use bus_sdk::bus_core::{Event, EventType};
use bus_tests::fixtures::*;
use bus_tests::{BusNode, NatsCluster, wait_until};
use eventsource_stream::Eventsource;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Reads everything (`>`).
pub const ALL: &str = "push-all-0123456789abcdef";
/// Reads `shop.>` only.
pub const SHOP: &str = "push-shop-0123456789abcdef";
/// The token key every test node shares.
pub const TOKEN_KEY: &str = "push-token-key-0123456789abcdef-0123456789";

/// Settings for push nodes on `cluster`: auth on with [`ALL`] and [`SHOP`], the token
/// key in `dir`, and `more`.
pub fn push_env(
    cluster: &NatsCluster,
    dir: &std::path::Path,
    more: &[(&str, &str)],
) -> anyhow::Result<Vec<(String, String)>> {
    let key = dir.join("push-token.key");
    std::fs::write(&key, TOKEN_KEY)?;
    let mut env = node_env(cluster);
    env.push((
        "BUS__AUTH__API_KEYS".into(),
        json!([
            {"name": "all", "key": ALL, "read": [">"], "publish": [">"]},
            {"name": "shop", "key": SHOP, "read": ["shop.>"], "publish": [">"]},
        ])
        .to_string(),
    ));
    env.push((
        "BUS__PUSH__TOKEN_KEY_FILE".into(),
        key.display().to_string(),
    ));
    env.push(("BUS__PUSH__HEARTBEAT".into(), "1s".into()));
    for (k, v) in more {
        env.retain(|(have, _)| have != k);
        env.push(((*k).into(), (*v).into()));
    }
    Ok(env)
}

/// One event as a push client got it.
#[derive(Debug, Clone)]
pub struct Got {
    /// The SSE `id:` (`<epoch>:<seq>`), or for WebSocket the `seq`.
    pub id: String,
    pub seq: u64,
    /// The SSE event name: the type, or `bus.push.hello` / `bus.push.gap`.
    pub name: String,
    /// The CloudEvent (or the notice's data).
    pub data: Value,
}

/// What a client has received so far, and whether its stream ended.
#[derive(Debug, Default)]
pub struct Inbox {
    pub got: Mutex<Vec<Got>>,
    pub ended: std::sync::atomic::AtomicBool,
}

impl Inbox {
    pub fn events(&self) -> Vec<Got> {
        self.lock()
            .iter()
            .filter(|g| !g.name.starts_with("bus.push."))
            .cloned()
            .collect()
    }

    pub fn notices(&self, name: &str) -> Vec<Got> {
        self.lock()
            .iter()
            .filter(|g| g.name == name)
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.lock()
            .iter()
            .filter(|g| !g.name.starts_with("bus.push."))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Got>> {
        self.got.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, g: Got) {
        self.lock().push(g);
    }

    pub fn has_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A running client: its inbox, and the task reading for it (aborted on drop).
pub struct Client {
    pub inbox: Arc<Inbox>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Waits until the client has its hello (it is then in its node's hub, or
    /// replaying).
    pub async fn hello(&self) -> anyhow::Result<()> {
        let inbox = self.inbox.clone();
        wait_until("the push hello", Duration::from_secs(20), move || {
            !inbox.notices("bus.push.hello").is_empty()
        })
        .await?;
        Ok(())
    }

    pub async fn wait_events(&self, n: usize, deadline: Duration) -> anyhow::Result<()> {
        let inbox = self.inbox.clone();
        wait_until(format!("{n} pushed events"), deadline, move || {
            inbox.count() >= n
        })
        .await?;
        Ok(())
    }

    /// The sequences of the events received.
    pub fn seqs(&self) -> Vec<u64> {
        self.inbox.events().iter().map(|g| g.seq).collect()
    }

    pub fn last_id(&self) -> Option<String> {
        self.inbox.events().last().map(|g| g.id.clone())
    }
}

/// An SSE request to `node` at `query` (after `?`), with `headers`.
pub async fn sse_response(
    node: &BusNode,
    query: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<reqwest::Response> {
    bus_sdk::bus_core::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    let mut request = client.get(format!("{}/v1/events/stream?{query}", node.url()));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    Ok(request.send().await?)
}

/// An SSE client reading `query` from `node`; fails unless the node answers 200.
pub async fn sse(node: &BusNode, query: &str, headers: &[(&str, &str)]) -> anyhow::Result<Client> {
    let response = sse_response(node, query, headers).await?;
    anyhow::ensure!(
        response.status() == 200,
        "SSE answered {}: {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    let inbox = Arc::new(Inbox::default());
    let sink = inbox.clone();
    let task = tokio::spawn(async move {
        let mut events = response.bytes_stream().eventsource();
        while let Some(Ok(e)) = events.next().await {
            let seq =
                e.id.rsplit(':')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            sink.push(Got {
                id: e.id.clone(),
                seq,
                name: e.event.clone(),
                data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
            });
        }
        sink.ended.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Ok(Client { inbox, task })
}

/// A WebSocket client on `node` at `query` with `headers`; what the node sends goes to
/// the inbox (`ack` and `error` frames as notices `bus.push.ack` / `bus.push.error`, the
/// close as `bus.push.close` with its code); what is sent on the returned channel goes to
/// the node. A refused upgrade is an error naming the status.
pub async fn websocket(
    node: &BusNode,
    query: &str,
    headers: &[(&'static str, &str)],
) -> anyhow::Result<(Client, tokio::sync::mpsc::Sender<Value>)> {
    let url = format!("{}/v1/ws?{query}", node.url().replacen("http", "ws", 1));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
    for (k, v) in headers {
        request.headers_mut().insert(*k, v.parse()?);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    let (mut write, mut read) = socket.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(16);
    let inbox = Arc::new(Inbox::default());
    let sink = inbox.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(v) => if write.send(Message::Text(v.to_string().into())).await.is_err() { break },
                    None => break,
                },
                message = read.next() => match message {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        let got = if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
                            Got { id: seq.to_string(), seq, name: v["event"]["type"].as_str().unwrap_or("").to_owned(), data: v["event"].clone() }
                        } else {
                            let name = ["hello", "gap", "ack", "error"].into_iter().find(|k| v.get(*k).is_some()).unwrap_or("unknown");
                            Got { id: String::new(), seq: 0, name: format!("bus.push.{name}"), data: v[name].clone() }
                        };
                        sink.push(got);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((0, String::new()));
                        sink.push(Got { id: String::new(), seq: 0, name: "bus.push.close".into(), data: json!({"code": code, "reason": reason}) });
                        break;
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break,
                },
            }
        }
        sink.ended.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Ok((Client { inbox, task }, tx))
}

/// A bus on `cluster` to publish with.
pub async fn publisher(cluster: &NatsCluster) -> anyhow::Result<Bus> {
    bus_for(cluster).await
}

/// Publishes an event of `event_type` numbered `n` (`data.n`), through the SDK.
pub async fn publish(bus: &Bus, event_type: &str, n: u64) -> anyhow::Result<u64> {
    let event = Event::builder(EventType::new(event_type)?, "/tests/push")
        .data_json(&json!({"n": n}))?
        .build();
    Ok(bus.publish_event(&event).await?.seq)
}

/// The `n` of each event, in the order received.
pub fn numbers(events: &[Got]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|g| g.data["data"]["n"].as_u64())
        .collect()
}
