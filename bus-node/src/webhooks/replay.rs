//! Replays: the events a subscription's types match that the events stream still holds
//! from a time or a sequence on, sent again to that one subscription. Each is published
//! to the subscription group's redrive subject (as a dead-letter redrive is), so only that
//! subscription gets it, with the same event (same id: receivers that de-duplicate on
//! `webhook-id` see a replay as a duplicate) and fresh attempts. One call sends at most
//! [`MAX_REPLAY`] events, up to the last one stored when it began, and says where to go
//! on from.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use bus_core::headers::{CE_TYPE, get_ignore_case};
use bus_core::{EventPattern, GroupName};
use bus_sdk::Bus;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::engine::group_name;
use super::store::Subscription;

/// Most events one replay call sends.
pub const MAX_REPLAY: usize = 10_000;
/// Publishes awaiting their acknowledgement at once.
const IN_FLIGHT: usize = 128;
/// How long one read or acknowledgement may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a replay starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    Time(time::OffsetDateTime),
    Sequence(u64),
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub count: usize,
    /// Where the next call goes on (`since_seq`), when this one stopped at its bound.
    pub next_seq: Option<u64>,
}

/// Why a replay stopped short.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the events stream is not reachable: {0}")]
    Unavailable(String),
    #[error("the subscription's types cannot be read: {0}")]
    Types(String),
}

fn unavailable(e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Unavailable(e.to_string())
}

/// Replays to `sub` what the stream holds from `from` on.
pub async fn replay(bus: &Bus, sub: &Subscription, from: Start) -> Result<Replayed, ReplayError> {
    let group =
        GroupName::new(group_name(&sub.id)).map_err(|e| ReplayError::Types(e.to_string()))?;
    let mut filters = Vec::with_capacity(sub.types.len());
    for t in &sub.types {
        let p = EventPattern::new(t.as_str()).map_err(|e| ReplayError::Types(e.to_string()))?;
        filters.push(bus.subjects().pattern(&p));
    }
    let js = bus.jetstream();
    let mut stream = js
        .get_stream(&bus.config().streams.events_name)
        .await
        .map_err(unavailable)?;
    let last = stream
        .info()
        .await
        .map_err(unavailable)?
        .state
        .last_sequence;
    let deliver_policy = match from {
        Start::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
        Start::Sequence(s) => DeliverPolicy::ByStartSequence {
            start_sequence: s.max(1),
        },
    };
    if matches!(from, Start::Sequence(s) if s > last) {
        return Ok(Replayed {
            count: 0,
            next_seq: None,
        });
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: filters,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    if consumer.cached_info().num_pending == 0 {
        // Nothing from there on: no message would come.
        return Ok(Replayed {
            count: 0,
            next_seq: None,
        });
    }
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    let mut acks = FuturesUnordered::new();
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    let mut count = 0;
    let mut next_seq = None;
    loop {
        if count == MAX_REPLAY {
            break;
        }
        let message = match tokio::time::timeout(STEP_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(unavailable(e)),
            Ok(None) => break,
            Err(_) => return Err(unavailable("reading the events stream timed out")),
        };
        let info = message.info().map_err(unavailable)?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > last {
            break;
        }
        let Some(event_type) = message
            .headers
            .as_ref()
            .and_then(|h| get_ignore_case(h, CE_TYPE))
            .and_then(|t| bus_core::EventType::new(t).ok())
        else {
            tracing::warn!(seq, "not replayed: the stored event has no valid ce-type");
            continue;
        };
        let mut headers = HeaderMap::new();
        if let Some(stored) = &message.headers {
            for (name, values) in stored.iter() {
                if name.to_string().to_ascii_lowercase().starts_with("nats-") {
                    continue;
                }
                for v in values {
                    headers.append(name.clone(), v.clone());
                }
            }
        }
        headers.insert("Nats-Msg-Id", format!("replay-{nonce}-{seq}").as_str());
        let ack = js
            .publish_with_headers(
                bus.subjects().redrive(&group, &event_type),
                headers,
                message.payload.clone(),
            )
            .await
            .map_err(unavailable)?;
        acks.push(ack.into_future());
        count += 1;
        while acks.len() >= IN_FLIGHT {
            settle(&mut acks).await?;
        }
        if pending == 0 || seq == last {
            break;
        }
        if count == MAX_REPLAY {
            next_seq = Some(seq + 1);
        }
    }
    while !acks.is_empty() {
        settle(&mut acks).await?;
    }
    Ok(Replayed { count, next_seq })
}

async fn settle<F, E>(acks: &mut FuturesUnordered<F>) -> Result<(), ReplayError>
where
    F: std::future::Future<Output = Result<async_nats::jetstream::publish::PublishAck, E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(STEP_TIMEOUT, acks.next()).await {
        Ok(Some(Ok(_))) | Ok(None) => Ok(()),
        Ok(Some(Err(e))) => Err(unavailable(e)),
        Err(_) => Err(unavailable("a replayed event was not acknowledged in time")),
    }
}
