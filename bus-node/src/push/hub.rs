//! The node's one reader of the events stream for all its push clients: an ordered
//! consumer over every event type, each event encoded once ([`Frame`]) and handed to the
//! clients its type reaches ([`ClientIndex`]), each into its bounded buffer
//! (`push.client_buffer`). Overflow policy: a client whose buffer is full is cut off
//! ([`CloseReason::Slow`]: its transport says so, and it resumes from its last id), never
//! waited for, so one slow client costs the others nothing.
//!
//! The hub's position (the last sequence it handed out) changes under the same lock as
//! the client set: a client that joins learns the position it joined at, gets every
//! later event through its buffer, and replays the rest (see `session.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use bus_core::retry::backoff_delay;
use bus_core::telemetry::{self, HopSpan, HopTracer};
use bus_core::{EventPattern, EventType};
use bus_sdk::Bus;
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::frame::Frame;
use super::index::{ClientId, ClientIndex};
use super::position::Epoch;
use crate::metrics::PushMetrics;

/// How long asking for the stream's state may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the node ended a client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its buffer was full: it read slower than events came.
    Slow,
    /// The node is shutting down.
    GoingAway,
    /// The stream was deleted and made again: the client's sequence numbers mean
    /// nothing now.
    EpochChanged,
    /// The events stream could not be read.
    Unavailable,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Slow => "slow",
            CloseReason::GoingAway => "shutdown",
            CloseReason::EpochChanged => "epoch",
            CloseReason::Unavailable => "unavailable",
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Self> {
        [
            CloseReason::Slow,
            CloseReason::GoingAway,
            CloseReason::EpochChanged,
            CloseReason::Unavailable,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

/// Why a client's buffer closed (set by the hub before it drops the sender), and the
/// signal to its transport: a transport blocked on a client that does not read learns
/// it was cut off without waiting for the buffer (`signal`; for SSE, the connection's
/// [`ConnectionKill`](crate::http::server::ConnectionKill)).
#[derive(Debug, Default)]
pub struct Cut {
    reason: AtomicU8,
    pub signal: CancellationToken,
}

impl Cut {
    fn set(&self, reason: CloseReason) {
        self.reason.store(reason.code(), Ordering::Release);
        self.signal.cancel();
    }

    pub fn reason(&self) -> CloseReason {
        CloseReason::from_code(self.reason.load(Ordering::Acquire))
            .unwrap_or(CloseReason::Unavailable)
    }
}

#[derive(Debug)]
struct Member {
    buffer: mpsc::Sender<Arc<Frame>>,
    cut: Arc<Cut>,
}

#[derive(Debug, Default)]
struct State {
    index: ClientIndex,
    members: HashMap<ClientId, Member>,
    /// The last sequence handed out (or, before any, the stream's last when reading
    /// began).
    position: u64,
    epoch: Option<Epoch>,
}

#[derive(Debug)]
pub struct Hub {
    pub node: String,
    buffer: usize,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Clients at once (`push.max_clients`).
    pub client_slots: Arc<Semaphore>,
    /// Resumes replaying at once (`push.max_replays`).
    pub replay_slots: Arc<Semaphore>,
    pub heartbeat: Duration,
    closing: CancellationToken,
    pub metrics: PushMetrics,
}

/// A client's place in the hub; leaving it (drop) removes the client.
#[derive(Debug)]
pub struct Membership {
    hub: Arc<Hub>,
    pub id: ClientId,
    pub buffer: mpsc::Receiver<Arc<Frame>>,
    pub cut: Arc<Cut>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.members.remove(&self.id);
        state.index.remove(self.id);
    }
}

impl Membership {
    /// Changes what this client receives from the next event on.
    pub fn set_patterns(&self, patterns: Vec<EventPattern>) {
        let mut state = self.hub.lock();
        if state.members.contains_key(&self.id) {
            state.index.set(self.id, patterns);
        }
    }
}

impl Hub {
    pub fn new(
        node: String,
        config: &crate::config::PushConfig,
        closing: CancellationToken,
        metrics: PushMetrics,
    ) -> Self {
        Self {
            node,
            buffer: config.client_buffer,
            state: Mutex::default(),
            next_id: AtomicU64::new(1),
            client_slots: Arc::new(Semaphore::new(config.max_clients)),
            replay_slots: Arc::new(Semaphore::new(config.max_replays)),
            heartbeat: config.heartbeat,
            closing,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the node stops: every stream ends.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// The stream's epoch, once the hub has read it (before: push is not available).
    pub fn epoch(&self) -> Option<Epoch> {
        self.lock().epoch.clone()
    }

    /// Adds a client receiving `patterns` from the next event on, whose cut-off cancels
    /// `signal`; returns it and the position it joined at (every event after it comes
    /// through its buffer).
    pub fn join(
        self: &Arc<Self>,
        patterns: Vec<EventPattern>,
        signal: CancellationToken,
    ) -> (Membership, u64) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.buffer);
        let cut = Arc::new(Cut {
            reason: AtomicU8::new(0),
            signal,
        });
        let mut state = self.lock();
        state.index.set(id, patterns);
        state.members.insert(
            id,
            Member {
                buffer: tx,
                cut: cut.clone(),
            },
        );
        let position = state.position;
        drop(state);
        (
            Membership {
                hub: self.clone(),
                id,
                buffer: rx,
                cut,
            },
            position,
        )
    }

    /// Reads the stream and hands out its events until `cancel`, starting again (with
    /// backoff) whenever reading fails.
    pub async fn run(self: Arc<Self>, bus: Bus, cancel: CancellationToken) {
        let mut attempt = 0u32;
        loop {
            let read = self.read(&bus, &cancel, &mut attempt);
            match read.await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "push: reading the events stream failed; reading again");
                    attempt += 1;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff_delay(attempt)) => {}
                    }
                }
            }
        }
    }

    async fn read(
        &self,
        bus: &Bus,
        cancel: &CancellationToken,
        attempt: &mut u32,
    ) -> Result<(), String> {
        let name = &bus.config().streams.events_name;
        let js = bus.jetstream();
        let mut stream = tokio::time::timeout(INFO_TIMEOUT, js.get_stream(name))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let info = tokio::time::timeout(INFO_TIMEOUT, stream.info())
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let epoch = Epoch::new(name, info.created);
        let last = info.state.last_sequence;
        let start = {
            let mut state = self.lock();
            if state.epoch.as_ref() != Some(&epoch) {
                if state.epoch.is_some() {
                    tracing::warn!(%epoch, "push: the events stream was made again; every client resumes");
                    self.cut_all(&mut state, CloseReason::EpochChanged);
                }
                state.epoch = Some(epoch.clone());
                state.position = last;
            }
            state.position + 1
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: bus.subjects().all_events(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        tracing::info!(%epoch, from = start, "push: reading the events stream");
        loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                m = messages.next() => m,
            };
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the consumer ended".to_owned()),
            };
            *attempt = 0;
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            match bus_core::binary_mode::decode(message.headers.as_ref(), message.payload.clone()) {
                Ok(event) => {
                    self.hand_out(&epoch, seq, &event, &message);
                }
                Err(e) => {
                    tracing::debug!(seq, error = %e, "push: not pushed: the stored event cannot be decoded");
                    self.lock().position = seq;
                }
            }
        }
    }

    /// Hands event `seq` to every client its type reaches; returns how many took it.
    fn hand_out(
        &self,
        epoch: &Epoch,
        seq: u64,
        event: &bus_core::Event,
        message: &async_nats::jetstream::Message,
    ) -> usize {
        let event_type: &EventType = &event.event_type;
        {
            let mut state = self.lock();
            if state.index.reached_by(event_type).is_empty() {
                state.position = seq;
                return 0;
            }
        }
        // Encoded outside the lock; a client joining meanwhile sees the old position
        // and is reached below.
        let frame = Arc::new(Frame::new(epoch, seq, event));
        let mut span = push_span(event, message, &self.node);
        let mut state = self.lock();
        state.position = seq;
        let clients = state.index.reached_by(event_type);
        let mut reached = 0;
        let mut dropped = Vec::new();
        for id in clients.iter() {
            let Some(member) = state.members.get(id) else {
                continue;
            };
            match member.buffer.try_send(frame.clone()) {
                Ok(()) => reached += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    member.cut.set(CloseReason::Slow);
                    tracing::debug!(
                        client = id,
                        seq,
                        "push: a client fell behind its buffer; cut off"
                    );
                    self.metrics.drops(CloseReason::Slow).inc();
                    dropped.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => dropped.push(*id),
            }
        }
        for id in dropped {
            state.members.remove(&id);
            state.index.remove(id);
        }
        drop(state);
        span.record_push(reached);
        self.metrics.events.inc();
        reached
    }

    fn cut_all(&self, state: &mut State, reason: CloseReason) {
        for (id, member) in state.members.drain() {
            member.cut.set(reason);
            self.metrics.drops(reason).inc();
            state.index.remove(id);
        }
    }
}

/// The event's push span on this node (one per event, whatever the number of clients),
/// a child of its producer's context: none when telemetry is off or the flow is not
/// recorded.
fn push_span(
    event: &bus_core::Event,
    message: &async_nats::jetstream::Message,
    node: &str,
) -> HopSpan {
    if !telemetry::is_enabled() {
        return HopSpan::none();
    }
    let producer = match message.headers.as_ref() {
        Some(h) => telemetry::context_from_headers(h),
        None => telemetry::context_from_event(event),
    };
    if telemetry::skip(&producer).is_some() {
        return HopSpan::none();
    }
    HopSpan::push(
        &HopTracer::default(),
        message.subject.as_str(),
        &event.id,
        node,
        &producer,
    )
}
