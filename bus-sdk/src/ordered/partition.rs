//! One lane of an ordered group in this member: a partition while this member owns it
//! (its consumer pinned to this member), or the lane of events without a key (shared by
//! every member). Deliveries of one key run one at a time in arrival order ([`KeyQueues`]),
//! each handling in a task of its own. A failed one in a partition is held aside with its
//! key ([`parking`]): it and the key's later events move, in order, to the key's parking
//! subject, where they are handled one at a time (the failed one retried in place), so
//! the key waits and the partition's other keys go on. (Without a key, or with
//! [`parking::MAX_PARKED_KEYS`] keys parked, a failed one is retried in place.)
//! Redeliveries of what this member already holds (an ack deadline that passed while the
//! connection was down) are ignored: the handling in hand settles them.
//!
//! Bound: the partition consumer hands this member at most its window of deliveries
//! before an ack, so the held, waiting, appending and running deliveries together stay
//! within it. Waiting deliveries get an in-progress ack every quarter ack deadline.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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
use super::parking;
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

type Running = Pin<Box<dyn Future<Output = (Option<String>, u64, Ended)> + Send>>;
/// An append to a parking subject: the key's token, the copy's sequence.
type Appending = Pin<Box<dyn Future<Output = (String, u64)> + Send>>;
/// A parked key's drain: its token, and whether its parking subject was found empty.
type Draining = Pin<Box<dyn Future<Output = (String, bool)> + Send>>;

/// How a handling in a lane ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Settled (acked or dead-lettered), or given back to the consumer.
    Settled,
    /// Failed, and moved to its key's parking subject: the key's later events follow it
    /// there; its next try waits `delay`.
    Parked { delay: Duration },
}

/// A key held aside in this partition: its events on their way to the parking subject
/// (one append at a time, in order), and whether its drain runs.
#[derive(Default)]
struct ParkedKey {
    queue: VecDeque<Message>,
    appending: bool,
    draining: bool,
}

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
        parked: HashMap::new(),
        appends: FuturesUnordered::new(),
        drains: FuturesUnordered::new(),
        drains_cancel: cancel.child_token(),
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
            Some((key, seq, ended)) = serving.running.next(), if !serving.running.is_empty() => {
                serving.settled(key, seq, ended);
            }
            Some((token, seq)) = serving.appends.next(), if !serving.appends.is_empty() => {
                serving.appended(token, seq);
            }
            Some((token, drained)) = serving.drains.next(), if !serving.drains.is_empty() => {
                serving.drain_ended(token, drained).await;
            }
            _ = serving.barrier.due(), if !serving.barrier.is_open() => {
                // Running handlings and appends may be acked while the check waits: not
                // counted.
                let held = serving.held.len() + serving.waiting().count();
                match serving.barrier.check(&mut consumer, held).await {
                    Check::Open => serving.open().await,
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
    /// Keys held aside, by token.
    parked: HashMap<String, ParkedKey>,
    appends: FuturesUnordered<Appending>,
    drains: FuturesUnordered<Draining>,
    /// Stops this serving's drains (the lane's cancel, or this serving ending: a lane
    /// re-opened after a failure reads its parked keys again).
    drains_cancel: CancellationToken,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.drains_cancel.cancel();
    }
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

    /// The barrier opened: the keys the partition's earlier holders parked are read
    /// (their later events must follow them), then what was held goes on in stream
    /// order. If they cannot be read the barrier closes again.
    async fn open(&mut self) {
        if let Lane::Partition(p) = self.lane {
            match parking::parked(&self.lanes.shared, p).await {
                Ok(tokens) => {
                    for token in tokens {
                        self.parked.entry(token.clone()).or_default();
                        self.start_drain(token, Duration::ZERO);
                    }
                }
                Err(e) => {
                    tracing::debug!(group = %self.lanes.shared.name, partition = p, error = %e, "reading the parked keys failed; checking again");
                    self.barrier.hold();
                    return;
                }
            }
        }
        for (seq, message) in std::mem::take(&mut self.held) {
            self.dispatch(message, seq);
        }
    }

    fn dispatch(&mut self, message: Message, seq: u64) {
        match self.lane {
            Lane::Unkeyed => self.start(None, message, seq),
            Lane::Partition(_) => {
                let key = key_of(&message);
                // A hash per delivery only while some key is parked.
                let token = (!self.parked.is_empty()).then(|| parking::token(&key));
                if let Some((token, parked)) =
                    token.and_then(|t| self.parked.get_mut(&t).map(|p| (t, p)))
                {
                    parked.queue.push_back(message);
                    self.next_append(token);
                } else if let Some(message) = self.keys.push(&key, message) {
                    self.start(Some(key), message, seq);
                }
            }
        }
    }

    fn settled(&mut self, key: Option<String>, seq: u64, ended: Ended) {
        self.known.remove(&seq);
        let Some(key) = key else { return };
        if let Ended::Parked { delay } = ended {
            // What waits behind it follows it to parking, in order.
            let token = parking::token(&key);
            let waiting = self.keys.take(&key);
            self.parked
                .entry(token.clone())
                .or_default()
                .queue
                .extend(waiting);
            self.next_append(token.clone());
            self.start_drain(token, delay);
        } else if let Some(next) = self.keys.settled(&key) {
            let next_seq = seq_of(&next).unwrap_or_default();
            self.start(Some(key), next, next_seq);
        }
    }

    /// Runs `message` to its settle in a task of its own: in a partition, parked on a
    /// failure (while fewer than [`parking::MAX_PARKED_KEYS`] keys are), else retried
    /// in place.
    fn start(&mut self, key: Option<String>, message: Message, seq: u64) {
        let shared = self.lanes.shared.clone();
        let slots = self.lanes.slots.clone();
        let cancel = self.cancel.clone();
        let park = match (self.lane, &key) {
            (Lane::Partition(p), Some(key)) if self.parked.len() < parking::MAX_PARKED_KEYS => {
                Some(Park {
                    partition: p,
                    token: parking::token(key),
                })
            }
            _ => None,
        };
        let task = self
            .lanes
            .tracker
            .spawn(async move { handle_in_place(shared, slots, message, seq, cancel, park).await });
        self.running.push(Box::pin(async move {
            // A panic is caught inside the delivery path; a task that ends otherwise
            // still frees its key.
            let ended = task.await.unwrap_or(Ended::Settled);
            (key, seq, ended)
        }));
    }

    /// Starts the next append of the parked key `token`, unless one runs: appends of a
    /// key go one at a time, so that they are stored in order.
    fn next_append(&mut self, token: String) {
        let Lane::Partition(p) = self.lane else {
            return;
        };
        let Some(parked) = self.parked.get_mut(&token) else {
            return;
        };
        if parked.appending {
            return;
        }
        let Some(message) = parked.queue.pop_front() else {
            return;
        };
        parked.appending = true;
        let shared = self.lanes.shared.clone();
        let cancel = self.cancel.clone();
        let seq = seq_of(&message).unwrap_or_default();
        let task = self.lanes.tracker.spawn({
            let token = token.clone();
            async move {
                let to = parking::To {
                    partition: p,
                    token: &token,
                    copy_seq: seq,
                };
                parking::park(&shared, &to, message.headers.as_ref(), &message, 0, &cancel).await;
            }
        });
        // In a task: a lane re-opened after a failure leaves it to finish (or to give
        // the delivery back on the lane's cancel).
        self.appends.push(Box::pin(async move {
            let _ = task.await;
            (token, seq)
        }));
    }

    /// An append ended (stored and its copy acked, or given back on the lane's cancel).
    fn appended(&mut self, token: String, seq: u64) {
        self.known.remove(&seq);
        if let Some(parked) = self.parked.get_mut(&token) {
            parked.appending = false;
        }
        self.next_append(token);
    }

    fn start_drain(&mut self, token: String, delay: Duration) {
        let Lane::Partition(p) = self.lane else {
            return;
        };
        let Some(parked) = self.parked.get_mut(&token) else {
            return;
        };
        if parked.draining {
            return;
        }
        parked.draining = true;
        let lanes = self.lanes.clone();
        let cancel = self.drains_cancel.clone();
        let task = self.lanes.tracker.spawn({
            let token = token.clone();
            async move { parking::drain(lanes, p, token, delay, cancel).await }
        });
        self.drains.push(Box::pin(async move {
            let drained = task.await.unwrap_or(false);
            (token, drained)
        }));
    }

    /// A parked key's drain found its parking subject empty (or stopped on the lane's
    /// cancel). With nothing of the key on its way there, and still nothing there when
    /// checked again here (no append can start meanwhile), the key goes back to its
    /// partition's flow; else the drain goes on.
    async fn drain_ended(&mut self, token: String, drained: bool) {
        let Lane::Partition(p) = self.lane else {
            return;
        };
        let Some(parked) = self.parked.get_mut(&token) else {
            return;
        };
        parked.draining = false;
        if self.drains_cancel.is_cancelled() {
            return;
        }
        // A drain that ended otherwise (a panic) starts again.
        let quiet = drained && !parked.appending && parked.queue.is_empty();
        if quiet && parking::is_drained(&self.lanes.shared, p, &token).await {
            // Deleted before the key can park again (a new drain would find the old
            // consumer, then lose it mid-handling).
            parking::close(&self.lanes.shared, p, &token).await;
            self.parked.remove(&token);
        } else {
            self.start_drain(token, Duration::ZERO);
        }
    }

    /// Deliveries in hand that have not started: waiting behind their key or on their
    /// way to parking.
    fn waiting(&self) -> impl Iterator<Item = &Message> {
        self.keys
            .waiting()
            .chain(self.parked.values().flat_map(|p| p.queue.iter()))
    }

    /// In-progress acks for deliveries waiting behind their key, for parking or the
    /// barrier.
    async fn keep_waiting_alive(&mut self) {
        for message in self.waiting().chain(self.held.values()) {
            ack(message, AckKind::Progress).await;
        }
    }

    /// Deliveries not started (held, waiting behind their key or for parking) go back
    /// to the consumer at once, in stream order: the next holder gets them first.
    async fn give_back(&mut self) {
        let for_parking: Vec<Message> = self
            .parked
            .values_mut()
            .flat_map(|p| std::mem::take(&mut p.queue))
            .collect();
        let mut back: Vec<(u64, Message)> = self
            .keys
            .take_waiting()
            .into_iter()
            .chain(for_parking)
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
        // Side by side: an append or a drain waiting for a running handling's slot
        // gives its delivery back at once (the lane's cancel).
        let (running, appends, drains) = (&mut self.running, &mut self.appends, &mut self.drains);
        futures::join!(
            async { while running.next().await.is_some() {} },
            async { while appends.next().await.is_some() {} },
            async { while drains.next().await.is_some() {} },
        );
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

/// Where a failed handling in a partition is parked.
pub(crate) struct Park {
    partition: u32,
    token: String,
}

/// Handles one delivery (`seq`: its copy's sequence) until it is settled: in a handler
/// slot, and after a failure either parked with its key (`park`: the first failure) or
/// again after its backoff, JetStream told meanwhile that it is in progress (while it
/// waits for a slot too: an ack deadline passing while this member lives would send it to
/// another holder). When the lane is given up (`cancel`) before a handling starts or
/// while it waits for a retry, the delivery goes back to the consumer instead: the lane's
/// next holder handles it, in order.
pub(crate) async fn handle_in_place(
    shared: Arc<OrderedShared>,
    slots: Arc<Semaphore>,
    message: Message,
    seq: u64,
    cancel: CancellationToken,
    mut park: Option<Park>,
) -> Ended {
    let ack_wait = shared.options.ack_wait;
    let Some(slot) = slot_for(&message, &slots, &cancel, ack_wait).await else {
        return Ended::Settled;
    };
    // Held while the handler runs, not while a retry waits: parked keys in backoff
    // would otherwise take every slot of the member.
    let mut slot = Some(slot);
    let mut delivery = match Delivery::read(message, Instant::now()) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(group = %shared.name, error = %e, "delivery without JetStream metadata");
            return Ended::Settled;
        }
    };
    // The handler, the span and a dead letter see the event's place in the events
    // stream, not its copy's, and a parked event's tries before it was parked.
    let header = |name: &str| {
        delivery
            .headers
            .as_deref()
            .and_then(|h| get_ignore_case(h, name))
            .and_then(|s| s.parse::<u64>().ok())
    };
    let (source_seq, tried) = (header(SOURCE_SEQ), header(parking::ATTEMPTS));
    if let Some(source_seq) = source_seq {
        delivery.stream_seq = source_seq;
    }
    if let Some(tried) = tried {
        let tried = u32::try_from(tried).unwrap_or(u32::MAX);
        delivery.attempt = delivery.attempt.saturating_add(tried);
    }
    loop {
        match handle_delivery(&*shared, delivery).await {
            Settled::Retry(back, delay) => {
                drop(slot.take());
                if let Some(to) = park.take() {
                    // Once tried, parking is seen through: an append that timed out may
                    // still have been stored, and the key's next owner would find it.
                    let to = parking::To {
                        partition: to.partition,
                        token: &to.token,
                        copy_seq: seq,
                    };
                    let headers = back.headers.as_deref();
                    return if parking::park(
                        &shared,
                        &to,
                        headers,
                        &back.message,
                        back.attempt,
                        &cancel,
                    )
                    .await
                    {
                        Ended::Parked { delay }
                    } else {
                        Ended::Settled
                    };
                }
                if !wait_alive(&back, delay, ack_wait, &cancel).await {
                    ack(&back.message, AckKind::Nak(None)).await;
                    return Ended::Settled;
                }
                slot = slot_for(&back.message, &slots, &cancel, ack_wait).await;
                if slot.is_none() {
                    return Ended::Settled;
                }
                delivery = *back;
                delivery.attempt = delivery.attempt.saturating_add(1);
                delivery.last_heard = Instant::now();
            }
            Settled::Acked(back, kind, sent) => {
                drop(slot.take());
                super::policy::confirm(&shared, &back.message, kind, sent, &cancel).await;
                return Ended::Settled;
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
