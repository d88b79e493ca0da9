//! The sequencer of an ordered group: every member runs one, the group's consumer on the
//! events stream is pinned to one of them, and that one copies each event, in stream
//! order, into its key's partition subject on the ordered stream (or the lane of events
//! without a key), then acks it.
//!
//! Order within a partition: at most one copy per lane is in flight, the next one sent
//! only after the PubAck of the one before; lanes go on in parallel. A copy that fails is
//! sent again (same `Nats-Msg-Id`, so it is stored once) before anything after it in its
//! lane. A new sequencer (the pin moved: the old one stopped or died) waits at the
//! [`Barrier`] until every event the old one had in hand is acked or has come back to it,
//! then copies in stream order; what the old one had already copied is recognised as a
//! duplicate by its `Nats-Msg-Id` (`ord-<group>-<events stream epoch>-<sequence>`) and
//! not stored again ([`bus_core::topology::ORDERED_DUPLICATE_WINDOW`]).
//!
//! Bound: the group's consumer hands the sequencer at most `max_ack_pending` events
//! before an ack; held, queued and in-flight copies together stay within it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{AckKind, Message};
use bus_core::headers::{CE_PARTITIONKEY, get_ignore_case};
use bus_core::partition::partition_of;
use bus_core::retry::backoff_delay;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::barrier::{self, Barrier, Check, seq_of};
use super::policy::{SOURCE_SEQ, SOURCE_SUBJECT};
use super::pulls::Pulls;
use super::{BARRIER_CHECK, OrderedShared, SEQUENCER_ACK_WAIT, pause};
use crate::send_deadline;
use crate::subscription::run::ack;

pub(crate) async fn run(shared: Arc<OrderedShared>, cancel: CancellationToken) {
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        match serve(&shared, &cancel).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(group = %shared.name, error = %e, "ordered group's sequencer failed; re-opening");
                if !pause(&cancel, backoff_delay(failures)).await {
                    break;
                }
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// One copy being sent: its lane, the event, and how the publish ended.
type Copying = Pin<Box<dyn Future<Output = (usize, Message, Result<(), String>)> + Send>>;

async fn serve(shared: &Arc<OrderedShared>, cancel: &CancellationToken) -> Result<(), String> {
    let js = shared.bus.jetstream();
    let events_name = &shared.bus.config().streams.events_name;
    let mut events = send_deadline::within(js.get_stream(events_name)).await?;
    let epoch = send_deadline::within(events.info())
        .await?
        .created
        .unix_timestamp_nanos();
    let mut consumer: PullConsumer =
        send_deadline::within(events.get_consumer(shared.name.as_str())).await?;
    let window = shared.options.max_ack_pending;
    let mut pulls = Pulls::open(shared, events_name, shared.name.as_str(), window, true).await?;
    let lanes = shared.partitions as usize + 1;
    let mut s = Sequencing {
        shared: shared.clone(),
        epoch,
        queues: (0..lanes).map(|_| VecDeque::new()).collect(),
        busy: vec![false; lanes],
        held: BTreeMap::new(),
        known: HashSet::new(),
        copying: FuturesUnordered::new(),
        barrier: Barrier::new(true, BARRIER_CHECK),
    };
    let period = SEQUENCER_ACK_WAIT / 4;
    let mut progress = tokio::time::interval_at(Instant::now() + period, period);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Err(e) = pulls.top_up().await {
            s.give_back(&events, &mut consumer).await;
            return Err(e);
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                s.release(&events, &mut consumer, pulls).await;
                return Ok(());
            }
            Some((lane, message, result)) = s.copying.next(), if !s.copying.is_empty() => {
                s.copied(lane, message, result).await;
            }
            _ = s.barrier.due(), if !s.barrier.is_open() => {
                let held = s.known.len();
                match s.barrier.check(&mut consumer, held).await {
                    Check::Open => s.open(),
                    Check::Lost => s.give_back_held().await,
                    Check::Wait => {}
                }
            }
            _ = progress.tick() => s.keep_waiting_alive().await,
            next = pulls.next() => match next {
                Ok(Some(message)) => s.accept(message),
                Ok(None) => {}
                Err(e) => {
                    s.give_back(&events, &mut consumer).await;
                    return Err(e);
                }
            },
        }
    }
}

struct Sequencing {
    shared: Arc<OrderedShared>,
    /// The events stream's creation time: a stream made again restarts its sequences.
    epoch: i128,
    /// Per lane (partitions, then the lane without a key): events waiting to be copied.
    queues: Vec<VecDeque<Message>>,
    /// Per lane: a copy is in flight.
    busy: Vec<bool>,
    held: BTreeMap<u64, Message>,
    known: HashSet<u64>,
    copying: FuturesUnordered<Copying>,
    barrier: Barrier,
}

impl Sequencing {
    fn accept(&mut self, message: Message) {
        let Some(seq) = seq_of(&message) else {
            return;
        };
        self.barrier.on_delivery(&message);
        if !self.known.insert(seq) {
            return;
        }
        if self.barrier.is_open() {
            self.route(message);
        } else {
            self.held.insert(seq, message);
        }
    }

    fn open(&mut self) {
        for message in std::mem::take(&mut self.held).into_values() {
            self.route(message);
        }
    }

    /// Queues the event on its lane and sends it if the lane is free.
    fn route(&mut self, message: Message) {
        let key = message
            .headers
            .as_ref()
            .and_then(|h| get_ignore_case(h, CE_PARTITIONKEY));
        let lane = match key {
            Some(k) => partition_of(k, self.shared.partitions) as usize,
            None => self.shared.partitions as usize,
        };
        self.queues[lane].push_back(message);
        self.next_in(lane);
    }

    fn next_in(&mut self, lane: usize) {
        if self.busy[lane] {
            return;
        }
        if let Some(message) = self.queues[lane].pop_front() {
            self.busy[lane] = true;
            self.copying.push(self.copy(lane, message, None));
        }
    }

    /// Sends the copy of `message` (after `delay`, when it is a retry).
    fn copy(&self, lane: usize, message: Message, delay: Option<std::time::Duration>) -> Copying {
        let shared = self.shared.clone();
        let epoch = self.epoch;
        Box::pin(async move {
            if let Some(d) = delay {
                // Still in hand: its ack deadline starts again (a copy that expired
                // while this sequencer lives would come back to another holder).
                ack(&message, AckKind::Progress).await;
                tokio::time::sleep(d).await;
            }
            let result = publish_copy(&shared, epoch, lane, &message).await;
            (lane, message, result)
        })
    }

    async fn copied(&mut self, lane: usize, message: Message, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if let Some(seq) = seq_of(&message) {
                    self.known.remove(&seq);
                }
                ack(&message, AckKind::Ack).await;
                self.busy[lane] = false;
                self.next_in(lane);
            }
            Err(e) => {
                tracing::warn!(group = %self.shared.name, lane, error = %e, "copying an event into its partition failed; sending it again");
                // Stays first in its lane: nothing after it is copied before it.
                self.copying
                    .push(self.copy(lane, message, Some(backoff_delay(1))));
            }
        }
    }

    /// Events held back at the barrier go back to the group's consumer, in stream
    /// order, for the holder of the pin.
    async fn give_back_held(&mut self) {
        barrier::give_back(&mut self.held, &mut self.known).await;
    }

    /// Before re-opening after a failure: everything not copied goes back in stream
    /// order (copies in flight are dropped: their events come back after the ack
    /// deadline, and a copy already stored is recognised by its id), and the pin is let
    /// go, so that a standby sequencer can take over at once.
    async fn give_back(
        &mut self,
        events: &async_nats::jetstream::stream::Stream,
        consumer: &mut PullConsumer,
    ) {
        self.copying = FuturesUnordered::new();
        for message in self.queues.iter_mut().flat_map(std::mem::take) {
            self.held
                .insert(seq_of(&message).unwrap_or_default(), message);
        }
        self.give_back_held().await;
        self.barrier
            .let_go(consumer, events, self.shared.name.as_str())
            .await;
    }

    async fn keep_waiting_alive(&mut self) {
        for message in self.queues.iter().flatten().chain(self.held.values()) {
            ack(message, AckKind::Progress).await;
        }
    }

    /// Stops: the pin is let go and what was on its way read, copies in flight finish
    /// (each within its send deadline), events not copied go back to the group's
    /// consumer in stream order, and the pin is let go again if it came back meanwhile.
    async fn release(
        mut self,
        events: &async_nats::jetstream::stream::Stream,
        consumer: &mut PullConsumer,
        pulls: Pulls,
    ) {
        let name = self.shared.name.to_string();
        self.barrier.let_go(consumer, events, &name).await;
        for message in pulls.close().await {
            self.barrier.on_delivery(&message);
            if let Some(seq) = seq_of(&message)
                && self.known.insert(seq)
            {
                self.held.insert(seq, message);
            }
        }
        while let Some((_, message, result)) = self.copying.next().await {
            if result.is_ok() {
                ack(&message, AckKind::Ack).await;
            } else {
                self.held
                    .insert(seq_of(&message).unwrap_or_default(), message);
            }
        }
        for message in self.queues.iter_mut().flat_map(std::mem::take) {
            self.held
                .insert(seq_of(&message).unwrap_or_default(), message);
        }
        for message in self.held.values() {
            ack(message, AckKind::Nak(None)).await;
        }
        self.barrier.let_go(consumer, events, &name).await;
    }
}

/// Publishes the copy and waits for its PubAck, within the send deadline.
async fn publish_copy(
    shared: &OrderedShared,
    epoch: i128,
    lane: usize,
    message: &Message,
) -> Result<(), String> {
    let seq = seq_of(message).ok_or("no JetStream metadata")?;
    let subjects = shared.bus.subjects();
    let subject = if lane < shared.partitions as usize {
        subjects.ordered_partition(&shared.name, lane as u32)
    } else {
        subjects.ordered_unkeyed(&shared.name)
    };
    let mut headers = copied_headers(message.headers.as_ref(), true);
    headers.insert(SOURCE_SEQ, seq.to_string().as_str());
    headers.insert(SOURCE_SUBJECT, message.subject.as_str());
    let publish = PublishMessage::build()
        .headers(headers)
        .payload(message.payload.clone())
        .message_id(format!("ord-{}-{epoch}-{seq}", shared.name));
    store(shared, subject, publish).await
}

/// Publishes into the ordered stream and waits for the PubAck, within the send deadline.
pub(super) async fn store(
    shared: &OrderedShared,
    subject: String,
    publish: PublishMessage,
) -> Result<(), String> {
    let js = shared.bus.jetstream();
    send_deadline::within(async {
        let ack = js.send_publish(subject, publish).await?;
        ack.await.map(|_| ()).map_err(async_nats::Error::from)
    })
    .await
}

/// The event's headers for its copy, without the server's and publishers' `Nats-*`
/// ones: the source consumer's `Nats-Pin-Id` would come before the partition consumer's
/// own on delivery, and an expectation (`Nats-Expected-*`) or TTL set for the events
/// stream means nothing on the ordered one. Without the ordered groups' own `bus-ord-*`
/// either when `from_events` (they are the copy's to set: a redriven dead letter keeps
/// them, a publisher could forge them), and never with a parked event's tries
/// ([`super::parking::ATTEMPTS`]: each parking sets its own).
pub(super) fn copied_headers(original: Option<&HeaderMap>, from_events: bool) -> HeaderMap {
    let mut copy = HeaderMap::new();
    for (name, values) in original.into_iter().flat_map(HeaderMap::iter) {
        let name: &str = name.as_ref();
        let prefixed = |p: &str| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p);
        if prefixed("nats-")
            || (from_events && prefixed("bus-ord-"))
            || name.eq_ignore_ascii_case(super::parking::ATTEMPTS)
        {
            continue;
        }
        for value in values {
            copy.append(name, value.as_str());
        }
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_server_headers_should_copy_only_the_events_own() {
        let mut h = HeaderMap::new();
        h.insert("ce-id", "1");
        h.append("x-tag", "a");
        h.append("x-tag", "b");
        h.insert("Nats-Pin-Id", "stale");
        h.insert("nats-expected-stream", "BUS_EVENTS");
        h.insert("Nats-Msg-Id", "ce1-x");
        let copy = copied_headers(Some(&h), true);
        assert_eq!(copy.get("ce-id").map(|v| v.as_str()), Some("1"));
        assert_eq!(
            copy.get_all("x-tag")
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(copy.get("Nats-Pin-Id").is_none());
        assert!(copy.get("nats-expected-stream").is_none());
        assert!(copy.get("Nats-Msg-Id").is_none());
        assert!(copied_headers(None, true).is_empty());
    }

    #[test]
    fn given_ordered_headers_should_drop_them_from_events_and_a_parked_events_tries_always() {
        let mut h = HeaderMap::new();
        h.insert("ce-id", "1");
        h.insert("bus-ord-source-seq", "7");
        h.insert("Bus-Ord-Attempts", "4");
        let from_events = copied_headers(Some(&h), true);
        assert!(from_events.get("bus-ord-source-seq").is_none());
        assert!(from_events.get("Bus-Ord-Attempts").is_none());
        let parked = copied_headers(Some(&h), false);
        assert_eq!(
            parked.get("bus-ord-source-seq").map(|v| v.as_str()),
            Some("7")
        );
        assert!(parked.get("Bus-Ord-Attempts").is_none());
        assert_eq!(parked.get("ce-id").map(|v| v.as_str()), Some("1"));
    }
}
