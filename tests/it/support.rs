//! Helpers shared by the SDK suites: a bus on a harness cluster, test event types, and
//! a recorder of what handlers saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::BusConfig;
use bus_sdk::{Bus, EventPayload, HandlerError, Received};
use bus_tests::NatsCluster;
use serde::{Deserialize, Serialize};

/// An order event, as a service would define it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: u64,
    pub customer: String,
}

impl EventPayload for OrderCreated {
    const EVENT_TYPE: &'static str = "shop.order.created";
}

/// A second type, for dispatch and failure tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub order_id: u64,
}

impl EventPayload for PaymentFailed {
    const EVENT_TYPE: &'static str = "shop.payment.failed";
}

pub fn order(n: u64) -> OrderCreated {
    OrderCreated {
        order_id: n,
        customer: format!("c{}", n % 7),
    }
}

/// The bus configuration for a cluster, with streams replicated on every node.
pub fn config_for(cluster: &NatsCluster) -> BusConfig {
    let mut config = BusConfig::with_servers(cluster.client_urls());
    config.streams.replicas = if cluster.len() >= 3 { 3 } else { 1 };
    config.nats.request_timeout = Duration::from_secs(1);
    config
}

pub async fn bus_for(cluster: &NatsCluster) -> anyhow::Result<Bus> {
    Ok(Bus::builder(config_for(cluster))
        .source("/tests")
        .connect()
        .await?)
}

/// What handlers saw: how often each event id was handled, and by which member.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<RecorderState>>,
}

#[derive(Debug, Default)]
struct RecorderState {
    per_id: HashMap<String, u32>,
    per_member: HashMap<usize, u64>,
}

impl Recorder {
    pub fn record(&self, member: usize, id: &str) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *s.per_id.entry(id.to_owned()).or_default() += 1;
        *s.per_member.entry(member).or_default() += 1;
    }

    pub fn distinct(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .per_id
            .len()
    }

    pub fn total(&self) -> u64 {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.per_id.values().map(|n| u64::from(*n)).sum()
    }

    pub fn counts(&self) -> HashMap<String, u32> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .per_id
            .clone()
    }

    pub fn per_member(&self) -> HashMap<usize, u64> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .per_member
            .clone()
    }
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
pub async fn wait_until(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    while !cond() {
        if start.elapsed() > deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Publishes orders `0..n` and waits until `recorder` has seen each of them.
pub async fn publish_orders_until_handled(
    bus: &Bus,
    n: u64,
    recorder: &Recorder,
) -> anyhow::Result<()> {
    for i in 0..n {
        bus.publish(&order(i)).await?;
    }
    wait_until("every event handled", Duration::from_secs(30), || {
        recorder.distinct() as u64 == n
    })
    .await
}

/// Publishes with a plain JetStream client, again while the server it reached answers
/// "no stream found" (nothing stored): right after a stream is made on a 3-node cluster,
/// that server may not route its subjects yet. The SDK's publisher does the same.
pub async fn plain_publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    headers: Option<async_nats::HeaderMap>,
    payload: bytes::Bytes,
) -> anyhow::Result<()> {
    use async_nats::jetstream::context::PublishErrorKind;
    let started = tokio::time::Instant::now();
    loop {
        let sent = match headers.clone() {
            Some(h) => {
                js.publish_with_headers(subject.to_owned(), h, payload.clone())
                    .await?
            }
            None => js.publish(subject.to_owned(), payload.clone()).await?,
        };
        match sent.await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.kind() == PublishErrorKind::StreamNotFound
                    && started.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until the group's consumer has nothing pending and nothing unacknowledged.
pub async fn wait_group_idle(bus: &Bus, group: &str, deadline: Duration) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    loop {
        // A JetStream info request can time out on a 3-node cluster under load (an
        // election, a slow replica): that is "not known yet", not "not idle".
        let state = match consumer_counts(bus, group).await {
            Ok((0, 0)) => return Ok(()),
            Ok((pending, ack_pending)) => {
                format!("pending {pending}, ack pending {ack_pending}")
            }
            Err(e) => format!("consumer info not readable: {e}"),
        };
        if start.elapsed() > deadline {
            anyhow::bail!("group {group} not idle after {deadline:?}: {state}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (pending, ack pending) of `group`'s consumer.
async fn consumer_counts(bus: &Bus, group: &str) -> anyhow::Result<(u64, usize)> {
    let info = bus
        .jetstream()
        .get_stream(&bus.config().streams.events_name)
        .await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = info
        .get_consumer(group)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let ci = consumer.info().await?;
    Ok((ci.num_pending, ci.num_ack_pending))
}

/// Number of messages in a stream.
pub async fn stream_messages(bus: &Bus, stream: &str) -> anyhow::Result<u64> {
    let mut s = bus.jetstream().get_stream(stream).await?;
    Ok(s.info().await?.state.messages)
}

/// Starts a member of `group` that records every `OrderCreated` it handles as `member`.
pub async fn recording_member(
    bus: &Bus,
    group: &str,
    recorder: &Recorder,
    member: usize,
) -> anyhow::Result<bus_sdk::Group> {
    start_recording(bus.group(group), recorder, member).await
}

/// Starts a configured group member that records every `OrderCreated` it handles.
pub async fn start_recording(
    builder: bus_sdk::GroupBuilder,
    recorder: &Recorder,
    member: usize,
) -> anyhow::Result<bus_sdk::Group> {
    let rec = recorder.clone();
    Ok(builder
        .on(move |ev: bus_sdk::Received<OrderCreated>| {
            let rec = rec.clone();
            async move {
                rec.record(member, ev.meta.id());
                Ok::<(), bus_sdk::HandlerError>(())
            }
        })
        .start()
        .await?)
}

/// NATS headers from name/value pairs (a plain client's CloudEvents headers).
pub fn nats_headers(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, *v);
    }
    h
}

/// A handler that records each order it finishes and never finishes order 1 (for the
/// handler timeout tests).
pub fn hangs_on_order_1(
    rec: Recorder,
) -> impl Fn(Received<OrderCreated>) -> futures::future::BoxFuture<'static, Result<(), HandlerError>>
+ Send
+ Sync
+ 'static {
    move |ev: Received<OrderCreated>| {
        let rec = rec.clone();
        Box::pin(async move {
            if ev.data.order_id == 1 {
                std::future::pending::<()>().await;
            }
            rec.record(0, ev.meta.id());
            Ok(())
        })
    }
}
