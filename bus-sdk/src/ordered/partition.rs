//! One lane of an ordered group in this member: a partition while this member owns it
//! (its consumer pinned to this member), or the lane of events without a key (shared by
//! every member). Deliveries of one key run one at a time in arrival order ([`KeyQueues`]),
//! each handling in a task of its own; a failed one is retried in place, so its key
//! waits and the partition's other keys go on. Redeliveries of what this member already
//! holds (an ack deadline that passed while the connection was down) are ignored: the
//! handling in hand settles them.
//!
//! Bound: the partition consumer hands this member at most its window of deliveries
//! before an ack, so the held, waiting and running deliveries together stay within it.
//! Waiting deliveries get an in-progress ack every quarter ack deadline.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use bus_core::headers::{CE_PARTITIONKEY, get_ignore_case};
use bus_core::retry::backoff_delay;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::barrier::{self, Barrier, Check, seq_of};
pub(crate) use super::consumers::Lane;
use super::keys::KeyQueues;
use super::policy::{SOURCE_SEQ, Settled};
use super::pulls::Pulls;
use super::{BARRIER_CHECK, OrderedShared, PIN_GROUP, pause};
use crate::send_deadline;
use crate::subscription::run::ack;
use crate::subscription::{Delivery, handle_delivery};

/// What a member's lanes share: the group, the member's handler slots
/// (`concurrency`, across all its lanes) and the tasks shutdown waits for.
#[derive(Clone)]
pub(crate) struct Lanes {
    pub shared: Arc<OrderedShared>,
    pub slots: Arc<Semaphore>,
    pub tracker: TaskTracker,
}

/// Serves `lane` until `cancel`, re-opening its consumer after failures; on `cancel` it
/// hands back what it holds (see [`Serving::release`]).
pub(crate) async fn run(lanes: Lanes, lane: Lane, cancel: CancellationToken) {
    let group = lanes.shared.name.clone();
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        match serve(&lanes, lane, &cancel).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(%group, ?lane, error = %e, "ordered lane failed; re-opening");
                if !pause(&cancel, backoff_delay(failures)).await {
                    break;
                }
                failures = failures.saturating_add(1);
            }
        }
    }
}

type Running = Pin<Box<dyn Future<Output = (Option<String>, u64)> + Send>>;

async fn serve(lanes: &Lanes, lane: Lane, cancel: &CancellationToken) -> Result<(), String> {
    let shared = &lanes.shared;
    let name = lane.consumer_name(&shared.name);
    let stream =
        send_deadline::within(shared.bus.jetstream().get_stream(&shared.ordered_stream)).await?;
    let mut consumer: PullConsumer = send_deadline::within(stream.get_consumer(&name)).await?;
    if lane.pinned() {
        // Taking the partition over: the pin moves here now (not after the old holder's
        // pin timeout); the barrier keeps order with what the old holder still has.
        if let Err(e) = send_deadline::within(stream.unpin_consumer(&name, PIN_GROUP)).await {
            tracing::debug!(consumer = %name, error = %e, "unpinning failed");
        }
    }
    let window = if lane.pinned() {
        shared.partition_window()
    } else {
        shared.options.concurrency
    };
    let mut pulls =
        Pulls::open(shared, &shared.ordered_stream, &name, window, lane.pinned()).await?;
    let mut serving = Serving {
        lanes: lanes.clone(),
        lane,
        cancel: cancel.clone(),
        keys: KeyQueues::default(),
        held: BTreeMap::new(),
        known: HashSet::new(),
        running: FuturesUnordered::new(),
        barrier: Barrier::new(lane.pinned(), BARRIER_CHECK),
    };
    let period = shared.options.ack_wait / 4;
    let mut progress = tokio::time::interval_at(Instant::now() + period, period);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Err(e) = pulls.top_up().await {
            serving.give_back().await;
            return Err(e);
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                serving.release(&stream, &mut consumer, &name, pulls).await;
                return Ok(());
            }
            Some((key, seq)) = serving.running.next(), if !serving.running.is_empty() => {
                serving.settled(key, seq);
            }
            _ = serving.barrier.due(), if !serving.barrier.is_open() => {
                // Running handlings may be acked while the check waits: not counted.
                let held = serving.held.len() + serving.keys.waiting().count();
                match serving.barrier.check(&mut consumer, held).await {
                    Check::Open => serving.open(),
                    Check::Lost => serving.give_back_held().await,
                    Check::Wait => {}
                }
            }
            _ = progress.tick() => serving.keep_waiting_alive().await,
            next = pulls.next() => match next {
                Ok(Some(message)) => serving.accept(message),
                Ok(None) => {}
                Err(e) => {
                    // Re-opened after this: what waits goes back now rather than after
                    // its ack deadline (running handlings go on and settle).
                    serving.give_back().await;
                    return Err(e);
                }
            },
        }
    }
}

struct Serving {
    lanes: Lanes,
    lane: Lane,
    /// The lane's: a handling waiting for a slot or a retry gives its delivery back.
    cancel: CancellationToken,
    keys: KeyQueues<Message>,
    /// Deliveries received while the barrier is closed, by stream sequence.
    held: BTreeMap<u64, Message>,
    /// Stream sequences of every delivery in hand: held, waiting or running.
    known: HashSet<u64>,
    running: FuturesUnordered<Running>,
    barrier: Barrier,
}

impl Serving {
    fn accept(&mut self, message: Message) {
        let Some(seq) = seq_of(&message) else {
            tracing::warn!("delivery without JetStream metadata");
            return;
        };
        self.barrier.on_delivery(&message);
        if !self.known.insert(seq) {
            // A redelivery of one in hand: that one settles it.
            return;
        }
        if self.barrier.is_open() {
            self.dispatch(message, seq);
        } else {
            self.held.insert(seq, message);
        }
    }

    /// The barrier opened: what was held goes on in stream order.
    fn open(&mut self) {
        for (seq, message) in std::mem::take(&mut self.held) {
            self.dispatch(message, seq);
        }
    }

    fn dispatch(&mut self, message: Message, seq: u64) {
        match self.lane {
            Lane::Unkeyed => self.start(None, message, seq),
            Lane::Partition(_) => {
                let key = key_of(&message);
                if let Some(message) = self.keys.push(&key, message) {
                    self.start(Some(key), message, seq);
                }
            }
        }
    }

    fn settled(&mut self, key: Option<String>, seq: u64) {
        self.known.remove(&seq);
        if let Some(key) = key
            && let Some(next) = self.keys.settled(&key)
        {
            let next_seq = seq_of(&next).unwrap_or_default();
            self.start(Some(key), next, next_seq);
        }
    }

    /// Runs `message` to its settle in a task of its own, retrying it in place.
    fn start(&mut self, key: Option<String>, message: Message, seq: u64) {
        let shared = self.lanes.shared.clone();
        let slots = self.lanes.slots.clone();
        let cancel = self.cancel.clone();
        let task = self
            .lanes
            .tracker
            .spawn(async move { handle_in_place(shared, slots, message, cancel).await });
        self.running.push(Box::pin(async move {
            // A panic is caught inside the delivery path; a task that ends otherwise
            // still frees its key.
            let _ = task.await;
            (key, seq)
        }));
    }

    /// In-progress acks for deliveries waiting behind their key or the barrier.
    async fn keep_waiting_alive(&mut self) {
        for message in self.keys.waiting().chain(self.held.values()) {
            ack(message, AckKind::Progress).await;
        }
    }

    /// Deliveries not started (held or waiting behind their key) go back to the
    /// consumer at once, in stream order: the next holder gets them first.
    async fn give_back(&mut self) {
        let mut back: Vec<(u64, Message)> = self
            .keys
            .take_waiting()
            .into_iter()
            .map(|m| (seq_of(&m).unwrap_or_default(), m))
            .chain(std::mem::take(&mut self.held))
            .collect();
        back.sort_by_key(|(seq, _)| *seq);
        for (seq, message) in &back {
            self.known.remove(seq);
            ack(message, AckKind::Nak(None)).await;
        }
    }

    /// Deliveries held back at the barrier go back to the consumer, in stream order, for
    /// the holder of the pin.
    async fn give_back_held(&mut self) {
        barrier::give_back(&mut self.held, &mut self.known).await;
    }

    /// Gives up the lane: the pin is let go (nothing more comes here), what was already
    /// on its way is read, deliveries not started go back to the consumer at once in
    /// stream order (the next holder gets them first), running ones finish and settle,
    /// and the pin is let go again if it came back meanwhile.
    async fn release(
        mut self,
        stream: &async_nats::jetstream::stream::Stream,
        consumer: &mut PullConsumer,
        name: &str,
        pulls: Pulls,
    ) {
        self.barrier.let_go(consumer, stream, name).await;
        for message in pulls.close().await {
            self.barrier.on_delivery(&message);
            if let Some(seq) = seq_of(&message)
                && self.known.insert(seq)
            {
                self.held.insert(seq, message);
            }
        }
        self.give_back().await;
        while self.running.next().await.is_some() {}
        self.barrier.let_go(consumer, stream, name).await;
    }
}

/// The delivery's ordering key (`ce-partitionkey`); empty when it has none (only an
/// event the sequencer could not read reaches a partition so).
fn key_of(message: &Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| get_ignore_case(h, CE_PARTITIONKEY))
        .unwrap_or_default()
        .to_owned()
}

/// Handles one delivery until it is settled: in a handler slot, and after a failure
/// again after its backoff, JetStream told meanwhile that it is in progress (while it
/// waits for a slot too: an ack deadline passing while this member lives would send it to
/// another holder). When the lane is given up (`cancel`) before a handling starts or
/// while it waits for a retry, the delivery goes back to the consumer instead: the lane's
/// next holder handles it, in order.
async fn handle_in_place(
    shared: Arc<OrderedShared>,
    slots: Arc<Semaphore>,
    message: Message,
    cancel: CancellationToken,
) {
    let ack_wait = shared.options.ack_wait;
    let Some(_slot) = slot_for(&message, &slots, &cancel, ack_wait).await else {
        return;
    };
    let mut delivery = match Delivery::read(message, Instant::now()) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(group = %shared.name, error = %e, "delivery without JetStream metadata");
            return;
        }
    };
    // The handler, the span and a dead letter see the event's place in the events
    // stream, not its copy's.
    if let Some(seq) = delivery
        .headers
        .as_deref()
        .and_then(|h| get_ignore_case(h, SOURCE_SEQ))
        .and_then(|s| s.parse().ok())
    {
        delivery.stream_seq = seq;
    }
    loop {
        match handle_delivery(&*shared, delivery).await {
            Settled::Done => return,
            Settled::Retry(back, delay) => {
                if !wait_alive(&back, delay, ack_wait, &cancel).await {
                    ack(&back.message, AckKind::Nak(None)).await;
                    return;
                }
                delivery = *back;
                delivery.attempt = delivery.attempt.saturating_add(1);
                delivery.last_heard = Instant::now();
            }
            Settled::Unconfirmed(back, kind) => {
                confirm(&shared, &back, kind, &cancel).await;
                return;
            }
        }
    }
}

/// A handler slot, acking progress while it waits; `None` (the delivery given back)
/// when the lane is given up first.
async fn slot_for(
    message: &Message,
    slots: &Arc<Semaphore>,
    cancel: &CancellationToken,
    ack_wait: Duration,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let every = ack_wait / 4;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                ack(message, AckKind::Nak(None)).await;
                return None;
            }
            slot = slots.clone().acquire_owned() => return slot.ok(),
            _ = tick.tick() => ack(message, AckKind::Progress).await,
        }
    }
}

/// Waits `delay` before a retry in place, acking progress every half ack deadline;
/// false when the lane is given up meanwhile.
async fn wait_alive(
    delivery: &Delivery,
    delay: Duration,
    ack_wait: Duration,
    cancel: &CancellationToken,
) -> bool {
    let until = Instant::now() + delay;
    let every = ack_wait / 2;
    loop {
        ack(&delivery.message, AckKind::Progress).await;
        let now = Instant::now();
        if now >= until {
            return true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep_until(until.min(now + every)) => {}
        }
    }
}

/// Settles a delivery whose ack could not be sent: sends it again until it goes out.
/// Meanwhile the key waits (were the ack lost, the event would come back after the
/// key's next one). Given up when the lane is: the event then stays pending and its next
/// holder handles it again first (at least once), never after a later one.
async fn confirm(
    shared: &OrderedShared,
    delivery: &Delivery,
    kind: AckKind,
    cancel: &CancellationToken,
) {
    let mut attempt = 0u32;
    loop {
        let every = shared.options.ack_wait / 2;
        let wait = backoff_delay(attempt).min(every);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match super::policy::send_ack(&delivery.message, kind).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(group = %shared.name, error = %e, "settling could not be sent yet; sending it again");
                attempt = attempt.saturating_add(1);
            }
        }
    }
}
