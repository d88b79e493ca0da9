//! Deliveries: every node runs, for each enabled subscription, a member of the consumer
//! group `webhook-<id>` whose handler is one delivery attempt. So a subscription's
//! deliveries share the group machinery (a durable JetStream consumer filtered to the
//! subscription's types, load-balanced over the nodes, taken over by another node when
//! one dies, dead letters after the last attempt, the CONSUMER span of each attempt):
//! nothing of it is webhook-specific but the handler. The next attempt waits the
//! `webhooks.retry_schedule` delay for it (full jitter: a random part of it), or the receiver's
//! `Retry-After`; `410 Gone` disables the subscription; a URL the guard refuses is a
//! dead letter at once.
//!
//! The engine watches the subscriptions bucket: a new subscription, or a change to what
//! its deliveries depend on (URL, types, secrets, headers, rate limit, enabled), (re)starts
//! its member on this node; a disabled or deleted one stops it (its consumer stays, so
//! re-enabling it resumes where it stopped). Other changes (the failure record, the
//! description) reach the running member without a restart.
//!
//! Bounds: `webhooks.concurrency` deliveries in flight per subscription per node, and
//! `webhooks.node_concurrency` over all of them, so one slow endpoint holds at most its
//! own share; a subscription's `rate_limit` paces its deliveries on each node.
//!
//! Every attempt is a CLIENT span under the handling's CONSUMER span (its `traceparent`
//! is sent to the receiver), a record in the attempts log (`attempts_log.rs`) and a count
//! in the metrics. An endpoint failing every attempt for `webhooks.disable_after` is
//! disabled; the bus publishes `bus.webhook.endpoint.disabled`,
//! `bus.webhook.endpoint.recovered` (its first delivery after failures) and
//! `bus.webhook.attempt.exhausted` (an event's last attempt failed), events any group
//! can handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use bus_core::telemetry::{HopSpan, HopTracer, baggage_value, current_hop, traceparent_value};
use bus_core::{Event, EventPattern, EventType, structured};
use bus_sdk::{Bus, EventMeta, Group, HandlerError};
use bytes::Bytes;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::asymmetric::SigningPair;
use super::attempt::{Attempt, Deliverer, Outcome};
use super::attempts_log::{AttemptRecord, AttemptsLog};
use super::sealed::SealingKey;
use super::signature::Secret;
use super::store::{self, Subscription};
use crate::config::WebhooksConfig;
use crate::metrics::OutcomeLabels;
use crate::rate_limit::{Refusal, TokenBucket};

/// How long a delivery waits for one of the node's delivery slots before it gives up this
/// attempt (and is retried).
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// Longest a delivery waits for its subscription's rate limit.
const MAX_RATE_WAIT: Duration = Duration::from_secs(30);

/// What deliveries and the API share.
#[derive(Debug)]
pub struct Webhooks {
    pub bus: Bus,
    pub store: kv::Store,
    pub key: SealingKey,
    pub deliverer: Deliverer,
    pub config: WebhooksConfig,
    pub attempts: AttemptsLog,
    /// This node's id, in the attempts log.
    pub node: String,
    /// The node's delivery slots (`webhooks.node_concurrency`).
    pub slots: Semaphore,
    pub metrics: WebhookMetrics,
}

/// The metrics deliveries count in.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    pub attempts: Family<OutcomeLabels, Counter>,
    pub duration: Histogram,
}

/// One subscription as its deliveries need it.
#[derive(Debug)]
pub struct Target {
    pub id: String,
    pub url: Url,
    /// Newest first; those after the first sign until `previous_until`.
    secrets: Vec<Secret>,
    previous_until: Option<i64>,
    asymmetric: Option<SigningPair>,
    headers: HeaderMap,
    limiter: Option<Mutex<TokenBucket>>,
    /// Since when every attempt failed (Unix seconds), as this node last saw it.
    failing_since: Mutex<Option<i64>>,
}

impl Target {
    /// What `sub` needs for its deliveries, its secrets opened with `key`.
    pub fn new(sub: &Subscription, key: &SealingKey) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        for (k, v) in &sub.headers {
            headers.insert(
                HeaderName::try_from(k.as_str())?,
                HeaderValue::try_from(v.as_str())?,
            );
        }
        Ok(Self {
            id: sub.id.clone(),
            url: Url::parse(&sub.url)?,
            secrets: sub.open_secrets(key)?,
            previous_until: sub.previous_until,
            asymmetric: sub.open_ed25519(key)?,
            headers,
            limiter: sub
                .rate_limit
                .map(|r| Mutex::new(TokenBucket::new(r, r.clamp(1, 16)))),
            failing_since: Mutex::new(sub.failing_since),
        })
    }

    /// The secrets that sign now.
    fn signing(&self) -> &[Secret] {
        let all = match self.previous_until {
            Some(until) if until > store::now() => self.secrets.len(),
            _ => 1,
        };
        &self.secrets[..all.min(self.secrets.len())]
    }

    /// Waits for the rate limit, at most [`MAX_RATE_WAIT`]; false when it would be longer.
    async fn paced(&self) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        let deadline = Instant::now() + MAX_RATE_WAIT;
        loop {
            let wait = match limiter.lock() {
                Ok(mut b) => match b.take(1, Instant::now()) {
                    Ok(()) => return true,
                    Err(Refusal::Wait(d)) => d,
                    Err(Refusal::OverBurst { .. }) => return true,
                },
                Err(_) => return true,
            };
            if Instant::now() + wait > deadline {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// The consumer group of subscription `id`.
pub fn group_name(id: &str) -> String {
    format!("webhook-{id}")
}

/// A member running on this node.
struct Running {
    view: String,
    target: Arc<Target>,
    group: Group,
}

/// Watches the subscriptions and runs their members on this node until `cancel`.
pub async fn run(w: Arc<Webhooks>, cancel: CancellationToken) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        let mut watch = match w.store.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch webhook subscriptions; retrying");
                failures += 1;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(bus_core::retry::backoff_delay(failures)) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                _ = cancel.cancelled() => break,
                entry = watch.next() => entry,
            };
            let entry = match entry {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "webhook subscription watch failed; watching again");
                    break;
                }
                None => break,
            };
            failures = 0;
            let id = entry.key.clone();
            let sub = match entry.operation {
                Operation::Put => match serde_json::from_slice::<Subscription>(&entry.value) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!(webhook = %id, error = %e, "unreadable webhook subscription; not delivering it");
                        None
                    }
                },
                _ => None,
            };
            if let (Some(sub), Some(r)) = (&sub, running.get(&id))
                && r.view == sub.delivery_view()
            {
                if let Ok(mut f) = r.target.failing_since.lock() {
                    *f = sub.failing_since;
                }
                continue;
            }
            if let Some(r) = running.remove(&id) {
                r.group.shutdown().await;
            }
            let Some(sub) = sub.filter(|s| s.enabled) else {
                continue;
            };
            match start(&w, &sub).await {
                Ok((target, group)) => {
                    let view = sub.delivery_view();
                    running.insert(
                        id,
                        Running {
                            view,
                            target,
                            group,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(webhook = %id, error = %e, "cannot start webhook deliveries")
                }
            }
        }
    }
    for (_, r) in running {
        r.group.shutdown().await;
    }
}

/// Attempts per event: the first and one after each delay of the schedule.
pub fn max_attempts(config: &WebhooksConfig) -> u32 {
    u32::try_from(config.retry_schedule.len() + 1).unwrap_or(u32::MAX)
}

/// Starts this node's member for `sub`.
async fn start(w: &Arc<Webhooks>, sub: &Subscription) -> anyhow::Result<(Arc<Target>, Group)> {
    let target = Arc::new(Target::new(sub, &w.key)?);
    let schedule = &w.config.retry_schedule;
    // The attempt, and what may come before it: a slot, the rate limit.
    let before = SLOT_WAIT
        + if sub.rate_limit.is_some() {
            MAX_RATE_WAIT
        } else {
            Duration::ZERO
        };
    let timeout = w.config.timeout + before;
    let builder = w.bus.group(group_name(&sub.id));
    let builder = match sub.from_seq {
        Some(seq) => builder.deliver_from(seq),
        None => builder.deliver_new_only(),
    };
    let mut builder = builder
        .concurrency(w.config.concurrency)
        .max_deliver(max_attempts(&w.config))
        .backoff(schedule.iter().copied())
        .handler_timeout(timeout + Duration::from_secs(5))
        .ack_wait(timeout + Duration::from_secs(10));
    for pattern in &sub.types {
        let (w, target) = (w.clone(), target.clone());
        builder = builder.on_any(
            EventPattern::new(pattern.as_str())?,
            move |meta: EventMeta| {
                let (w, target) = (w.clone(), target.clone());
                async move { deliver(&w, &target, meta).await }
            },
        );
    }
    Ok((target, builder.start().await?))
}

/// One attempt, made now, logged, counted and traced; a `Retry` (`node_busy`) when no
/// delivery slot of the node came free within [`SLOT_WAIT`].
pub async fn attempt_now(w: &Webhooks, t: &Target, event: &Event, attempt: u32) -> Outcome {
    let Ok(Ok(_slot)) = tokio::time::timeout(SLOT_WAIT, w.slots.acquire()).await else {
        return Outcome::Retry {
            status: None,
            error: "node_busy",
            after: None,
            took: Duration::ZERO,
        };
    };
    let parent = current_hop().unwrap_or_default();
    let mut span = HopSpan::client_post(
        &HopTracer::default(),
        &bus_core::redacted_url::redacted(&t.url),
        (
            t.url.host_str().unwrap_or(""),
            t.url.port_or_known_default().unwrap_or(0),
        ),
        &event.id,
        attempt,
        &parent,
    );
    let started = time::OffsetDateTime::now_utc();
    let outcome = w
        .deliverer
        .attempt(&Attempt {
            url: &t.url,
            id: &event.id,
            body: Bytes::from(structured::to_json(event)),
            secrets: t.signing(),
            asymmetric: t.asymmetric.as_ref(),
            headers: &t.headers,
            traceparent: span.span_context().and_then(traceparent_value),
            baggage: baggage_value(&parent),
        })
        .await;
    let (kind, status, error, took) = match &outcome {
        Outcome::Delivered { status, took } => ("delivered", Some(*status), None, *took),
        Outcome::Gone { took } => ("gone", Some(410), None, *took),
        Outcome::Retry {
            status,
            error,
            took,
            ..
        } => (
            "retry",
            *status,
            status.is_none().then(|| (*error).to_owned()),
            *took,
        ),
        Outcome::Refused { .. } => (
            "refused",
            None,
            Some("blocked_destination".into()),
            Duration::ZERO,
        ),
    };
    if let Some(s) = status {
        span.record_status_code(s);
    }
    if kind != "delivered" {
        span.record_error(error.as_deref().unwrap_or("status"));
    }
    drop(span);
    w.metrics
        .attempts
        .get_or_create(&OutcomeLabels { outcome: kind })
        .inc();
    w.metrics.duration.observe(took.as_secs_f64());
    w.attempts
        .record(
            &t.id,
            &AttemptRecord {
                event_id: event.id.clone(),
                attempt,
                time: started
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                outcome: kind.to_owned(),
                status,
                error,
                duration_ms: took.as_secs_f64() * 1000.0,
                node: w.node.clone(),
            },
        )
        .await;
    outcome
}

/// One delivery attempt, and what it means for the delivery.
async fn deliver(w: &Webhooks, t: &Target, meta: EventMeta) -> Result<(), HandlerError> {
    if !t.paced().await {
        return Err(HandlerError::msg("the subscription's rate limit is behind")
            .retry_after(Duration::from_secs(1)));
    }
    let outcome = attempt_now(w, t, &meta.event, meta.attempt).await;
    match outcome {
        Outcome::Delivered { .. } => {
            recovered(w, t).await;
            Ok(())
        }
        Outcome::Gone { .. } => {
            disable(w, &t.id, "the endpoint answered 410 Gone").await;
            // Kept (not acknowledged): if the subscription is enabled again, it comes back.
            Err(HandlerError::msg("the endpoint answered 410 Gone")
                .retry_after(Duration::from_secs(60)))
        }
        Outcome::Retry {
            status,
            error,
            after,
            ..
        } => {
            let what = match status {
                Some(s) => format!("the endpoint answered {s}"),
                None => format!("the attempt failed ({error})"),
            };
            failing(w, t).await;
            if meta.attempt >= max_attempts(&w.config) {
                exhausted(w, t, &meta.event, status, &what).await;
            }
            let delay = after.unwrap_or_else(|| jittered(&w.config.retry_schedule, meta.attempt));
            Err(HandlerError::msg(what).retry_after(delay))
        }
        Outcome::Refused { reason } => {
            failing(w, t).await;
            exhausted(w, t, &meta.event, None, &reason).await;
            Err(HandlerError::permanent(reason))
        }
    }
}

/// The schedule's delay after attempt `attempt` (1-based; the last repeats), with full
/// jitter: uniformly random between [`MIN_DELAY`] and the delay, so that the retries of
/// many events failed together (an endpoint's outage) spread over the whole delay
/// instead of arriving together.
fn jittered(schedule: &[Duration], attempt: u32) -> Duration {
    let i = (attempt.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule.get(i).copied().unwrap_or(Duration::from_secs(5));
    // A factor in (0, 1].
    let factor = f64::from(OsRng.next_u32() % 1_000_000 + 1) / 1_000_000.0;
    base.mul_f64(factor).max(MIN_DELAY.min(base))
}

/// The shortest jittered delay.
const MIN_DELAY: Duration = Duration::from_millis(10);

/// After a failed attempt: notes when the failures began, and disables the subscription
/// once they have lasted `webhooks.disable_after`.
async fn failing(w: &Webhooks, t: &Target) {
    let now = store::now();
    let since = t.failing_since.lock().ok().and_then(|f| *f);
    match since {
        None => {
            if let Ok(mut f) = t.failing_since.lock() {
                *f = Some(now);
            }
            let noted = store::modify(&w.store, &t.id, |s| {
                if s.failing_since.is_some() {
                    return false;
                }
                s.failing_since = Some(now);
                true
            })
            .await;
            if let Err(e) = noted {
                tracing::warn!(webhook = %t.id, error = %e, "cannot note the endpoint's failures");
            }
        }
        Some(since) => {
            let limit = i64::try_from(w.config.disable_after.as_secs()).unwrap_or(i64::MAX);
            if now.saturating_sub(since) >= limit {
                let why = format!(
                    "every attempt failed for {}",
                    humantime_serde::re::humantime::format_duration(w.config.disable_after)
                );
                disable(w, &t.id, &why).await;
            }
        }
    }
}

/// After a delivery: clears the failure record, and says the endpoint recovered if it
/// had one.
async fn recovered(w: &Webhooks, t: &Target) {
    let had = t.failing_since.lock().ok().and_then(|mut f| f.take());
    let Some(since) = had else { return };
    let cleared = store::modify(&w.store, &t.id, |s| {
        if s.failing_since.is_none() {
            return false;
        }
        s.failing_since = None;
        true
    })
    .await;
    match cleared {
        // This node cleared it: say so (once, whichever node saw the first delivery).
        Ok(Some(_)) => {
            operational(
                w,
                "bus.webhook.endpoint.recovered",
                json!({"webhook": t.id, "failing_since": store::rfc3339(since)}),
            )
            .await
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(webhook = %t.id, error = %e, "cannot clear the endpoint's failures")
        }
    }
}

/// After an event's last attempt failed.
async fn exhausted(w: &Webhooks, t: &Target, event: &Event, status: Option<u16>, error: &str) {
    // Not about its own operational events: an endpoint failing those would make one more
    // each time.
    if event.event_type.as_str().starts_with("bus.webhook.") {
        return;
    }
    operational(
        w,
        "bus.webhook.attempt.exhausted",
        json!({
            "webhook": t.id,
            "event_id": event.id,
            "event_type": event.event_type.as_str(),
            "last_status": status,
            "last_error": error,
        }),
    )
    .await;
}

/// Publishes one of the bus's own events about deliveries.
async fn operational(w: &Webhooks, event_type: &'static str, data: serde_json::Value) {
    let Ok(t) = EventType::new(event_type) else {
        return;
    };
    let built = Event::builder(t, format!("bus-node/{}", w.node)).data_json(&data);
    match built {
        Ok(b) => {
            if let Err(e) = w.bus.publish_event(&b.build()).await {
                tracing::warn!(event_type, error = %e, "cannot publish an operational event");
            }
        }
        Err(e) => tracing::warn!(event_type, error = %e, "cannot encode an operational event"),
    }
}

/// Marks subscription `id` disabled, saying why, and tells about it.
async fn disable(w: &Webhooks, id: &str, why: &str) {
    let done = store::modify(&w.store, id, |s| {
        if !s.enabled {
            return false;
        }
        s.enabled = false;
        s.disabled_reason = Some(why.to_owned());
        true
    })
    .await;
    match done {
        Ok(Some(_)) => {
            tracing::warn!(webhook = %id, reason = why, "webhook subscription disabled");
            operational(
                w,
                "bus.webhook.endpoint.disabled",
                json!({"webhook": id, "reason": why}),
            )
            .await;
        }
        Ok(None) => {}
        Err(e) => tracing::error!(webhook = %id, error = %e, "cannot disable the subscription"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_follows_the_schedule_with_full_jitter_and_the_last_repeats() {
        let s = [Duration::from_secs(10), Duration::from_secs(100)];
        let (mut low, mut high) = (false, false);
        for _ in 0..200 {
            let d = jittered(&s, 1);
            assert!(d >= MIN_DELAY && d <= Duration::from_secs(10), "{d:?}");
            low |= d < Duration::from_secs(3);
            high |= d > Duration::from_secs(7);
            let d = jittered(&s, 7);
            assert!(d <= Duration::from_secs(100), "{d:?}");
        }
        assert!(low && high, "spread over the whole delay");
    }
}
