//! Deliveries: every node runs, for each enabled subscription, a member of the consumer
//! group `webhook-<id>` whose handler is one delivery attempt. So a subscription's
//! deliveries share the group machinery (a durable JetStream consumer filtered to the
//! subscription's types, load-balanced over the nodes, taken over by another node when
//! one dies, dead letters after the last attempt, the CONSUMER span of each attempt):
//! nothing of it is webhook-specific but the handler. The next attempt waits the
//! `webhooks.retry_schedule` delay for it (±10 % jitter), or the receiver's
//! `Retry-After`; `410 Gone` disables the subscription; a URL the guard refuses is a
//! dead letter at once.
//!
//! The engine watches the subscriptions bucket: a new or changed subscription (re)starts
//! its member on this node, a disabled or deleted one stops it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bus_core::{EventPattern, structured};
use bus_sdk::{Bus, EventMeta, Group, HandlerError};
use bytes::Bytes;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use futures::StreamExt;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

use super::attempt::{Attempt, Deliverer, Outcome};
use super::sealed::SealingKey;
use super::signature::Secret;
use super::store::{self, Subscription};
use crate::config::WebhooksConfig;

/// Deliveries in flight per subscription per node.
pub const CONCURRENCY: usize = 16;

/// What deliveries and the API share.
#[derive(Debug)]
pub struct Webhooks {
    pub bus: Bus,
    pub store: kv::Store,
    pub key: SealingKey,
    pub deliverer: Deliverer,
    pub config: WebhooksConfig,
}

/// One subscription as its deliveries need it.
#[derive(Debug)]
struct Target {
    id: String,
    url: Url,
    secrets: Vec<Secret>,
    headers: HeaderMap,
}

/// The consumer group of subscription `id`.
pub fn group_name(id: &str) -> String {
    format!("webhook-{id}")
}

/// Watches the subscriptions and runs their members on this node until `cancel`.
pub async fn run(w: Arc<Webhooks>, cancel: CancellationToken) {
    let mut running: HashMap<String, (u64, Group)> = HashMap::new();
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
            if running
                .get(&id)
                .is_some_and(|(rev, _)| *rev == entry.revision)
            {
                continue;
            }
            if let Some((_, group)) = running.remove(&id) {
                group.shutdown().await;
            }
            if !matches!(entry.operation, Operation::Put) {
                continue;
            }
            let sub: Subscription = match serde_json::from_slice(&entry.value) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(webhook = %id, error = %e, "unreadable webhook subscription; not delivering it");
                    continue;
                }
            };
            if !sub.enabled {
                continue;
            }
            match start(&w, &sub).await {
                Ok(group) => {
                    running.insert(id, (entry.revision, group));
                }
                Err(e) => {
                    tracing::error!(webhook = %id, error = %e, "cannot start webhook deliveries")
                }
            }
        }
    }
    for (_, (_, group)) in running {
        group.shutdown().await;
    }
}

/// Starts this node's member for `sub`.
async fn start(w: &Arc<Webhooks>, sub: &Subscription) -> anyhow::Result<Group> {
    let mut headers = HeaderMap::new();
    for (k, v) in &sub.headers {
        headers.insert(
            HeaderName::try_from(k.as_str())?,
            HeaderValue::try_from(v.as_str())?,
        );
    }
    let target = Arc::new(Target {
        id: sub.id.clone(),
        url: Url::parse(&sub.url)?,
        secrets: sub.open_secrets(&w.key)?,
        headers,
    });
    let schedule = &w.config.retry_schedule;
    let timeout = w.config.timeout;
    let mut builder = w
        .bus
        .group(group_name(&sub.id))
        .deliver_new_only()
        .concurrency(CONCURRENCY)
        .max_deliver(u32::try_from(schedule.len() + 1).unwrap_or(u32::MAX))
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
    Ok(builder.start().await?)
}

/// One attempt, and what it means for the delivery.
async fn deliver(w: &Webhooks, t: &Target, meta: EventMeta) -> Result<(), HandlerError> {
    let body = Bytes::from(structured::to_json(&meta.event));
    let outcome = w
        .deliverer
        .attempt(&Attempt {
            url: &t.url,
            id: &meta.event.id,
            body,
            secrets: &t.secrets,
            headers: &t.headers,
        })
        .await;
    match outcome {
        Outcome::Delivered { .. } => Ok(()),
        Outcome::Gone { .. } => {
            disable(w, &t.id, "the endpoint answered 410 Gone").await;
            Ok(())
        }
        Outcome::Retry {
            status,
            error,
            after,
            ..
        } => {
            let delay = after.unwrap_or_else(|| jittered(&w.config.retry_schedule, meta.attempt));
            let what = match status {
                Some(s) => format!("the endpoint answered {s}"),
                None => format!("the attempt failed ({error})"),
            };
            Err(HandlerError::msg(what).retry_after(delay))
        }
        Outcome::Refused { reason } => Err(HandlerError::permanent(reason)),
    }
}

/// The schedule's delay after attempt `attempt` (1-based; the last repeats), ±10 %.
fn jittered(schedule: &[Duration], attempt: u32) -> Duration {
    let i = (attempt.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule.get(i).copied().unwrap_or(Duration::from_secs(5));
    // A factor in [0.9, 1.1).
    let factor = 0.9 + f64::from(OsRng.next_u32() % 2000) / 10_000.0;
    base.mul_f64(factor)
}

/// Marks subscription `id` disabled, saying why.
async fn disable(w: &Webhooks, id: &str, why: &str) {
    match store::get(&w.store, id).await {
        Ok(Some(mut sub)) => {
            sub.enabled = false;
            sub.disabled_reason = Some(why.to_owned());
            if let Err(e) = store::put(&w.store, &sub).await {
                tracing::error!(webhook = %id, error = %e, "cannot disable the subscription");
            } else {
                tracing::warn!(webhook = %id, reason = why, "webhook subscription disabled");
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(webhook = %id, error = %e, "cannot read the subscription to disable it")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_follows_the_schedule_with_jitter_and_the_last_repeats() {
        let s = [Duration::from_secs(10), Duration::from_secs(100)];
        for _ in 0..100 {
            let d = jittered(&s, 1);
            assert!(
                d >= Duration::from_secs(9) && d < Duration::from_secs(11),
                "{d:?}"
            );
            let d = jittered(&s, 7);
            assert!(
                d >= Duration::from_secs(90) && d < Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
