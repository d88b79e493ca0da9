//! Workload 4: webhook deliveries. A bus-node process (release build, telemetry off)
//! delivers to a local receiver that answers 200 at once (`hook_receiver.rs`); the events
//! are published with the SDK. The baseline is a bare `reqwest` loop in this process
//! posting bodies of the same shape, signed the same way (HMAC-SHA256 of
//! "{id}.{ts}.{body}", base64), with the same number of requests in flight
//! ([`WEBHOOK_CONCURRENCY`], which is the node's `webhooks.concurrency`).
//!
//! Rows: `webhook.max` (a backlog-free run of N events as fast as they go: deliveries/s),
//! `webhook.1000` (1,000 events/s for a while: send → arrival latency; the raw side's is
//! one POST's), and `webhook.isolation`, which compares the bus with itself: ten
//! subscriptions alone (the raw column) against the same ten beside an eleventh whose
//! endpoint answers after 1 s (the bus column); the target is a ratio of at least 0.9.
//! CPU is this process's (publisher, receiver, the reqwest loop) plus, on the bus side,
//! the bus-node process's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bus_core::{Event, EventType};
use bus_sdk::Bus;
use bus_tests::BusNode;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::time::Instant;

use crate::ab::compare;
use crate::cli::{PUBLISH_WINDOW, Plan, Side, WEBHOOK_CONCURRENCY};
use crate::env::Env;
use crate::hook_receiver::{Receiver, unix_nanos};
use crate::pacer::{Schedule, drive};
use crate::report::Row;
use crate::stats::{Meter, Sample};

/// Longest a run may take to be delivered.
const DELIVER_DEADLINE: Duration = Duration::from_secs(300);
/// The fixed rate of the latency row.
const RATE: f64 = 1_000.0;
/// Fast endpoints of the isolation row.
const FAST_ENDPOINTS: usize = 10;

/// The node, the receiver, a publisher and an API client, for every round.
struct Setup {
    node: BusNode,
    _dir: tempfile::TempDir,
    bus: Bus,
    api: reqwest::Client,
    receiver: Arc<Receiver>,
    base: String,
    /// Makes every round's types and paths new.
    round: AtomicU64,
}

pub async fn run(env: &Env, plan: &Plan) -> Result<Vec<Row>> {
    let keys = ["webhook.max", "webhook.1000", "webhook.isolation"];
    if !keys.iter().any(|k| plan.wants(k)) {
        return Ok(Vec::new());
    }
    let s = Setup::start(env).await?;
    let mut rows = Vec::new();
    let n = plan.webhook_msgs;
    rows.extend(
        compare(
            plan,
            "webhook.max",
            format!("webhooks, {n} deliveries, {WEBHOOK_CONCURRENCY} in flight"),
            false,
            |side| s.throughput(side, n),
        )
        .await?,
    );
    let paced = (RATE * plan.webhook_duration.as_secs_f64()) as u64;
    rows.extend(
        compare(
            plan,
            "webhook.1000",
            format!("webhooks at {RATE:.0}/s, send → arrival"),
            true,
            |side| s.latency(side, paced),
        )
        .await?,
    );
    rows.extend(
        compare(
            plan,
            "webhook.isolation",
            format!("webhooks, {FAST_ENDPOINTS} endpoints: alone (raw) / beside a 1 s one (bus)"),
            false,
            |side| s.isolation(side, n / 2),
        )
        .await?,
    );
    s.stop().await;
    Ok(rows)
}

impl Setup {
    async fn start(env: &Env) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("sealing.key");
        std::fs::write(&key, STANDARD.encode([7u8; 32]))?;
        let replicas = env.config().streams.replicas.to_string();
        let url = env.url();
        let key_path = key.display().to_string();
        let concurrency = WEBHOOK_CONCURRENCY.to_string();
        let node = BusNode::start(
            "bench-hooks",
            &[
                ("BUS__NATS__SERVERS", url.as_str()),
                ("BUS__STREAMS__REPLICAS", replicas.as_str()),
                ("BUS__AUTH__ENABLED", "false"),
                ("BUS__WEBHOOKS__SECRET_KEY_FILE", key_path.as_str()),
                ("BUS__WEBHOOKS__ALLOWED_NETWORKS", "127.0.0.0/8"),
                ("BUS__WEBHOOKS__CONCURRENCY", concurrency.as_str()),
                ("BUS__WEBHOOKS__TIMEOUT", "5s"),
                ("RUST_LOG", "warn"),
            ],
        )
        .await
        .context("starting bus-node")?;
        bus_core::tls::install_crypto_provider();
        let (receiver, base) = Receiver::start().await?;
        Ok(Self {
            node,
            _dir: dir,
            bus: crate::bus_side::connect(env).await?,
            api: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            receiver,
            base,
            round: AtomicU64::new(0),
        })
    }

    async fn stop(self) {
        self.bus.close().await;
        let mut node = self.node;
        let _ = node.stop().await;
    }

    fn next(&self) -> u64 {
        self.round.fetch_add(1, Ordering::SeqCst)
    }

    /// Makes a subscription of `event_type` to `/{path}`; gives its id.
    async fn subscribe(&self, path: &str, event_type: &str) -> Result<String> {
        let r = self
            .api
            .post(format!("{}/v1/webhooks", self.node.url()))
            .json(&json!({"url": format!("{}/{path}", self.base), "types": [event_type]}))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        anyhow::ensure!(status == 201, "creating a subscription: {status} {body}");
        body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no id in {body}"))
    }

    async fn unsubscribe(&self, id: &str) -> Result<()> {
        self.api
            .delete(format!("{}/v1/webhooks/{id}", self.node.url()))
            .send()
            .await?;
        Ok(())
    }

    fn event(event_type: &str, id: String) -> Result<Event> {
        Ok(Event::builder(EventType::new(event_type)?, "bench")
            .id(id)
            .data_json(&json!({"t": unix_nanos()}))?
            .build())
    }

    /// Publishes events `0..n` of `event_type`, at most [`PUBLISH_WINDOW`] in flight.
    async fn publish_all(&self, event_type: &str, tag: &str, n: u64) -> Result<()> {
        let mut in_flight = FuturesUnordered::new();
        for i in 0..n {
            let e = Self::event(event_type, format!("{tag}-{i}"))?;
            in_flight.push(async move { self.bus.publish_event(&e).await });
            while in_flight.len() >= PUBLISH_WINDOW {
                if let Some(done) = in_flight.next().await {
                    done?;
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            done?;
        }
        Ok(())
    }

    fn meter(&self, side: Side) -> Result<(Meter, Duration)> {
        let node_cpu = match side {
            Side::Bus => crate::procfs::cpu(self.node.pid()),
            Side::Raw => Duration::ZERO,
        };
        Ok((Meter::start()?, node_cpu))
    }

    fn finish(
        &self,
        side: Side,
        meter: Meter,
        node_cpu: Duration,
        end: Instant,
        n: u64,
        latency: Option<hdrhistogram::Histogram<u64>>,
    ) -> Result<Sample> {
        let mut sample = meter.stop_at(end, n, latency)?;
        if side == Side::Bus {
            sample.cpu += crate::procfs::cpu(self.node.pid()).saturating_sub(node_cpu);
        }
        Ok(sample)
    }

    async fn throughput(&self, side: Side, n: u64) -> Result<Sample> {
        let round = self.next();
        let path = format!("max{round}");
        let event_type = format!("bench.hook.max{round}");
        let sub = match side {
            Side::Bus => Some(self.subscribe(&path, &event_type).await?),
            Side::Raw => None,
        };
        let (meter, node_cpu) = self.meter(side)?;
        match side {
            Side::Bus => self.publish_all(&event_type, &path, n).await?,
            Side::Raw => raw_loop(&format!("{}/{path}", self.base), &event_type, &path, n).await?,
        }
        let end = self.receiver.wait(&path, n, DELIVER_DEADLINE).await?;
        let sample = self.finish(side, meter, node_cpu, end, n, None)?;
        if let Some(id) = sub {
            self.unsubscribe(&id).await?;
        }
        Ok(sample)
    }

    async fn latency(&self, side: Side, n: u64) -> Result<Sample> {
        let round = self.next();
        let path = format!("rate{round}");
        let event_type = format!("bench.hook.rate{round}");
        let sub = match side {
            Side::Bus => Some(self.subscribe(&path, &event_type).await?),
            Side::Raw => None,
        };
        let client = raw_client()?;
        let url = format!("{}/{path}", self.base);
        let (meter, node_cpu) = self.meter(side)?;
        let schedule = Schedule {
            origin: Instant::now(),
            rate: Some(RATE),
        };
        let window = match side {
            Side::Bus => PUBLISH_WINDOW,
            Side::Raw => WEBHOOK_CONCURRENCY,
        };
        let (event_type, path_ref, client, url) = (&event_type, &path, &client, &url);
        drive(schedule, n, window, |seq| async move {
            match side {
                Side::Bus => {
                    let e = Self::event(event_type, format!("{path_ref}-{seq}"))?;
                    self.bus.publish_event(&e).await?;
                }
                Side::Raw => {
                    post_signed(client, url, event_type, &format!("{path_ref}-{seq}")).await?
                }
            }
            Ok(())
        })
        .await?;
        let end = self.receiver.wait(&path, n, DELIVER_DEADLINE).await?;
        let latency = self.receiver.take_latency(&path);
        let sample = self.finish(side, meter, node_cpu, end, n, latency)?;
        if let Some(id) = sub {
            self.unsubscribe(&id).await?;
        }
        Ok(sample)
    }

    /// Ten fast endpoints, alone (`Raw`) or beside a slow one (`Bus`): their deliveries/s.
    async fn isolation(&self, side: Side, n: u64) -> Result<Sample> {
        let round = self.next();
        let event_type = format!("bench.hook.iso{round}");
        let paths: Vec<String> = (0..FAST_ENDPOINTS)
            .map(|k| format!("iso{round}x{k}"))
            .collect();
        let mut subs = Vec::new();
        for p in &paths {
            subs.push(self.subscribe(p, &event_type).await?);
        }
        if side == Side::Bus {
            subs.push(self.subscribe(&format!("slow{round}"), &event_type).await?);
        }
        let (meter, node_cpu) = self.meter(Side::Bus)?;
        self.publish_all(&event_type, &format!("iso{round}"), n)
            .await?;
        let mut end = Instant::now();
        for p in &paths {
            end = end.max(self.receiver.wait(p, n, DELIVER_DEADLINE).await?);
        }
        let sample = self.finish(
            Side::Bus,
            meter,
            node_cpu,
            end,
            n * FAST_ENDPOINTS as u64,
            None,
        )?;
        for id in subs {
            self.unsubscribe(&id).await?;
        }
        Ok(sample)
    }
}

/// The reqwest client of the baseline, as the node builds its own: no redirects, no
/// proxy, the same timeout.
fn raw_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(WEBHOOK_CONCURRENCY)
        .build()?)
}

/// The key of the baseline's signatures.
const RAW_KEY: [u8; 32] = [7u8; 32];

/// One POST as the bus makes it: a structured CloudEvent, Standard Webhooks headers.
async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    event_type: &str,
    id: &str,
) -> Result<()> {
    let body = json!({
        "specversion": "1.0",
        "id": id,
        "source": "bench",
        "type": event_type,
        "time": "2026-01-01T00:00:00.000000Z",
        "datacontenttype": "application/json",
        "data": {"t": unix_nanos()},
    })
    .to_string();
    let ts = unix_nanos() / 1_000_000_000;
    let mut mac = Hmac::<Sha256>::new_from_slice(&RAW_KEY)?;
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body.as_bytes());
    let signature = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let r = client
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "baseline POST: {}", r.status());
    Ok(())
}

/// [`WEBHOOK_CONCURRENCY`] tasks posting events `0..n` between them.
async fn raw_loop(url: &str, event_type: &str, tag: &str, n: u64) -> Result<()> {
    let client = raw_client()?;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = FuturesUnordered::new();
    for _ in 0..WEBHOOK_CONCURRENCY {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return anyhow::Ok(());
                }
                post_signed(&client, url, event_type, &format!("{tag}-{i}")).await?;
            }
        });
    }
    while let Some(done) = tasks.next().await {
        done?;
    }
    Ok(())
}
