//! One member's fetch loop: pull deliveries from the group's consumer, a bounded number
//! ahead of its handler slots, run each (here until it first waits, then on one of the
//! member's runners), and recover the consumer after failures.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use bus_core::GroupName;
use bus_core::retry::backoff_delay;
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::puller::{PullError, Puller};
use super::runners::{Job, Runners};
use super::{GroupOptions, consumer, handoff, policy};
use crate::bus::Bus;
use crate::send_deadline;
use crate::subscription::Handlers;

/// How often the server proves a waiting pull is alive; two missed and the pulls are
/// asked for again.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long one pull request waits on the server before it ends with a 408.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// The JetStream API subject prefix (no domain).
pub(crate) const JS_API_PREFIX: &str = "$JS.API";

/// What every part of a member reads.
pub(crate) struct Shared {
    pub bus: Bus,
    pub name: GroupName,
    pub options: GroupOptions,
    pub handlers: Handlers,
    /// This member's subject filters (the consumer's may be wider).
    pub filters: Vec<String>,
    /// The hand-off bucket (`None`: not there, and the bus may not create it).
    pub handoffs: Option<async_nats::jetstream::kv::Store>,
}

pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken, tracker: TaskTracker) {
    let group = shared.name.clone();
    // One set of slots for the member's life: handlers still running from before a
    // re-open keep theirs.
    let slots = Arc::new(Semaphore::new(shared.options.concurrency));
    // Likewise the runners: what they run goes on through a re-open, and after this
    // loop ends they finish it (the group's tracker waits for them).
    let mut runners = Runners::start(shared.options.concurrency, &tracker);
    let mut failures = 0u32;
    'connect: while !cancel.is_cancelled() {
        let puller = match open(&shared).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%group, error = %e, "cannot open the group's consumer; retrying");
                failures += 1;
                if back_off(&cancel, failures).await {
                    continue;
                }
                break;
            }
        };
        let mut fetch = Fetch::new(&shared, puller, slots.clone());
        let failed = loop {
            fetch.start_buffered(&shared, &mut runners);
            if let Err(e) = fetch.top_up().await {
                break e;
            }
            let waiting = !fetch.buffer.is_empty();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    fetch.hand_back(&shared).await;
                    break 'connect;
                }
                p = fetch.slots.clone().acquire_owned(), if waiting => match p {
                    Ok(permit) => fetch.start_one(&shared, &mut runners, permit),
                    Err(_) => break 'connect,
                },
                _ = fetch.progress.tick(), if waiting => fetch.keep_buffered_alive().await,
                next = fetch.puller.next() => match next {
                    Ok(Some(message)) => {
                        failures = 0;
                        fetch.buffer.push_back((message, Instant::now()));
                    }
                    Ok(None) => {}
                    Err(PullError::Silent(after)) => {
                        tracing::debug!(%group, ?after, "pulls went silent; asking again");
                    }
                    Err(e) => break e,
                },
            }
        };
        tracing::warn!(%group, error = %failed, "pull failed; re-opening the consumer");
        failures += 1;
        fetch.hand_back(&shared).await;
        if !back_off(&cancel, failures).await {
            break;
        }
    }
    tracing::debug!(%group, "member stopped fetching");
}

/// One member's deliveries between the server and its handlers.
///
/// Bound: `concurrency` handlers run at once, and at most as many deliveries again are
/// requested or prefetched, so a slot that frees starts the next delivery at once instead
/// of after a round trip to the server. Prefetched deliveries wait in `buffer` (bounded
/// by the same count; a delivery of a pull given up for lost can add at most one pull's
/// worth) and get an in-progress ack within every half ack deadline while they wait.
struct Fetch {
    puller: Puller,
    slots: Arc<Semaphore>,
    concurrency: usize,
    /// Running + requested + prefetched deliveries allowed.
    capacity: usize,
    /// Free room at which another pull is sent (half the capacity).
    top_up_at: usize,
    buffer: VecDeque<(Message, Instant)>,
    ack_wait: Duration,
    progress: tokio::time::Interval,
}

impl Fetch {
    fn new(shared: &Shared, puller: Puller, slots: Arc<Semaphore>) -> Self {
        let concurrency = shared.options.concurrency;
        let capacity = concurrency * 2;
        let ack_wait = shared.options.ack_wait;
        // A waiting delivery is acked within two periods (half its deadline) of the last.
        let period = ack_wait / 4;
        let mut progress = tokio::time::interval_at(Instant::now() + period, period);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            puller,
            slots,
            concurrency,
            capacity,
            top_up_at: (capacity / 2).max(1),
            buffer: VecDeque::with_capacity(capacity),
            ack_wait,
            progress,
        }
    }

    /// Starts buffered deliveries while handler slots are free.
    fn start_buffered(&mut self, shared: &Arc<Shared>, runners: &mut Runners) {
        while !self.buffer.is_empty() {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => self.start_one(shared, runners, permit),
                Err(_) => break,
            }
        }
    }

    fn start_one(
        &mut self,
        shared: &Arc<Shared>,
        runners: &mut Runners,
        permit: OwnedSemaphorePermit,
    ) {
        if let Some((message, acked)) = self.buffer.pop_front() {
            start(
                Box::pin(policy::handle_message(
                    shared.clone(),
                    message,
                    acked,
                    permit,
                )),
                runners,
            );
        }
    }

    /// Asks for more once half the capacity is free, or whenever nothing is on order.
    async fn top_up(&mut self) -> Result<(), PullError> {
        let running = self.concurrency - self.slots.available_permits();
        let held = running + self.buffer.len() + self.puller.outstanding();
        let room = self.capacity.saturating_sub(held);
        let idle = self.puller.outstanding() == 0 && self.buffer.is_empty();
        if room >= self.top_up_at || (idle && room > 0) {
            self.puller.request(room).await?;
        }
        Ok(())
    }

    /// In-progress acks for deliveries that waited a quarter of the ack deadline for a slot.
    async fn keep_buffered_alive(&mut self) {
        let now = Instant::now();
        for (message, since) in self.buffer.iter_mut() {
            if now.duration_since(*since) >= self.ack_wait / 4 {
                if let Err(e) = send_deadline::within(message.ack_with(AckKind::Progress)).await {
                    tracing::debug!(error = %e, "in-progress ack of a waiting delivery failed");
                }
                *since = now;
            }
        }
    }

    /// Stops the pulls and naks every delivery not started, so that other members get
    /// them now rather than after the ack deadline, noting each as returned first (a
    /// delivery no handler ran is no attempt; `handoff.rs`).
    async fn hand_back(&mut self, shared: &Shared) {
        let arrived = self.puller.close().await;
        let waiting = self.buffer.drain(..).map(|(m, _)| m);
        let returned: Vec<Message> = waiting.chain(arrived).collect();
        futures::future::join_all(returned.iter().map(|message| async move {
            if let (Some(store), Ok(info)) = (&shared.handoffs, message.info()) {
                handoff::note_return(store, &shared.name, info.stream_sequence).await;
            }
            if let Err(e) = send_deadline::within(message.ack_with(AckKind::Nak(None))).await {
                tracing::debug!(error = %e, "nak of a prefetched delivery failed");
            }
        }))
        .await;
    }
}

/// Runs `handling` here as far as it goes without waiting, and on one of the member's
/// [`Runners`] from there. A handler that finishes at once (an in-memory update, a send
/// on a channel) then costs no hand-over: spawning a task per delivery, scheduling it and
/// waking another worker for it cost such handlers more than the rest of the delivery
/// (BENCHMARKS.md, "Profile, eighth round"). A handler that waits (I/O, timers) runs
/// concurrently with the others from its first wait on. The first poll's waker is a
/// no-op one, and no wake-up is lost to it: a runner polls the delivery as soon as it
/// takes it, and that poll sees whatever became ready.
fn start(mut handling: Pin<Box<impl Future<Output = ()> + Send + 'static>>, runners: &mut Runners) {
    // `handle` catches a handler's panics itself; one anywhere else would otherwise end
    // this member's fetch loop (a runner guards its deliveries the same way). The
    // delivery is left unsettled either way: JetStream redelivers it after the ack wait.
    match std::panic::catch_unwind(AssertUnwindSafe(|| (&mut handling).now_or_never())) {
        Ok(Some(())) => {}
        Ok(None) => {
            let job: Job = handling;
            runners.run(job);
        }
        Err(_) => tracing::error!("settling a delivery panicked; it will be redelivered"),
    }
}

/// Waits before the next attempt to open; false if the member was stopped meanwhile.
async fn back_off(cancel: &CancellationToken, failures: u32) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(backoff_delay(failures)) => true,
    }
}

async fn open(shared: &Shared) -> Result<Puller, async_nats::Error> {
    // Re-creating on every (re)open also brings back a consumer deleted while we were away.
    let consumer = consumer::ensure(shared).await?;
    let info = consumer.cached_info();
    let puller = Puller::open(
        shared.bus.jetstream(),
        JS_API_PREFIX,
        &info.stream_name,
        &info.name,
        PULL_EXPIRES,
        PULL_HEARTBEAT,
    )
    .await?;
    Ok(puller)
}
