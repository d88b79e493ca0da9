//! Broadcast subscriptions: every instance gets every matching event, in stream order,
//! through its own ordered (ephemeral, self-healing) consumer. Nothing is acknowledged:
//! a handler error is logged and the subscription moves on.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use bus_core::retry::backoff_delay;
use bus_core::{EventPattern, EventType, binary_mode, telemetry};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::delivery_info::DeliveryInfo;
use crate::error::SubscribeError;
use crate::group::{DEFAULT_HANDLER_TIMEOUT, check_handler_timeout};
use crate::handler::{ErasedHandler, HandlerError, HandlerMap, Outcome, erase, erase_raw};
use crate::typed::{EventMeta, EventPayload, Received};

/// Where a broadcast subscription starts.
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
pub struct BroadcastBuilder {
    bus: Bus,
    handlers: Vec<(&'static str, ErasedHandler)>,
    raw: Vec<(EventPattern, ErasedHandler)>,
    start_at: StartAt,
    handler_timeout: Duration,
}

impl std::fmt::Debug for BroadcastBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastBuilder")
            .field("start_at", &self.start_at)
            .field("handler_timeout", &self.handler_timeout)
            .finish_non_exhaustive()
    }
}

impl BroadcastBuilder {
    pub(crate) fn new(bus: Bus) -> Self {
        Self {
            bus,
            handlers: Vec::new(),
            raw: Vec::new(),
            start_at: StartAt::New,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
        }
    }

    /// Handles events of type `T`.
    pub fn on<T, F, Fut>(mut self, handler: F) -> Self
    where
        T: EventPayload,
        F: Fn(Received<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.handlers.push((T::EVENT_TYPE, erase(handler)));
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
        self.raw.push((pattern, erase_raw(handler)));
        self
    }

    /// How long one handling may run (default [`DEFAULT_HANDLER_TIMEOUT`], at most
    /// [`MAX_HANDLER_TIMEOUT`](crate::MAX_HANDLER_TIMEOUT)). Events are handled one at a
    /// time, in order: a handler still running then is dropped (cancelled at its current
    /// `.await`), the event is skipped with a warning, as after a handler error, and the
    /// next one is handled. Without it, a hung handler would stop the subscription for
    /// good.
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = d;
        self
    }

    /// Where to start (default [`StartAt::New`]).
    pub fn start_at(mut self, start_at: StartAt) -> Self {
        self.start_at = start_at;
        self
    }

    /// Creates the subscription's consumer and starts handling events. Fails when no
    /// handler is registered, two handle one type, or JetStream refuses the consumer.
    pub async fn start(self) -> Result<Broadcast, SubscribeError> {
        if self.handlers.is_empty() && self.raw.is_empty() {
            return Err(SubscribeError::NoHandlers);
        }
        check_handler_timeout(self.handler_timeout)?;
        let mut handlers = HandlerMap::new();
        // Several patterns may overlap, which JetStream refuses as filters: then take
        // every event and let the dispatch below pick.
        let mut filters: Vec<String> = match self.raw.len() {
            0 => Vec::new(),
            1 => self
                .raw
                .iter()
                .map(|(p, _)| self.bus.subjects().pattern(p))
                .collect(),
            _ => vec![self.bus.subjects().all_events()],
        };
        for (name, handler) in self.handlers {
            let t = EventType::new(name)?;
            // JetStream refuses overlapping filters: a pattern already covering it is enough.
            if self.raw.len() < 2 && !self.raw.iter().any(|(p, _)| p.matches(&t)) {
                filters.push(self.bus.subjects().event(&t));
            }
            if handlers.insert(name.to_owned(), handler).is_some() {
                return Err(SubscribeError::DuplicateHandler(name.to_owned()));
            }
        }
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
        filters.sort();
        filters.dedup();
        let sub = Subscription {
            bus: self.bus,
            handlers,
            raw: self.raw,
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
    handlers: HandlerMap,
    raw: Vec<(EventPattern, ErasedHandler)>,
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
    async fn deliver(&self, mut message: async_nats::jetstream::Message) -> Option<u64> {
        let info = DeliveryInfo::of(&message).ok()?;
        let (seq, published) = (info.stream_seq, info.published);
        // Moved into the handler's `EventMeta`, not copied.
        let headers = message.message.headers.take();
        let event = match binary_mode::decode(headers.as_ref(), message.payload.clone()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(seq, error = %e, "broadcast skipped a message that is not a bus event");
                return Some(seq);
            }
        };
        let handler = self.handlers.get(event.event_type.as_str()).or_else(|| {
            self.raw
                .iter()
                .find(|(p, _)| p.matches(&event.event_type))
                .map(|(_, h)| h)
        });
        let Some(handler) = handler else {
            return Some(seq);
        };
        let meta = EventMeta {
            event,
            attempt: 1,
            stream_seq: seq,
            published,
            headers: std::sync::Arc::new(headers.unwrap_or_default()),
            group: None,
        };
        let (mut span, hop) = telemetry::HopSpan::for_hop(
            || telemetry::context_from_event(&meta.event),
            |producer| {
                telemetry::HopSpan::process(
                    message.subject.as_str(),
                    None,
                    &meta.event.id,
                    1,
                    producer,
                )
            },
        );
        let work = handler(meta);
        let run = async {
            match hop {
                Some(cx) => telemetry::within_hop(cx, work).await,
                None => work.await,
            }
        };
        let Ok(outcome) = tokio::time::timeout(self.handler_timeout, run).await else {
            span.record_error("timeout");
            drop(span);
            tracing::warn!(
                seq,
                timeout = ?self.handler_timeout,
                "broadcast handler did not finish in time; the event is skipped"
            );
            return Some(seq);
        };
        match &outcome {
            Outcome::Handled => {}
            Outcome::Failed(_) => span.record_error("handler_error"),
            Outcome::Undecodable(_) => span.record_error("undecodable"),
        }
        drop(span);
        match outcome {
            Outcome::Handled => {}
            Outcome::Failed(e) => tracing::warn!(seq, error = %e, "broadcast handler failed"),
            Outcome::Undecodable(reason) => {
                tracing::warn!(seq, %reason, "broadcast skipped an event")
            }
        }
        Some(seq)
    }
}

/// A running broadcast subscription. Dropping it stops it.
#[derive(Debug)]
pub struct Broadcast {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// How long [`Broadcast::shutdown`] waits for the running handler.
pub const BROADCAST_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Broadcast {
    /// Stops the subscription and waits for a running handler to return.
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
