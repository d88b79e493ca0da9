//! Broadcast subscriptions: every instance gets every matching event, in stream order,
//! through its own ordered (ephemeral, self-healing) consumer. Nothing is acknowledged:
//! a handler error is logged and the subscription moves on.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use bus_core::retry::backoff_delay;
use bus_core::{EventPattern, GroupName, telemetry};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::error::SubscribeError;
use crate::handler::HandlerError;
use crate::subscription::{
    self, DEFAULT_HANDLER_TIMEOUT, Delivery, Handlers, Outcome, Policy, Registration,
    check_handler_timeout,
};
use crate::typed::{EventMeta, EventPayload, Received};

/// Where a broadcast subscription starts; see [`BroadcastBuilder::start_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartAt {
    /// Events published after the subscription starts (the default).
    New,
    /// Every event still in the stream.
    All,
    /// Events from this stream sequence on.
    Sequence(u64),
}

/// Configures a broadcast subscription; see [`Bus::broadcast`].
///
/// ```no_run
/// # use bus_sdk::{Bus, EventPayload, Received, HandlerError, StartAt};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct PriceChanged;
/// # impl EventPayload for PriceChanged { const EVENT_TYPE: &'static str = "shop.price.changed"; }
/// # async fn f(bus: Bus) -> Result<(), Box<dyn std::error::Error>> {
/// let sub = bus
///     .broadcast()
///     .on(|_ev: Received<PriceChanged>| async { Ok::<(), HandlerError>(()) })
///     .start_at(StartAt::New)
///     .start()
///     .await?;
/// sub.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BroadcastBuilder {
    bus: Bus,
    handlers: Registration,
    start_at: StartAt,
    handler_timeout: Duration,
}

impl BroadcastBuilder {
    pub(crate) fn new(bus: Bus) -> Self {
        Self {
            bus,
            handlers: Registration::default(),
            start_at: StartAt::New,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
        }
    }

    /// Handles events of type `T` (example on [`BroadcastBuilder`]). One subscription
    /// may handle several types, one handler each.
    pub fn on<T, F, Fut>(mut self, handler: F) -> Self
    where
        T: EventPayload,
        F: Fn(Received<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.handlers.on(handler);
        self
    }

    /// Handles every event whose type matches `pattern` (`shop.>`, `*.created`), as a
    /// raw [`EventMeta`]: for tools that do not know the payload types. Typed handlers
    /// registered with [`BroadcastBuilder::on`] take precedence.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventMeta, HandlerError};
    /// # async fn f(bus: Bus) -> Result<(), Box<dyn std::error::Error>> {
    /// let pattern = bus_sdk::bus_core::EventPattern::new(">")?;
    /// let tap = bus
    ///     .broadcast()
    ///     .on_any(pattern, |meta: EventMeta| async move {
    ///         println!("{} #{}", meta.event.event_type, meta.stream_seq);
    ///         Ok::<(), HandlerError>(())
    ///     })
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_any<F, Fut>(mut self, pattern: EventPattern, handler: F) -> Self
    where
        F: Fn(EventMeta) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.handlers.on_any(pattern, handler);
        self
    }

    /// How long one handling may run (default [`DEFAULT_HANDLER_TIMEOUT`], at most
    /// [`MAX_HANDLER_TIMEOUT`](crate::MAX_HANDLER_TIMEOUT)). Events are handled one at a
    /// time, in order: a handler still running then is dropped (cancelled at its current
    /// `.await`), the event is skipped with a warning, as after a handler error, and the
    /// next one is handled. Without it, a hung handler would stop the subscription for
    /// good.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct PriceChanged;
    /// # impl EventPayload for PriceChanged { const EVENT_TYPE: &'static str = "shop.price.changed"; }
    /// # async fn refresh(_: Received<PriceChanged>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// use std::time::Duration;
    /// let sub = bus
    ///     .broadcast()
    ///     .on(refresh)
    ///     .handler_timeout(Duration::from_secs(5))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = d;
        self
    }

    /// Where to start (default [`StartAt::New`]).
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError, StartAt};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct PriceChanged;
    /// # impl EventPayload for PriceChanged { const EVENT_TYPE: &'static str = "shop.price.changed"; }
    /// # async fn f(bus: Bus, last_seen: u64) -> Result<(), bus_sdk::SubscribeError> {
    /// // Resume a cache after the last event it applied (`meta.stream_seq`).
    /// let sub = bus
    ///     .broadcast()
    ///     .on(|_ev: Received<PriceChanged>| async { Ok::<(), HandlerError>(()) })
    ///     .start_at(StartAt::Sequence(last_seen + 1))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn start_at(mut self, start_at: StartAt) -> Self {
        self.start_at = start_at;
        self
    }

    /// Creates the subscription's consumer and starts handling events. Fails when no
    /// handler is registered, two handle one type, or JetStream refuses the consumer
    /// (example on [`BroadcastBuilder`]).
    pub async fn start(self) -> Result<Broadcast, SubscribeError> {
        check_handler_timeout(self.handler_timeout)?;
        let handlers = self.handlers.build()?;
        let filters = handlers.filters(self.bus.subjects());
        let deliver_policy = match self.start_at {
            // Pinned to a sequence now, so a reopen before the first event loses nothing.
            StartAt::New => {
                let mut stream = self
                    .bus
                    .jetstream()
                    .get_stream(&self.bus.config().streams.events_name)
                    .await
                    .map_err(|e| SubscribeError::Consumer(e.to_string()))?;
                let last = stream
                    .info()
                    .await
                    .map_err(|e| SubscribeError::Consumer(e.to_string()))?
                    .state
                    .last_sequence;
                DeliverPolicy::ByStartSequence {
                    start_sequence: last + 1,
                }
            }
            StartAt::All => DeliverPolicy::All,
            StartAt::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        };
        let sub = Subscription {
            bus: self.bus,
            handlers,
            filters,
            handler_timeout: self.handler_timeout,
        };
        // Open once here so that the caller learns of a refusal, and so that events
        // published after `start` returns are seen.
        let messages = sub
            .open(deliver_policy)
            .await
            .map_err(|e| SubscribeError::Consumer(e.to_string()))?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(sub.run(messages, deliver_policy, cancel.clone()));
        tracker.close();
        Ok(Broadcast { cancel, tracker })
    }
}

struct Subscription {
    bus: Bus,
    handlers: Handlers,
    filters: Vec<String>,
    handler_timeout: Duration,
}

type Ordered = async_nats::jetstream::consumer::pull::Ordered;

impl Subscription {
    async fn open(&self, deliver_policy: DeliverPolicy) -> Result<Ordered, async_nats::Error> {
        let stream = self
            .bus
            .jetstream()
            .get_stream(&self.bus.config().streams.events_name)
            .await?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subjects: self.filters.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await?;
        Ok(consumer.messages().await?)
    }

    async fn run(self, first: Ordered, initial: DeliverPolicy, cancel: CancellationToken) {
        let mut messages = Some(first);
        let mut next_seq: Option<u64> = None;
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let mut stream = match messages.take() {
                Some(m) => m,
                None => {
                    let policy = match next_seq {
                        Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
                        None => initial,
                    };
                    match self.open(policy).await {
                        Ok(m) => m,
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(error = %e, "broadcast subscription cannot reopen; retrying");
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                _ = tokio::time::sleep(backoff_delay(failures)) => continue,
                            }
                        }
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    m = stream.next() => m,
                };
                match next {
                    Some(Ok(message)) => {
                        failures = 0;
                        if let Some(seq) = self.deliver(message).await {
                            next_seq = Some(seq + 1);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "broadcast subscription hiccup");
                    }
                    None => break,
                }
            }
        }
    }

    /// Hands one message to its handler; returns its stream sequence.
    async fn deliver(&self, message: async_nats::jetstream::Message) -> Option<u64> {
        let delivery = Delivery::read(message, Instant::now()).ok()?;
        let seq = delivery.stream_seq;
        subscription::handle_delivery(self, delivery).await;
        Some(seq)
    }
}

/// A broadcast subscription acknowledges nothing: whatever the outcome, it moves on.
impl Policy for Subscription {
    type Settled = ();

    fn group(&self) -> Option<&GroupName> {
        None
    }

    fn tracer(&self) -> &telemetry::HopTracer {
        &self.bus.publisher().tracer
    }

    fn meters(&self) -> &telemetry::BusMeters {
        &self.bus.publisher().meters
    }

    fn handlers(&self) -> &Handlers {
        &self.handlers
    }

    fn handler_timeout(&self) -> Duration {
        self.handler_timeout
    }

    fn progress_every(&self) -> Option<Duration> {
        None
    }

    async fn before_dispatch(&self, _delivery: &mut Delivery) -> Option<Outcome> {
        None
    }

    async fn settle(&self, delivery: Delivery, outcome: Outcome, _span: &mut telemetry::HopSpan) {
        let seq = delivery.stream_seq;
        match outcome {
            Outcome::Handled | Outcome::NoHandler(_) => {}
            Outcome::TimedOut(timeout) => tracing::warn!(
                seq,
                ?timeout,
                "broadcast handler did not finish in time; the event is skipped"
            ),
            Outcome::Undecodable(reason) => {
                tracing::warn!(seq, %reason, "broadcast skipped an event")
            }
            failed => tracing::warn!(seq, error = %failed, "broadcast handler failed"),
        }
    }
}

/// A running broadcast subscription, from [`BroadcastBuilder::start`] (example on
/// [`BroadcastBuilder`]). Dropping it stops it.
#[derive(Debug)]
pub struct Broadcast {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// How long [`Broadcast::shutdown`] waits for the running handler.
pub const BROADCAST_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Broadcast {
    /// Stops the subscription and waits (up to [`BROADCAST_SHUTDOWN_GRACE`]) for a running
    /// handler to return, as at the end of [`BroadcastBuilder`]'s example.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(BROADCAST_SHUTDOWN_GRACE, self.tracker.wait()).await;
    }
}

impl Drop for Broadcast {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
