//! [`Bus`]: one connection to the NATS cluster, shared by publishers, groups and
//! broadcast subscriptions. Cheap to clone.

use std::sync::Arc;

use async_nats::jetstream;
use bus_core::topology::DEFAULT_ENSURE_DEADLINE;
use bus_core::{BusConfig, Event, EventBuilder, EventType, Subjects, Topology, telemetry};

use crate::broadcast::BroadcastBuilder;
use crate::connect;
use crate::error::{ConnectError, PublishError, PublishErrorKind};
use crate::group::GroupBuilder;
use crate::publish::{DEFAULT_PUBLISH_WINDOW, PublishReceipt, Publisher};
use crate::send_deadline;
use crate::typed::EventPayload;

/// A connection to the bus. Clone it freely: clones share the connection.
///
/// ```no_run
/// # use bus_sdk::{Bus, BusConfig, EventPayload, HandlerError, Received};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated { order_id: u64 }
/// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct InvoiceIssued { order_id: u64 }
/// # impl EventPayload for InvoiceIssued { const EVENT_TYPE: &'static str = "shop.invoice.issued"; }
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::connect(BusConfig::with_servers(["nats://127.0.0.1:4222"])).await?;
/// // A handler that publishes, on the same connection.
/// let publisher = bus.clone();
/// let member = bus
///     .group("billing")
///     .on(move |ev: Received<OrderCreated>| {
///         let bus = publisher.clone();
///         async move {
///             bus.publish(&InvoiceIssued { order_id: ev.data.order_id }).await?;
///             Ok::<(), HandlerError>(())
///         }
///     })
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    config: BusConfig,
    source: String,
    window: usize,
    publisher: Publisher,
}

/// Options for [`Bus`] beyond the shared [`BusConfig`], from [`Bus::builder`]; each
/// option has an example.
#[derive(Debug)]
pub struct BusBuilder {
    config: BusConfig,
    source: Option<String>,
    window: usize,
    ensure_topology: bool,
    tracer: telemetry::HopTracer,
    meters: telemetry::BusMeters,
}

impl BusBuilder {
    /// The CloudEvents `source` of events this client publishes (default: `/` and the
    /// executable's name).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), bus_sdk::ConnectError> {
    /// let bus = bus_sdk::Bus::builder(bus_core::BusConfig::default()).source("/shop").connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Events of one `publish_batch` awaiting their PubAck at once
    /// (default [`DEFAULT_PUBLISH_WINDOW`]).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), bus_sdk::ConnectError> {
    /// let bus = bus_sdk::Bus::builder(bus_core::BusConfig::default()).publish_window(64).connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn publish_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Whether `connect` creates or updates the streams (default true). Turn it off when
    /// an operator manages the streams and this client lacks the permission.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), bus_sdk::ConnectError> {
    /// let bus = bus_sdk::Bus::builder(bus_core::BusConfig::default()).ensure_topology(false).connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn ensure_topology(mut self, ensure: bool) -> Self {
        self.ensure_topology = ensure;
        self
    }

    /// Records the bus's spans (publish, each handling) through `provider` instead of the
    /// process's: by default the pipeline `bus_core::telemetry::init` installed (the `otlp`
    /// feature), else the
    /// application's global tracer provider (looked at again every second, so that a
    /// provider installed after connecting is used too). The bus installs no global itself.
    /// A no-op provider is recognised here, once: the bus then builds no span at all, and
    /// still carries the application's trace context and baggage from publish to handler.
    ///
    /// ```no_run
    /// # async fn f(provider: opentelemetry_sdk::trace::SdkTracerProvider) -> Result<(), bus_sdk::ConnectError> {
    /// let bus = bus_sdk::Bus::builder(bus_core::BusConfig::default())
    ///     .tracer_provider(&provider)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tracer_provider<P, T, S>(mut self, provider: &P) -> Self
    where
        P: opentelemetry::trace::TracerProvider<Tracer = T>,
        T: opentelemetry::trace::Tracer<Span = S> + Send + Sync + 'static,
        S: opentelemetry::trace::Span + Send + Sync + 'static,
    {
        self.tracer = telemetry::HopTracer::from_provider(provider);
        self
    }

    /// Records the bus's OpenTelemetry messaging metrics (publish and handling durations,
    /// messages sent and consumed; see `bus_core::telemetry::MessagingMetrics`) through
    /// `provider` instead of the application's global meter provider (the default, looked
    /// at again every second).
    ///
    /// ```no_run
    /// # async fn f(provider: opentelemetry_sdk::metrics::SdkMeterProvider) -> Result<(), bus_sdk::ConnectError> {
    /// let bus = bus_sdk::Bus::builder(bus_core::BusConfig::default())
    ///     .meter_provider(&provider)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn meter_provider(
        mut self,
        provider: &(impl opentelemetry::metrics::MeterProvider + ?Sized),
    ) -> Self {
        self.meters = telemetry::BusMeters::from_provider(provider);
        self
    }

    /// Validates the configuration, connects, and puts the streams in place unless
    /// [`BusBuilder::ensure_topology`] is off. Every option's example ends with it.
    pub async fn connect(self) -> Result<Bus, ConnectError> {
        self.config.validate()?;
        let client = connect::connect(&self.config.nats).await?;
        let js = connect::jetstream(client.clone(), &self.config.nats);
        if self.ensure_topology {
            Topology::from_config(&self.config)
                .ensure(&js, DEFAULT_ENSURE_DEADLINE)
                .await?;
        }
        telemetry::watch_global_provider();
        let publisher = Publisher {
            js,
            subjects: self.config.subjects(),
            deadline: self.config.nats.publish_deadline,
            server_msg_trace: self.config.nats.server_msg_trace,
            tracer: self.tracer,
            meters: self.meters,
        };
        let source = self.source.unwrap_or_else(default_source);
        Ok(Bus {
            inner: Arc::new(Inner {
                client,
                config: self.config,
                source,
                window: self.window,
                publisher,
            }),
        })
    }
}

fn default_source() -> String {
    let name = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "bus-sdk".to_owned());
    format!("/{name}")
}

impl Bus {
    /// Connects with default options; see [`Bus::builder`].
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), bus_sdk::ConnectError> {
    /// use bus_sdk::{Bus, BusConfig};
    /// let servers = ["nats://nats-1:4222", "nats://nats-2:4222"];
    /// let bus = Bus::connect(BusConfig::with_servers(servers)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: BusConfig) -> Result<Self, ConnectError> {
        Self::builder(config).connect().await
    }

    /// Options beyond `config`; [`BusBuilder::connect`] connects.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), bus_sdk::ConnectError> {
    /// use bus_sdk::{Bus, BusConfig};
    /// let bus = Bus::builder(BusConfig::default())
    ///     .source("/billing")
    ///     .ensure_topology(false)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(config: BusConfig) -> BusBuilder {
        BusBuilder {
            config,
            source: None,
            window: DEFAULT_PUBLISH_WINDOW,
            ensure_topology: true,
            tracer: telemetry::HopTracer::default(),
            meters: telemetry::BusMeters::default(),
        }
    }

    /// Publishes a typed event; returns once JetStream has stored it.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated { order_id: u64 }
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::PublishError> {
    /// let receipt = bus.publish(&OrderCreated { order_id: 42 }).await?;
    /// println!("{} stored in {} as #{}", receipt.id, receipt.stream, receipt.seq);
    /// # Ok(()) }
    /// ```
    pub async fn publish<T: EventPayload>(
        &self,
        payload: &T,
    ) -> Result<PublishReceipt, PublishError> {
        let event = self.event(payload)?.build();
        self.publish_event(&event).await
    }

    /// An event for `payload`, to adjust (id, subject, ...) before [`Bus::publish_event`].
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated;
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::PublishError> {
    /// let event = bus.event(&OrderCreated)?.id("order-42-created").build();
    /// bus.publish_event(&event).await?; // publishing the same id again stores nothing new
    /// # Ok(()) }
    /// ```
    pub fn event<T: EventPayload>(&self, payload: &T) -> Result<EventBuilder, PublishError> {
        let event_type = EventType::new(T::EVENT_TYPE).map_err(PublishError::from_type)?;
        let mut builder = Event::builder(event_type, &self.inner.source)
            .data_json(payload)
            .map_err(|e| PublishError::new(PublishErrorKind::Serialize, "", e))?;
        if let Some(key) = payload.partition_key() {
            builder = builder.partition_key(key);
        }
        Ok(builder)
    }

    /// Publishes an event as it is; returns once JetStream has stored it. Build it with
    /// [`Bus::event`] (example there) or [`Event::builder`].
    pub async fn publish_event(&self, event: &Event) -> Result<PublishReceipt, PublishError> {
        self.inner.publisher.publish_event(event).await
    }

    /// Publishes many events with a bounded window of PubAcks in flight
    /// ([`BusBuilder::publish_window`]); one result per event, in order.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, EventPayload};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated { order_id: u64 }
    /// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
    /// # async fn f(bus: Bus) -> Result<(), bus_sdk::PublishError> {
    /// let events = (1..=100)
    ///     .map(|order_id| Ok(bus.event(&OrderCreated { order_id })?.build()))
    ///     .collect::<Result<Vec<_>, bus_sdk::PublishError>>()?;
    /// for (event, result) in events.iter().zip(bus.publish_batch(&events).await) {
    ///     if let Err(e) = result {
    ///         eprintln!("{} not stored: {e}", event.id);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn publish_batch(
        &self,
        events: &[Event],
    ) -> Vec<Result<PublishReceipt, PublishError>> {
        self.inner
            .publisher
            .publish_batch(events, self.inner.window)
            .await
    }

    /// A consumer group named `name`: members with the same name share the events. See
    /// [`GroupBuilder`] for an example; a name that is not a valid
    /// [`GroupName`](bus_core::GroupName) fails at [`GroupBuilder::start`].
    pub fn group(&self, name: impl Into<String>) -> GroupBuilder {
        GroupBuilder::new(self.clone(), name.into())
    }

    /// A broadcast subscription: every instance gets every matching event. See
    /// [`BroadcastBuilder`] for an example.
    pub fn broadcast(&self) -> BroadcastBuilder {
        BroadcastBuilder::new(self.clone())
    }

    /// The configuration this bus was connected with.
    ///
    /// ```no_run
    /// # fn f(bus: bus_sdk::Bus) {
    /// let streams = &bus.config().streams;
    /// println!("events in {}, dead letters in {}", streams.events_name, streams.dlq_name);
    /// # }
    /// ```
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// The subjects of the configured prefixes.
    ///
    /// ```no_run
    /// # fn f(bus: bus_sdk::Bus) -> Result<(), bus_sdk::EventTypeError> {
    /// let subject = bus.subjects().event(&bus_sdk::EventType::new("shop.order.created")?);
    /// assert_eq!(subject, format!("{}.shop.order.created", bus.config().subjects.prefix));
    /// # Ok(()) }
    /// ```
    pub fn subjects(&self) -> &Subjects {
        &self.inner.publisher.subjects
    }

    /// The NATS connection, for core NATS requests.
    ///
    /// ```no_run
    /// # async fn f(bus: bus_sdk::Bus) -> Result<(), bus_sdk::async_nats::Error> {
    /// let reply = bus.client().request("pricing.quote", "sku-1".into()).await?;
    /// # Ok(()) }
    /// ```
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The JetStream context on this connection.
    ///
    /// ```no_run
    /// # async fn f(bus: bus_sdk::Bus) -> Result<(), bus_sdk::async_nats::Error> {
    /// let name = &bus.config().streams.events_name;
    /// let mut events = bus.jetstream().get_stream(name).await?;
    /// println!("{} events stored", events.info().await?.state.messages);
    /// # Ok(()) }
    /// ```
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.publisher.js
    }

    pub(crate) fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    /// Flushes what is buffered and closes the connection for every clone. Shut groups
    /// and subscriptions down first so that their acks go out.
    ///
    /// ```no_run
    /// # async fn f(bus: bus_sdk::Bus, billing: bus_sdk::Group, prices: bus_sdk::Broadcast) {
    /// billing.shutdown().await;
    /// prices.shutdown().await;
    /// bus.close().await;
    /// # }
    /// ```
    pub async fn close(&self) {
        if let Err(e) = send_deadline::within(self.inner.client.drain()).await {
            tracing::warn!(error = %e, "draining the NATS connection failed");
        }
    }
}
