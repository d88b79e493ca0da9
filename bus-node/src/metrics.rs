//! Prometheus metrics. Names follow the Prometheus conventions (`_total` counters,
//! `_seconds` histograms); label values are bounded: routes are templates, not paths, and
//! methods are the standard ones or `_OTHER` (any method a client makes up would be a new
//! series otherwise, before any API key is checked).
//!
//! What the OpenTelemetry semantic conventions name has their name, as Prometheus spells
//! it (dots to underscores, the unit as a suffix): `http_server_request_duration_seconds`
//! (`http_request_method`, `http_route`, `http_response_status_code`),
//! `messaging_client_sent_messages_total` and `messaging_client_operation_duration_seconds`
//! (`messaging_system`, `messaging_operation_name`, `error_type`). The rest is the bus's
//! own, prefixed `bus_`. The destination (`messaging_destination_name`) is left out of the
//! node's publish metrics: the event types a client posts are its choice, and each would
//! be a series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `http.server.request.duration`'s attributes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub http_request_method: &'static str,
    pub http_route: String,
    pub http_response_status_code: u16,
}

/// The messaging metrics' attributes on a node's publishes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendLabels {
    pub messaging_system: &'static str,
    pub messaging_operation_name: &'static str,
    /// Empty (no label, to Prometheus) when the publish was stored.
    pub error_type: Option<&'static str>,
}

impl SendLabels {
    /// A publish through NATS; `error_type` when it failed.
    pub fn publish(error_type: Option<&'static str>) -> Self {
        Self {
            messaging_system: "nats",
            messaging_operation_name: "publish",
            error_type,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

/// One partition of an ordered group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub group: String,
    pub partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Push (SSE, WebSocket): what the hub and the sessions record.
#[derive(Clone, Debug, Default)]
pub struct PushMetrics {
    pub clients: Family<TransportLabels, Gauge>,
    pub deliveries: Family<TransportLabels, Counter>,
    pub drops: Family<ReasonLabels, Counter>,
    pub replays: Counter,
    /// Events handed to at least one client.
    pub events: Counter,
}

impl PushMetrics {
    pub fn drops(&self, reason: crate::push::hub::CloseReason) -> Counter {
        self.drops
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .clone()
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "push_clients",
            "Push clients connected to this node, by transport (sse, websocket)",
            self.clients.clone(),
        );
        registry.register(
            "push_deliveries",
            "Events sent to push clients, by transport",
            self.deliveries.clone(),
        );
        registry.register(
            "push_drops",
            "Push clients the node cut off, by reason (slow: its buffer was full; epoch: the stream was made again; unavailable: the stream could not be read)",
            self.drops.clone(),
        );
        registry.register(
            "push_replays",
            "Resumes that replayed history",
            self.replays.clone(),
        );
        registry.register(
            "push_events",
            "Events this node handed to at least one push client",
            self.events.clone(),
        );
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The bucket bounds the conventions advise for `http.server.request.duration` and the
/// messaging durations, in seconds.
fn semconv_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ])
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_duration: HistogramFamily<RequestLabels>,
    pub publishes: Family<OutcomeLabels, Counter>,
    pub sent: Family<SendLabels, Counter>,
    pub publish_duration: HistogramFamily<SendLabels>,
    pub group_pending: Family<GroupLabels, Gauge>,
    pub group_in_flight: Family<GroupLabels, Gauge>,
    pub group_redelivered: Family<GroupLabels, Gauge>,
    pub group_oldest_age: Family<GroupLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub partition_pending: Family<PartitionLabels, Gauge>,
    pub partition_in_flight: Family<PartitionLabels, Gauge>,
    pub partition_oldest_age: Family<PartitionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub partition_parked: Family<PartitionLabels, Gauge>,
    pub nats_connected: Gauge,
    /// 1 while this node exports the cluster-wide numbers (`cluster_reporter`).
    pub cluster_reporter: Gauge,
    pub webhook_attempts: Family<OutcomeLabels, Counter>,
    pub webhook_attempt_duration: Histogram,
    pub push: PushMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let http_duration: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(semconv_histogram);
        root.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests",
            prometheus_client::registry::Unit::Seconds,
            http_duration.clone(),
        );
        let sent = Family::<SendLabels, Counter>::default();
        root.register(
            "messaging_client_sent_messages",
            "Number of messages the node attempted to send to the broker (events posted over HTTP)",
            sent.clone(),
        );
        let publish_duration: HistogramFamily<SendLabels> =
            Family::new_with_constructor(semconv_histogram);
        root.register_with_unit(
            "messaging_client_operation_duration",
            "Duration of a publish, from sending a request's events to their PubAcks (retries included)",
            prometheus_client::registry::Unit::Seconds,
            publish_duration.clone(),
        );
        let registry = root.sub_registry_with_prefix("bus");
        let publishes = Family::<OutcomeLabels, Counter>::default();
        let group_pending = Family::<GroupLabels, Gauge>::default();
        let group_in_flight = Family::<GroupLabels, Gauge>::default();
        let group_redelivered = Family::<GroupLabels, Gauge>::default();
        let group_oldest_age =
            Family::<GroupLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "group_oldest_unacked_age_seconds",
            "Age of the oldest event a group has not acknowledged (at most: the age of the first event after its acknowledgement floor); 0 when it has none",
            group_oldest_age.clone(),
        );
        let partition_pending = Family::<PartitionLabels, Gauge>::default();
        let partition_in_flight = Family::<PartitionLabels, Gauge>::default();
        let partition_oldest_age =
            Family::<PartitionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "ordered_partition_pending_events",
            "Events of an ordered group's partition not yet delivered to its owner (lag)",
            partition_pending.clone(),
        );
        registry.register(
            "ordered_partition_in_flight_events",
            "Events of an ordered group's partition delivered and not yet acknowledged",
            partition_in_flight.clone(),
        );
        registry.register(
            "ordered_partition_oldest_unacked_age_seconds",
            "Age of the oldest event of an ordered group's partition not yet settled; 0 when it has none",
            partition_oldest_age.clone(),
        );
        let partition_parked = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "ordered_partition_parked_events",
            "Events of failing keys held aside from an ordered group's partition until their key's failed event settles",
            partition_parked.clone(),
        );
        let nats_connected = Gauge::default();
        let push = PushMetrics::default();
        push.register(registry);
        let webhook_attempts = Family::<OutcomeLabels, Counter>::default();
        let webhook_attempt_duration = latency_histogram();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, retry, gone, refused)",
            webhook_attempts.clone(),
        );
        registry.register(
            "webhook_attempt_duration_seconds",
            "Time from sending a webhook attempt to its answer",
            webhook_attempt_duration.clone(),
        );
        registry.register(
            "publishes",
            "Events published, by outcome (stored, duplicate, failed, unknown)",
            publishes.clone(),
        );
        registry.register(
            "group_pending_events",
            "Events not yet delivered to a consumer group (lag)",
            group_pending.clone(),
        );
        registry.register(
            "group_in_flight_events",
            "Events delivered to a group and not yet acknowledged",
            group_in_flight.clone(),
        );
        registry.register(
            "group_redelivered_events",
            "Unacknowledged events delivered more than once",
            group_redelivered.clone(),
        );
        registry.register(
            "nats_connected",
            "1 while the node's NATS connection is up",
            nats_connected.clone(),
        );
        let cluster_reporter = Gauge::default();
        registry.register(
            "cluster_reporter",
            "1 while this node is the one that exports the cluster-wide group and partition numbers (one node at a time: sum them over nodes safely)",
            cluster_reporter.clone(),
        );
        Self {
            registry: root,
            http_duration,
            publishes,
            sent,
            publish_duration,
            group_pending,
            group_in_flight,
            group_redelivered,
            group_oldest_age,
            partition_pending,
            partition_in_flight,
            partition_oldest_age,
            partition_parked,
            nats_connected,
            cluster_reporter,
            webhook_attempts,
            webhook_attempt_duration,
            push,
        }
    }

    /// Drops the cluster-wide series (groups', ordered partitions'), before they are set
    /// again or while another node exports them.
    pub fn clear_cluster_numbers(&self) {
        self.group_pending.clear();
        self.group_in_flight.clear();
        self.group_redelivered.clear();
        self.group_oldest_age.clear();
        self.partition_pending.clear();
        self.partition_in_flight.clear();
        self.partition_oldest_age.clear();
        self.partition_parked.clear();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}
