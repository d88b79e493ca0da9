//! Parking: a failing key held aside so that it blocks only itself. When a key's event
//! fails in its partition, the partition's owner moves it, and every later event of the
//! key, in order, to the key's parking subject
//! (`bus.ord.<group>.park.<partition>.<token>`, in the ordered stream), and acks the
//! partition's copies: the partition's window is free again for its other keys. A
//! consumer of its own per parked key (`<group>-p<N>-k<token>`, `max_ack_pending` 1) then
//! hands the key's events to the owner one at a time, in order; the failed one is
//! retried in place until it is handled or dead-lettered, then the rest follow. When the
//! parking subject is empty (and nothing more of the key is on its way to it) the key
//! goes back to its partition's normal flow and the consumer is deleted.
//!
//! Everything that says a key is parked lives in JetStream: a partition's next owner
//! reads the parked keys from the stream's subjects before it handles anything, and sends
//! the keys' later events to parking too, so order holds through owner changes. Appends
//! carry `Nats-Msg-Id` `park-<group>-<copy's sequence>`: a copy appended by an owner that
//! died before acking it, then appended again by the next, is stored once.
//!
//! A key is named on the subject by a token: the first 128 bits of the SHA-256 of its
//! UTF-8 bytes, in hex (a key may hold any character, a subject token may not; two keys
//! with one token would share a parking subject, and a running handling of one could be
//! overtaken by a parked event of the other, so the token must not collide, even for
//! keys chosen to).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{AckKind, Message};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::OrderedShared;
use super::partition::{Lanes, handle_in_place};
use super::sequencer::copied_headers;
use crate::send_deadline;
use crate::subscription::run::ack;

/// Header on a parked event: how many times it was tried before it was parked.
pub(crate) const ATTEMPTS: &str = "bus-ord-attempts";
/// Most keys one partition's owner parks (each is a consumer): beyond it a failing key
/// is retried in place, holding its partition's window as before parking.
pub(crate) const MAX_PARKED_KEYS: usize = 32;
/// How long one pull on a parked key's consumer waits.
const DRAIN_EXPIRES: Duration = Duration::from_secs(1);
/// A parked key's consumer left without pulls (its owner gone) is deleted after this;
/// the next owner creates it again.
const INACTIVE: Duration = Duration::from_secs(600);

/// The token that names `key` on its parking subject.
pub(crate) fn token(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn consumer_name(shared: &OrderedShared, partition: u32, token: &str) -> String {
    format!("{}-p{partition}-k{token}", shared.name)
}

/// Appends one event of a parked key to its parking subject and waits for the PubAck.
/// `copy_seq`: the partition copy's sequence (the append's `Nats-Msg-Id`); `attempts`:
/// tries already made.
pub(crate) async fn append(
    shared: &OrderedShared,
    partition: u32,
    token: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    copy_seq: u64,
    attempts: u32,
) -> Result<(), String> {
    let subject = shared
        .bus
        .subjects()
        .ordered_parked(&shared.name, partition, token);
    // The source sequence and subject stay; the tries are this append's.
    let mut headers = copied_headers(headers, false);
    headers.insert(ATTEMPTS, attempts.to_string().as_str());
    let publish = PublishMessage::build()
        .headers(headers)
        .payload(payload)
        .message_id(format!("park-{}-{copy_seq}", shared.name));
    super::sequencer::store(shared, subject, publish).await
}

/// The ordered groups' stream.
async fn ordered_stream(
    shared: &OrderedShared,
) -> Result<async_nats::jetstream::stream::Stream, async_nats::Error> {
    Ok(shared
        .bus
        .jetstream()
        .get_stream(&shared.ordered_stream)
        .await?)
}

/// Where a delivery is parked: its key's parking subject in `partition`, and the
/// partition copy's sequence (the append's `Nats-Msg-Id`).
pub(crate) struct To<'a> {
    pub partition: u32,
    pub token: &'a str,
    pub copy_seq: u64,
}

/// Parks a delivery of a partition (`headers`: its headers, `attempts`: tries already
/// made): appends it to its key's parking subject until that is stored, then acks its
/// copy in the partition and confirms it; both acking progress while they try
/// again. `false` when the lane is given up (`cancel`) before it is stored: the copy
/// then goes back to the partition (an append that timed out may still be stored: the
/// next owner finds the key parked, and appending the copy again is deduplicated).
pub(crate) async fn park(
    shared: &OrderedShared,
    to: &To<'_>,
    headers: Option<&HeaderMap>,
    copy: &Message,
    attempts: u32,
    cancel: &CancellationToken,
) -> bool {
    let every = shared.options.ack_wait / 4;
    let mut failures = 0u32;
    loop {
        let stored = append(
            shared,
            to.partition,
            to.token,
            headers,
            copy.payload.clone(),
            to.copy_seq,
            attempts,
        )
        .await;
        match stored {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(group = %shared.name, partition = to.partition, error = %e, "parking an event failed; trying again");
                ack(copy, AckKind::Progress).await;
                let delay = bus_core::retry::backoff_delay(failures).min(every);
                if !super::pause(cancel, delay).await {
                    ack(copy, AckKind::Nak(None)).await;
                    return false;
                }
                failures = failures.saturating_add(1);
            }
        }
    }
    // Were the copy's ack lost, it would come back after the key's later events.
    super::policy::confirm(shared, copy, AckKind::Ack, false, cancel).await;
    true
}

/// The tokens of the keys parked in `partition`, read from the stream's subjects.
pub(crate) async fn parked(shared: &OrderedShared, partition: u32) -> Result<Vec<String>, String> {
    let filter = shared
        .bus
        .subjects()
        .ordered_parked_in(&shared.name, partition);
    send_deadline::within(async {
        let stream = ordered_stream(shared).await?;
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(&filter)
            .await?
            .try_collect()
            .await?;
        Ok::<_, async_nats::Error>(
            subjects
                .into_iter()
                .filter(|(_, count)| *count > 0)
                .filter_map(|(s, _)| s.rsplit('.').next().map(str::to_owned))
                .collect(),
        )
    })
    .await
}

/// Events of one parked key, one at a time, in order, retried in place, until its
/// parking subject is empty (then returns `true`) or `cancel` (`false`). Waits `delay`
/// first: the backoff after the failure that parked the key.
pub(crate) async fn drain(
    lanes: Lanes,
    partition: u32,
    token: String,
    delay: Duration,
    cancel: CancellationToken,
) -> bool {
    if !super::pause(&cancel, delay).await {
        return false;
    }
    let shared = lanes.shared.clone();
    let mut failures = 0u32;
    loop {
        match drain_once(&lanes, partition, &token, &cancel).await {
            Ok(end) => return end,
            Err(e) => {
                tracing::warn!(group = %shared.name, partition, key = %token, error = %e, "parked key's consumer failed; opening it again");
                let delay = bus_core::retry::backoff_delay(failures);
                if !super::pause(&cancel, delay).await {
                    return false;
                }
                failures = failures.saturating_add(1);
            }
        }
    }
}

async fn drain_once(
    lanes: &Lanes,
    partition: u32,
    token: &str,
    cancel: &CancellationToken,
) -> Result<bool, String> {
    let shared = &lanes.shared;
    let consumer = open(shared, partition, token).await?;
    loop {
        if cancel.is_cancelled() {
            return Ok(false);
        }
        match next(&consumer).await? {
            Some(message) if cancel.is_cancelled() => {
                ack(&message, AckKind::Nak(None)).await;
                return Ok(false);
            }
            Some(message) => {
                let seq = super::barrier::seq_of(&message).unwrap_or_default();
                handle_in_place(
                    shared.clone(),
                    lanes.slots.clone(),
                    message,
                    seq,
                    cancel.clone(),
                    None,
                )
                .await;
            }
            None => {
                if is_empty(&consumer).await? {
                    return Ok(true);
                }
            }
        }
    }
}

/// The parked key's consumer, created if it is not there (the first park of the key, or
/// an owner gone longer than its inactivity limit).
async fn open(shared: &OrderedShared, partition: u32, token: &str) -> Result<PullConsumer, String> {
    let name = consumer_name(shared, partition, token);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!(
            "bus ordered group {}: a failing key of partition {partition}, held aside",
            shared.name
        )),
        filter_subject: shared
            .bus
            .subjects()
            .ordered_parked(&shared.name, partition, token),
        ack_policy: AckPolicy::Explicit,
        ack_wait: shared.options.ack_wait,
        // The member dead-letters after `max_deliver` itself.
        max_deliver: -1,
        // One at a time: the key's order, also while its owner changes.
        max_ack_pending: 1,
        inactive_threshold: INACTIVE,
        ..Default::default()
    };
    send_deadline::within(async {
        let stream = ordered_stream(shared).await?;
        stream
            .get_or_create_consumer::<pull::Config>(&name, config)
            .await
            .map_err(async_nats::Error::from)
    })
    .await
}

/// The next parked event, or `None` when none came within a pull. Reads the pull to its
/// end: a delivery left unread would wait out its ack deadline.
async fn next(consumer: &PullConsumer) -> Result<Option<Message>, String> {
    let read = async {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(DRAIN_EXPIRES)
            .messages()
            .await?;
        let mut got = None;
        while let Some(message) = batch.next().await {
            got = Some(message?);
        }
        Ok::<_, async_nats::Error>(got)
    };
    match tokio::time::timeout(DRAIN_EXPIRES + send_deadline::SEND_DEADLINE, read).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("a pull on a parked key got no answer".to_owned()),
    }
}

/// Whether the parked key's consumer has nothing left: no event waiting, none in hand.
async fn is_empty(consumer: &PullConsumer) -> Result<bool, String> {
    let mut consumer = consumer.clone();
    let info = send_deadline::within(consumer.info()).await?;
    Ok(info.num_pending == 0 && info.num_ack_pending == 0)
}

/// Whether the parked key's consumer has nothing left (false when it cannot be read).
pub(crate) async fn is_drained(shared: &OrderedShared, partition: u32, token: &str) -> bool {
    match open(shared, partition, token).await {
        Ok(consumer) => is_empty(&consumer).await.unwrap_or(false),
        Err(_) => false,
    }
}

/// Deletes a drained key's consumer (a failure leaves it to its inactivity limit).
pub(crate) async fn close(shared: &OrderedShared, partition: u32, token: &str) {
    let name = consumer_name(shared, partition, token);
    let deleted = send_deadline::within(async {
        let stream = ordered_stream(shared).await?;
        stream
            .delete_consumer(&name)
            .await
            .map_err(async_nats::Error::from)
    })
    .await;
    if let Err(e) = deleted {
        tracing::debug!(consumer = %name, error = %e, "deleting a drained key's consumer failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_key_should_name_it_by_the_first_128_bits_of_its_sha256_in_hex() {
        // FIPS 180-2 test vectors for SHA-256, cut to 16 bytes.
        assert_eq!(token(""), "e3b0c44298fc1c149afbf4c8996fb924");
        assert_eq!(token("abc"), "ba7816bf8f01cfea414140de5dae2223");
    }
}
