//! Consumer groups: a durable JetStream pull consumer per group name, shared by every
//! member that starts a group with that name, in this process or any other. Each event
//! goes to one member at a time; unacknowledged events go to another member after the
//! ack deadline; failures are retried with backoff and end as dead letters.

pub(crate) mod consumer;
mod filter_lock;
mod handoff;
pub(crate) mod member;
mod policy;
pub(crate) mod puller;
mod runners;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{GroupName, GroupNameError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::error::SubscribeError;
use crate::handler::HandlerError;
use crate::presence;
use crate::subscription::Handlers;
use crate::subscription::{DEFAULT_HANDLER_TIMEOUT, Registration, check_handler_timeout};
use crate::typed::{EventPayload, Received};

/// Handlers running at once in one member ([`GroupBuilder::concurrency`]).
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Deliveries of one event before it becomes a dead letter ([`GroupBuilder::max_deliver`]).
pub const DEFAULT_MAX_DELIVER: u32 = 5;
/// Time a member has to settle a delivery before it goes to another member. Running
/// handlers extend it automatically ([`GroupBuilder::ack_wait`]).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries awaiting an ack across all members of a group; JetStream stops delivering
/// when it is reached, so the group's in-flight window is bounded
/// ([`GroupBuilder::max_ack_pending`]).
pub const DEFAULT_MAX_ACK_PENDING: usize = 1024;
/// Delays before redelivery after the 1st, 2nd, ... failure; the last repeats
/// ([`GroupBuilder::backoff`]).
pub const DEFAULT_BACKOFF: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
];
/// How long an event of a type no member of the group has a handler for is handed from
/// member to member before it is dead-lettered (see [`GroupBuilder::no_handler_grace`]).
pub const DEFAULT_NO_HANDLER_GRACE: Duration = Duration::from_secs(300);
/// Longest [`no_handler_grace`](GroupBuilder::no_handler_grace) a member accepts: a day.
pub const MAX_NO_HANDLER_GRACE: Duration = Duration::from_secs(24 * 3600);
pub use handoff::NO_HANDLER_DELAY;
/// How long [`GroupBuilder::start`] keeps trying to put the consumer in place through
/// elections.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long [`Group::shutdown`] waits for running handlers
/// ([`GroupBuilder::shutdown_grace`]).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Largest [`concurrency`](GroupBuilder::concurrency) a member accepts (each handler slot
/// is a permit and a queue place; far more than one process can run usefully).
pub const MAX_CONCURRENCY: usize = 65_536;
/// Largest [`max_ack_pending`](GroupBuilder::max_ack_pending) a group accepts (JetStream
/// takes it as a signed number; a larger `usize` would wrap to "unlimited").
pub const MAX_MAX_ACK_PENDING: usize = 10_000_000;

/// Settings of a group member; see [`GroupBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct GroupOptions {
    pub concurrency: usize,
    pub max_deliver: u32,
    pub ack_wait: Duration,
    pub max_ack_pending: usize,
    pub backoff: Vec<Duration>,
    pub shutdown_grace: Duration,
    pub handler_timeout: Duration,
    pub deliver_new_only: bool,
    /// The stream sequence a new consumer starts at (wins over `deliver_new_only`).
    pub deliver_from: Option<u64>,
    pub no_handler_grace: Duration,
}

impl GroupOptions {
    fn with_defaults() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            max_deliver: DEFAULT_MAX_DELIVER,
            ack_wait: DEFAULT_ACK_WAIT,
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
            backoff: DEFAULT_BACKOFF.to_vec(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            deliver_new_only: false,
            deliver_from: None,
            no_handler_grace: DEFAULT_NO_HANDLER_GRACE,
        }
    }

    /// Redelivery delay after the `attempt`-th failure.
    pub(crate) fn backoff_after(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) as usize - 1).min(self.backoff.len().saturating_sub(1));
        self.backoff.get(i).copied().unwrap_or_default()
    }
}

/// Configures and starts one member of a consumer group.
///
/// ```no_run
/// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
/// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
/// # async fn f(bus: Bus) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let member = bus
///     .group("billing")
///     .on(|_ev: Received<OrderCreated>| async { Ok::<(), HandlerError>(()) })
///     .concurrency(32)
///     .max_deliver(3)
///     .backoff([Duration::from_secs(1), Duration::from_secs(10)])
///     .ack_wait(Duration::from_secs(60))
///     .start()
///     .await?;
/// member.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GroupBuilder {
    bus: Bus,
    name: Result<GroupName, GroupNameError>,
    options: GroupOptions,
    handlers: Registration,
    /// Ordered by key over this many partitions ([`GroupBuilder::ordered_by_key`]).
    ordered: Option<u32>,
}

impl GroupBuilder {
    pub(crate) fn new(bus: Bus, name: String) -> Self {
        Self {
            bus,
            name: GroupName::new(name),
            options: GroupOptions::with_defaults(),
            handlers: Registration::default(),
            ordered: None,
        }
    }

    /// Handles events of type `T`. Members of one group may register different types
    /// (during a rolling deploy, say): the group's consumer takes the union of every
    /// member's types, and an event reaching a member without its handler is handed back
    /// for one that has it (see "Rolling deploys" in the README).
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderRefunded;
    /// # impl EventPayload for OrderRefunded { const EVENT_TYPE: &'static str = "shop.order.refunded"; }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// async fn refund(_: Received<OrderRefunded>) -> Result<(), HandlerError> { Ok(()) }
    /// let member = bus.group("billing").on(bill).on(refund).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn on<T, F, Fut>(mut self, handler: F) -> Self
    where
        T: EventPayload,
        F: Fn(Received<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.handlers.on(handler);
        self
    }

    /// Adds a handler for every event whose type matches `pattern`, given as the raw
    /// [`EventMeta`](crate::EventMeta) (for handlers that do not decode the data: a
    /// forwarder, a webhook delivery). The group's filter takes the pattern's subjects;
    /// typed handlers registered with [`GroupBuilder::on`] take precedence.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventMeta, HandlerError};
    /// # async fn f(bus: Bus) -> Result<(), Box<dyn std::error::Error>> {
    /// let pattern = bus_sdk::bus_core::EventPattern::new("shop.>")?;
    /// let forwarder = bus
    ///     .group("forwarder")
    ///     .on_any(pattern, |meta: EventMeta| async move {
    ///         println!("{} #{}", meta.event.event_type, meta.stream_seq);
    ///         Ok::<(), HandlerError>(())
    ///     })
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_any<F, Fut>(mut self, pattern: bus_core::EventPattern, handler: F) -> Self
    where
        F: Fn(crate::EventMeta) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.handlers.on_any(pattern, handler);
        self
    }

    /// Handlers running at once in this member (default [`DEFAULT_CONCURRENCY`]). The
    /// member also fetches up to `n` deliveries ahead, so that a freed slot starts the next
    /// at once; those wait for a slot with in-progress acks, so their ack deadline does not
    /// pass, and are handed back (nak) if the member shuts down first. At most
    /// [`MAX_CONCURRENCY`].
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// let member = bus.group("billing").on(bill).concurrency(64).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn concurrency(mut self, n: usize) -> Self {
        self.options.concurrency = n;
        self
    }

    /// Deliveries before an event becomes a dead letter (default [`DEFAULT_MAX_DELIVER`]).
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// // The third failed delivery makes the event a dead letter.
    /// let member = bus.group("billing").on(bill).max_deliver(3).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.options.max_deliver = n;
        self
    }

    /// Ack deadline (default [`DEFAULT_ACK_WAIT`]): a member that neither settles a
    /// delivery nor reports progress for this long (it crashed, or lost its connection)
    /// loses it to another member. At least a second.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// use std::time::Duration;
    /// let member = bus
    ///     .group("billing")
    ///     .on(bill)
    ///     .ack_wait(Duration::from_secs(10))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.options.ack_wait = d;
        self
    }

    /// Bound on unacknowledged deliveries across the group (default
    /// [`DEFAULT_MAX_ACK_PENDING`]; at least `concurrency`, at most [`MAX_MAX_ACK_PENDING`]).
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// // Room for four members running 64 handlers each.
    /// let member = bus
    ///     .group("billing")
    ///     .on(bill)
    ///     .concurrency(64)
    ///     .max_ack_pending(4 * 64)
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn max_ack_pending(mut self, n: usize) -> Self {
        self.options.max_ack_pending = n;
        self
    }

    /// Redelivery delays after each failure (default [`DEFAULT_BACKOFF`]); the last one
    /// repeats. At least one.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// use std::time::Duration;
    /// let delays = [200, 2_000, 20_000].map(Duration::from_millis);
    /// let member = bus.group("billing").on(bill).backoff(delays).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn backoff(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.options.backoff = delays.into_iter().collect();
        self
    }

    /// How long [`Group::shutdown`] waits for running handlers (default [`DEFAULT_SHUTDOWN_GRACE`]).
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// use std::time::Duration;
    /// // Inside a pod's termination grace period, with time left to close the bus.
    /// let member = bus
    ///     .group("billing")
    ///     .on(bill)
    ///     .shutdown_grace(Duration::from_secs(20))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.options.shutdown_grace = d;
        self
    }

    /// How long one handling may run (default
    /// [`DEFAULT_HANDLER_TIMEOUT`](crate::DEFAULT_HANDLER_TIMEOUT)). A handler
    /// still running then is dropped (cancelled at its current `.await`) and the delivery
    /// counts as failed: redelivered after the backoff, or dead-lettered after
    /// `max_deliver` attempts. Without it, a hung handler would hold its slot for ever,
    /// its in-progress acks keeping the event from every other member. At most
    /// [`MAX_HANDLER_TIMEOUT`](crate::MAX_HANDLER_TIMEOUT).
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// use std::time::Duration;
    /// let member = bus
    ///     .group("billing")
    ///     .on(bill)
    ///     .handler_timeout(Duration::from_secs(30))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.options.handler_timeout = d;
        self
    }

    /// How long an event whose type no member has a handler for is handed back to the
    /// group (every [`NO_HANDLER_DELAY`]) before it is dead-lettered as "no handler"
    /// (default [`DEFAULT_NO_HANDLER_GRACE`]; 1 s to a day). Members of one group may
    /// handle different types during a rolling deploy: an event reaching a member without
    /// its handler is handed back for one that has it, and hand-backs do not count as
    /// attempts. Handed-back events count against `max_ack_pending` while they wait.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// use std::time::Duration;
    /// // A rolling deploy that may take an hour to bring every member up to date.
    /// let member = bus
    ///     .group("billing")
    ///     .on(bill)
    ///     .no_handler_grace(Duration::from_secs(3600))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn no_handler_grace(mut self, d: Duration) -> Self {
        self.options.no_handler_grace = d;
        self
    }

    /// When the group is created for the first time, start with events published from
    /// now on instead of every event still in the stream. A group that exists already
    /// keeps its place.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn bill(_: Received<OrderCreated>) -> Result<(), HandlerError> { Ok(()) }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// let member = bus.group("billing").on(bill).deliver_new_only().start().await?;
    /// # Ok(()) }
    /// ```
    pub fn deliver_new_only(mut self) -> Self {
        self.options.deliver_new_only = true;
        self
    }

    /// A group started for the first time takes the events stored from stream sequence
    /// `seq` on (an existing group keeps its position). What a caller uses to take every
    /// event stored after a moment it recorded (the stream's last sequence + 1), however
    /// late the group's consumer is then made.
    pub fn deliver_from(mut self, seq: u64) -> Self {
        self.options.deliver_from = Some(seq.max(1));
        self
    }

    /// Makes the group ordered by key: events with the same `partitionkey` (set by
    /// [`EventPayload::partition_key`], [`bus_core::EventBuilder::partition_key`], the
    /// `ce-partitionkey` header or the HTTP API) are handled one at a time, in the order
    /// they were stored, while different keys run in parallel across the members; the
    /// order holds while members join, leave and die. Keys map to `partitions`
    /// partitions ([`bus_core::partition`]: FNV-1a 32 of the key mod `partitions`),
    /// each served by one member at a time; the count is fixed when the group is first
    /// started (a member asking for another is refused). Events without a key are
    /// handled in parallel, in no particular order. A failed event is retried in place,
    /// holding up only its own key, and dead-lettered after `max_deliver` attempts; its
    /// key then goes on with its next event. `max_ack_pending` is shared out over the
    /// partitions (each holds at most `max_ack_pending / partitions`, at least 1).
    /// See "Ordered groups" in the README.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload, Received, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderUpdated { order_id: String }
    /// # impl EventPayload for OrderUpdated {
    /// #     const EVENT_TYPE: &'static str = "shop.order.updated";
    /// #     fn partition_key(&self) -> Option<String> { Some(self.order_id.clone()) }
    /// # }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::SubscribeError> {
    /// let member = bus
    ///     .group("order-projection")
    ///     .on(|ev: Received<OrderUpdated>| async move { Ok::<(), HandlerError>(()) })
    ///     .ordered_by_key(16)
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn ordered_by_key(mut self, partitions: u32) -> Self {
        self.ordered = Some(partitions);
        self
    }

    /// Creates the group's consumer, or widens its filter to take this member's event
    /// types too, and starts this member (example on [`GroupBuilder`]). Fails, naming
    /// the cause in a [`SubscribeError`], on an invalid name or option, without a
    /// handler, or when JetStream refuses the consumer.
    pub async fn start(self) -> Result<Group, SubscribeError> {
        let name = self.name?;
        validate(&self.options)?;
        let handlers = self.handlers.build()?;
        if let Some(partitions) = self.ordered {
            return crate::ordered::start(self.bus, name, self.options, handlers, partitions).await;
        }
        refuse_ordered(&self.bus, &name).await?;
        let filters = consumer::filters(&self.bus, &name, &handlers);
        let handoffs = handoff::bucket(&self.bus).await;
        let shared = Arc::new(member::Shared {
            bus: self.bus,
            name,
            options: self.options,
            handlers,
            filters,
            handoffs,
        });
        // Now, so that a refused configuration is reported to the caller.
        consumer::ensure_patiently(&shared, START_DEADLINE)
            .await
            .map_err(|e| SubscribeError::Consumer(e.to_string()))?;
        let presence = presence::announce(&shared.bus, &shared.name, shared.handlers.types())
            .await
            .map_err(SubscribeError::Presence)?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(member::run(shared.clone(), cancel.clone(), tracker.clone()));
        tracker.spawn(consumer::keep_widened(shared.clone(), cancel.clone()));
        Ok(Group {
            name: shared.name.clone(),
            grace: shared.options.shutdown_grace,
            cancel,
            tracker,
            presence: Some(presence),
        })
    }
}

/// Refuses to start an unordered member of a group that exists as an ordered one (its
/// consumer is the ordered group's sequencer).
async fn refuse_ordered(bus: &Bus, name: &GroupName) -> Result<(), SubscribeError> {
    let events = &bus.config().streams.events_name;
    let Ok(Ok(stream)) =
        tokio::time::timeout(START_DEADLINE, bus.jetstream().get_stream(events)).await
    else {
        // Not readable now: the consumer's creation below says why.
        return Ok(());
    };
    match tokio::time::timeout(START_DEADLINE, stream.consumer_info(name.as_str())).await {
        Ok(Ok(info)) if crate::ordered::is_ordered(&info.config.metadata) => {
            Err(SubscribeError::InvalidOption {
                option: "ordered_by_key",
                reason: format!(
                    "group {name} exists as an ordered group; its members must call ordered_by_key"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// A member's filters on the events stream: its event types and the group's redrives.
pub(crate) fn member_filters(bus: &Bus, name: &GroupName, handlers: &Handlers) -> Vec<String> {
    consumer::filters(bus, name, handlers)
}

/// Refuses options a member cannot run with, naming the option.
fn validate(o: &GroupOptions) -> Result<(), SubscribeError> {
    if !(1..=MAX_CONCURRENCY).contains(&o.concurrency) {
        return Err(invalid(
            "concurrency",
            &format!("must be 1 to {MAX_CONCURRENCY}"),
        ));
    }
    if o.max_deliver == 0 {
        return Err(invalid("max_deliver", "must be at least 1"));
    }
    if o.ack_wait < Duration::from_secs(1) {
        return Err(invalid("ack_wait", "must be at least 1s"));
    }
    check_handler_timeout(o.handler_timeout)?;
    if o.no_handler_grace < Duration::from_secs(1) || o.no_handler_grace > MAX_NO_HANDLER_GRACE {
        return Err(invalid("no_handler_grace", "must be 1s to a day"));
    }
    if o.backoff.is_empty() {
        return Err(invalid("backoff", "give at least one delay"));
    }
    if o.max_ack_pending < o.concurrency || o.max_ack_pending > MAX_MAX_ACK_PENDING {
        return Err(invalid(
            "max_ack_pending",
            &format!("must be at least concurrency and at most {MAX_MAX_ACK_PENDING}"),
        ));
    }
    Ok(())
}

fn invalid(option: &'static str, reason: &str) -> SubscribeError {
    SubscribeError::InvalidOption {
        option,
        reason: reason.to_owned(),
    }
}

/// A running group member, from [`GroupBuilder::start`] (example there). Dropping it
/// stops fetching at once; [`Group::shutdown`] also waits for running handlers to settle.
#[derive(Debug)]
pub struct Group {
    name: GroupName,
    grace: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
    presence: Option<presence::Presence>,
}

impl Group {
    /// A member that runs under `tracker` until `cancel`.
    pub(crate) fn running(
        name: GroupName,
        grace: Duration,
        cancel: CancellationToken,
        tracker: TaskTracker,
        presence: presence::Presence,
    ) -> Self {
        Self {
            name,
            grace,
            cancel,
            tracker,
            presence: Some(presence),
        }
    }

    /// The group's name.
    ///
    /// ```no_run
    /// # fn f(member: bus_sdk::Group) {
    /// println!("a member of {} is running", member.name());
    /// # }
    /// ```
    pub fn name(&self) -> &GroupName {
        &self.name
    }

    /// Stops fetching, hands undelivered prefetched events back, and waits up to the
    /// shutdown grace for running handlers to finish and settle. Returns whether all did;
    /// the events of those that did not are redelivered after the ack deadline.
    ///
    /// ```no_run
    /// # async fn f(member: bus_sdk::Group) {
    /// if !member.shutdown().await {
    ///     eprintln!("handlers still running; their events go to another member");
    /// }
    /// # }
    /// ```
    pub async fn shutdown(mut self) -> bool {
        // Gone from the group's members first: no one counts on it any more.
        if let Some(presence) = self.presence.take() {
            presence.stop().await;
        }
        self.cancel.cancel();
        self.tracker.close();
        let done = tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(group = %self.name, "handlers still running after the shutdown grace");
        }
        done
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::MAX_HANDLER_TIMEOUT;

    fn refused(change: impl FnOnce(&mut GroupOptions)) -> Option<&'static str> {
        let mut o = GroupOptions::with_defaults();
        change(&mut o);
        match validate(&o) {
            Err(SubscribeError::InvalidOption { option, .. }) => Some(option),
            _ => None,
        }
    }

    #[test]
    fn given_the_defaults_should_accept_them() {
        assert_eq!(refused(|_| {}), None);
    }

    #[test]
    fn given_a_value_out_of_range_should_refuse_it_naming_the_option() {
        assert_eq!(refused(|o| o.concurrency = 0), Some("concurrency"));
        assert_eq!(
            refused(|o| o.concurrency = MAX_CONCURRENCY + 1),
            Some("concurrency")
        );
        assert_eq!(
            refused(|o| o.handler_timeout = Duration::ZERO),
            Some("handler_timeout")
        );
        assert_eq!(
            refused(|o| o.handler_timeout = Duration::MAX),
            Some("handler_timeout")
        );
        assert_eq!(
            refused(|o| o.max_ack_pending = usize::MAX),
            Some("max_ack_pending")
        );
        assert_eq!(
            refused(|o| {
                o.concurrency = 64;
                o.max_ack_pending = 63;
            }),
            Some("max_ack_pending")
        );
        assert_eq!(refused(|o| o.max_deliver = 0), Some("max_deliver"));
        assert_eq!(refused(|o| o.backoff.clear()), Some("backoff"));
    }

    #[test]
    fn given_the_largest_accepted_values_should_accept_them() {
        assert_eq!(
            refused(|o| {
                o.concurrency = MAX_CONCURRENCY;
                o.max_ack_pending = MAX_MAX_ACK_PENDING;
                o.handler_timeout = MAX_HANDLER_TIMEOUT;
            }),
            None
        );
    }
}
