//! One push client's stream, whatever its transport: a hello, then (when it resumes)
//! what it missed from JetStream, then the hub's live events, with heartbeats, until the
//! node cuts it off or stops. Every event comes once and in stream order: the client
//! replays until it reaches the end of the stream, joins the hub (learning the hub's
//! position), replays what the hub handed out before that, and from then on skips
//! anything at or below the last sequence it sent.
//!
//! [`Session::next`] is cancel-safe: a transport may select on it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bus_core::EventPattern;
use bus_sdk::Bus;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::frame::Frame;
use super::history::History;
use super::hub::{CloseReason, Hub, Membership};
use super::position::{Epoch, Position};
use crate::http::problem::Problem;

/// How long reading the stream's state for a resume may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a transport sends next.
#[derive(Debug)]
pub enum Item {
    /// First: which node and which epoch.
    Hello {
        node: String,
        epoch: Epoch,
    },
    Event(Arc<Frame>),
    /// The resume point is not in the stream any more (`bus.push.gap`).
    Gap(Value),
    Heartbeat,
    /// The last item: why the node ended the stream.
    Closed(CloseReason),
}

#[derive(Debug)]
enum Phase {
    /// Missed events; `joined` once the client is in the hub and this replay ends at
    /// the position it joined at.
    Replay {
        history: Option<Box<History>>,
        joined: bool,
    },
    Live,
    Ended,
}

enum Step {
    Replayed {
        read: Result<Option<(u64, Box<bus_core::Event>)>, String>,
        joined: bool,
    },
    Live(Arc<Frame>),
    Closed(CloseReason),
}

#[derive(Debug)]
pub struct Session {
    hub: Arc<Hub>,
    bus: Bus,
    patterns: Vec<EventPattern>,
    epoch: Epoch,
    /// The last sequence sent (or, without one, the position the stream started at).
    last: u64,
    notices: VecDeque<Item>,
    phase: Phase,
    membership: Option<Membership>,
    /// Cancelled when the hub cuts this client off.
    signal: tokio_util::sync::CancellationToken,
    /// The node stopping: one waiter per session, made once (a new one on every event
    /// would lock the token all sessions share, each time).
    closing: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    heartbeat: tokio::time::Interval,
    _client_slot: OwnedSemaphorePermit,
    replay_slot: Option<OwnedSemaphorePermit>,
}

impl Session {
    /// A client receiving `patterns`, from after `resume` when given, else from now;
    /// `signal` is cancelled if the hub cuts it off. 503 when the node holds
    /// `push.max_clients`, or `push.max_replays` resumes run.
    pub async fn open(
        hub: Arc<Hub>,
        bus: Bus,
        patterns: Vec<EventPattern>,
        resume: Option<Position>,
        signal: tokio_util::sync::CancellationToken,
    ) -> Result<Self, Problem> {
        let client_slot = hub.client_slots.clone().try_acquire_owned().map_err(|_| {
            Problem::unavailable(
                "this node serves its maximum of push clients (push.max_clients)",
                1,
            )
        })?;
        let Some(epoch) = hub.epoch() else {
            return Err(Problem::unavailable("push is starting", 1));
        };
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + hub.heartbeat, hub.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closing = Box::pin(hub.closing().clone().cancelled_owned());
        let mut session = Self {
            notices: VecDeque::from([Item::Hello {
                node: hub.node.clone(),
                epoch: epoch.clone(),
            }]),
            hub,
            bus,
            patterns,
            epoch,
            last: 0,
            phase: Phase::Live,
            membership: None,
            signal,
            closing,
            heartbeat,
            _client_slot: client_slot,
            replay_slot: None,
        };
        match resume {
            None => {
                let (membership, position) = session
                    .hub
                    .join(session.patterns.clone(), session.signal.clone());
                session.last = position;
                session.membership = Some(membership);
            }
            Some(at) => session.resume(at).await?,
        }
        Ok(session)
    }

    async fn resume(&mut self, at: Position) -> Result<(), Problem> {
        let slot = self
            .hub
            .replay_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Problem::unavailable(
                    "this node runs its maximum of resumes (push.max_replays)",
                    1,
                )
            })?;
        let name = &self.bus.config().streams.events_name;
        let info = async {
            let mut stream = self
                .bus
                .jetstream()
                .get_stream(name)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .info()
                .await
                .map(|i| (i.created, i.state.first_sequence))
                .map_err(|e| e.to_string())
        };
        let (created, first) = match tokio::time::timeout(INFO_TIMEOUT, info).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                return Err(Problem::unavailable(
                    format!("the events stream is not reachable: {e}"),
                    1,
                ));
            }
            Err(_) => {
                return Err(Problem::unavailable(
                    "the events stream did not answer in time",
                    1,
                ));
            }
        };
        let current = Epoch::new(name, created);
        let first = first.max(1);
        let asked = at.seq.saturating_add(1);
        let from = if at.epoch.as_deref().is_some_and(|e| e != current.as_str()) {
            self.notices.push_back(gap("epoch", asked, first));
            first
        } else if asked < first {
            self.notices.push_back(gap("trimmed", asked, first));
            first
        } else {
            asked
        };
        if current != self.epoch {
            // The hub has not seen the new stream yet: its events would carry the old
            // epoch. Let the client come back once it has.
            return Err(Problem::unavailable(
                "the events stream was made again; push is catching up",
                1,
            ));
        }
        let history = History::open(&self.bus, &self.patterns, from, None)
            .await
            .map_err(|e| Problem::unavailable(format!("cannot replay: {e}"), 1))?;
        self.hub.metrics.replays.inc();
        self.last = from - 1;
        self.phase = Phase::Replay {
            history: history.map(Box::new),
            joined: false,
        };
        self.replay_slot = Some(slot);
        Ok(())
    }

    /// Changes what the client receives (WebSocket `subscribe`/`unsubscribe`): live
    /// events from now on; a replay in progress keeps the patterns it began with.
    pub fn set_patterns(&mut self, patterns: Vec<EventPattern>) {
        if let Some(m) = &self.membership {
            m.set_patterns(patterns.clone());
        }
        self.patterns = patterns;
    }

    /// Cancelled once the hub has cut this client off (its transport may be blocked on
    /// a client that does not read).
    pub fn cut_signal(&self) -> tokio_util::sync::CancellationToken {
        self.signal.clone()
    }

    pub fn patterns(&self) -> &[EventPattern] {
        &self.patterns
    }

    /// What to send next; `None` after [`Item::Closed`].
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(notice) = self.notices.pop_front() {
                return Some(notice);
            }
            let step = match &mut self.phase {
                Phase::Ended => return None,
                Phase::Replay { history, joined } => {
                    let joined = *joined;
                    match history {
                        None => Step::Replayed {
                            read: Ok(None),
                            joined,
                        },
                        Some(h) => tokio::select! {
                            _ = &mut self.closing => Step::Closed(CloseReason::GoingAway),
                            read = h.next() => Step::Replayed { read: read.map(|r| r.map(|(seq, e)| (seq, Box::new(e)))), joined },
                        },
                    }
                }
                Phase::Live => match self.membership.as_mut() {
                    None => Step::Closed(CloseReason::Unavailable),
                    Some(membership) => tokio::select! {
                    biased;
                    _ = &mut self.closing => Step::Closed(CloseReason::GoingAway),
                    frame = membership.buffer.recv() => match frame {
                        Some(f) => Step::Live(f),
                        None => Step::Closed(membership.cut.reason()),
                    },
                    _ = self.heartbeat.tick() => return Some(Item::Heartbeat),
                    },
                },
            };
            match step {
                Step::Live(f) if f.seq <= self.last => {}
                Step::Live(f) => {
                    self.last = f.seq;
                    return Some(Item::Event(f));
                }
                Step::Closed(reason) => return Some(self.end(reason)),
                Step::Replayed {
                    read: Ok(Some((seq, _))),
                    ..
                } if seq <= self.last => {}
                Step::Replayed {
                    read: Ok(Some((seq, event))),
                    ..
                } => {
                    self.last = seq;
                    return Some(Item::Event(Arc::new(Frame::new(&self.epoch, seq, &event))));
                }
                Step::Replayed {
                    read: Ok(None),
                    joined: false,
                } => {
                    // At the end of the stream: join, then replay what the hub handed
                    // out before this client was in it. (Cancelled meanwhile, the next
                    // call joins again, from a position no earlier.)
                    let (membership, position) =
                        self.hub.join(self.patterns.clone(), self.signal.clone());
                    self.membership = Some(membership);
                    if position <= self.last {
                        self.go_live();
                        continue;
                    }
                    let rest =
                        // Boxed: the live phase's future does not carry the replay's.
                        Box::pin(History::open(&self.bus, &self.patterns, self.last + 1, Some(position)))
                            .await;
                    match rest {
                        Ok(rest) => {
                            self.phase = Phase::Replay {
                                history: rest.map(Box::new),
                                joined: true,
                            };
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "push: a resume could not finish its replay");
                            return Some(self.end(CloseReason::Unavailable));
                        }
                    }
                }
                Step::Replayed {
                    read: Ok(None),
                    joined: true,
                } => self.go_live(),
                Step::Replayed { read: Err(e), .. } => {
                    tracing::warn!(error = %e, "push: a replay failed");
                    return Some(self.end(CloseReason::Unavailable));
                }
            }
        }
    }

    fn go_live(&mut self) {
        self.phase = Phase::Live;
        self.replay_slot = None;
    }

    fn end(&mut self, reason: CloseReason) -> Item {
        self.phase = Phase::Ended;
        self.membership = None;
        self.replay_slot = None;
        if reason == CloseReason::Unavailable {
            // Cut-offs by the hub are counted where they happen.
            self.hub.metrics.drops(reason).inc();
        }
        Item::Closed(reason)
    }
}

fn gap(reason: &str, requested: u64, first: u64) -> Item {
    Item::Gap(json!({"reason": reason, "requested": requested, "first_seq": first}))
}
