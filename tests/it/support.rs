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

/// The instant an RFC 3339 `date-time` (section 5.6: `2026-11-23T10:00:00.5Z`,
/// `…+02:00`) stands for; `None` for anything else. Written here, not taken from the
/// bus's own decoder, so that a test checks what the bus writes against the RFC.
pub fn rfc3339(text: &str) -> Option<std::time::SystemTime> {
    fn digits(s: &[u8]) -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    }
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let mut rest = &b[19..];
    let mut nanos = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        // Digits past nanoseconds are below what SystemTime holds.
        let kept = &fraction[..len.min(9)];
        nanos = digits(kept)? * 10_i64.pow(9 - kept.len() as u32);
        rest = &fraction[len..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            (h * 60 + m) * 60 * if *sign == b'-' { -1 } else { 1 }
        }
        _ => return None,
    };
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let since_epoch = Duration::new(u64::try_from(secs).ok()?, u32::try_from(nanos).ok()?);
    std::time::UNIX_EPOCH.checked_add(since_epoch)
}

#[test]
fn rfc3339_reads_date_times_and_refuses_anything_else() {
    let at = |secs: u64, nanos: u32| Some(std::time::UNIX_EPOCH + Duration::new(secs, nanos));
    assert_eq!(rfc3339("1970-01-01T00:00:00Z"), at(0, 0));
    assert_eq!(rfc3339("2026-11-23T10:00:00Z"), at(1_795_428_000, 0));
    assert_eq!(
        rfc3339("2026-11-23t12:30:00.25+02:30"),
        at(1_795_428_000, 250_000_000)
    );
    assert_eq!(
        rfc3339("2000-02-29T23:59:59.123456789z"),
        at(951_868_799, 123_456_789)
    );
    for bad in [
        "",
        "2026-11-23",
        "2026-11-23 10:00:00Z",
        "2026-11-23T10:00:00",
        "2026-11-23T10:00:00.Z",
        "2026-13-01T00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T10:00:00+0200",
        "2026-11-23T10:00:00Z ",
        "yesterday",
    ] {
        assert_eq!(rfc3339(bad), None, "{bad:?}");
    }
}
