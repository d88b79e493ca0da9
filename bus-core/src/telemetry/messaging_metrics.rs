//! The OpenTelemetry messaging metrics (semantic conventions), recorded through the
//! application's meter provider: one given to the `Bus` builder, else the global one.
//!
//! | instrument | kind | unit | recorded |
//! |---|---|---|---|
//! | `messaging.client.operation.duration` | histogram | s | each publish, from send to PubAck (retries included) |
//! | `messaging.client.sent.messages` | counter | `{message}` | each publish, stored or failed |
//! | `messaging.client.consumed.messages` | counter | `{message}` | each delivery received (each try of an ordered group's in-place retry) |
//! | `messaging.process.duration` | histogram | s | each handling |
//!
//! Attributes: `messaging.system` (`nats`), `messaging.operation.name` (`publish`,
//! `process`), `messaging.operation.type` (`send`, `process`),
//! `messaging.destination.name` (the subject: `bus.evt.<type>`, a dead letter's or a
//! redrive's; for an ordered group `bus.ord.<group>`), `messaging.consumer.group.name`
//! (groups), `error.type` (when it failed: a publish's `PublishErrorKind` in snake case, a
//! handling's outcome). A publish refused before it left (too large) is not counted.
//!
//! The global meter provider is looked at with the global tracer provider (see
//! [`super::global_tracer`]): the instruments are made again when the application installs
//! another provider, and with the no-op provider (a type without fields: what the API
//! installs until the application sets one) nothing is recorded and no attribute is built.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider};

/// Bucket bounds of the duration histograms, in seconds, as the conventions advise.
const DURATION_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The four instruments.
#[derive(Debug)]
pub struct MessagingMetrics {
    operation_duration: Histogram<f64>,
    sent: Counter<u64>,
    consumed: Counter<u64>,
    process_duration: Histogram<f64>,
}

impl MessagingMetrics {
    /// The instruments, made with `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            operation_duration: meter
                .f64_histogram("messaging.client.operation.duration")
                .with_unit("s")
                .with_description(
                    "Duration of a messaging operation initiated by a producer or consumer client",
                )
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build(),
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker")
                .build(),
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application")
                .build(),
            process_duration: meter
                .f64_histogram("messaging.process.duration")
                .with_unit("s")
                .with_description("Duration of processing operation")
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build(),
        }
    }

    /// One publish to `destination`, `elapsed` from send to PubAck; `error_type` when it
    /// failed.
    pub fn record_send(&self, destination: &str, elapsed: Duration, error_type: Option<&str>) {
        let attributes = attributes("publish", "send", destination, None, error_type);
        self.operation_duration
            .record(elapsed.as_secs_f64(), &attributes);
        self.sent.add(1, &attributes);
    }

    /// One delivery from `destination` handed to a handler (of `group`, if any).
    pub fn record_consumed(&self, destination: &str, group: Option<&str>) {
        let attributes = attributes("process", "process", destination, group, None);
        self.consumed.add(1, &attributes);
    }

    /// One handling of a delivery from `destination`, which took `elapsed`.
    pub fn record_process(
        &self,
        destination: &str,
        group: Option<&str>,
        elapsed: Duration,
        error_type: Option<&str>,
    ) {
        let attributes = attributes("process", "process", destination, group, error_type);
        self.process_duration
            .record(elapsed.as_secs_f64(), &attributes);
    }
}

fn attributes(
    operation: &'static str,
    operation_type: &'static str,
    destination: &str,
    group: Option<&str>,
    error_type: Option<&str>,
) -> Vec<KeyValue> {
    let mut all = Vec::with_capacity(6);
    all.push(KeyValue::new("messaging.system", "nats"));
    all.push(KeyValue::new("messaging.operation.name", operation));
    all.push(KeyValue::new("messaging.operation.type", operation_type));
    all.push(KeyValue::new(
        "messaging.destination.name",
        destination.to_owned(),
    ));
    if let Some(g) = group {
        all.push(KeyValue::new("messaging.consumer.group.name", g.to_owned()));
    }
    if let Some(e) = error_type {
        all.push(KeyValue::new("error.type", e.to_owned()));
    }
    all
}

/// Where a `Bus` records its metrics: a meter provider given to it, else the global one.
#[derive(Clone, Default)]
pub struct BusMeters(Option<Arc<MessagingMetrics>>);

impl std::fmt::Debug for BusMeters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BusMeters(given provider)"
        } else {
            "BusMeters(global provider)"
        })
    }
}

impl BusMeters {
    /// The metrics go through `provider` (scope `bus`), whatever the process installed.
    pub fn from_provider(provider: &(impl MeterProvider + ?Sized)) -> Self {
        let meter = provider.meter_with_scope(super::global_tracer::scope());
        Self(Some(Arc::new(MessagingMetrics::new(&meter))))
    }

    /// The instruments to record with now, if any: one atomic load when there are none.
    pub fn current(&self) -> Option<Arc<MessagingMetrics>> {
        match &self.0 {
            Some(given) => Some(given.clone()),
            None => global(),
        }
    }
}

/// The global meter provider, as `opentelemetry::global::meter_provider` gives it.
type GlobalProvider = Arc<dyn MeterProvider + Send + Sync>;

static GLOBAL_ACTIVE: AtomicBool = AtomicBool::new(false);
/// The instruments, and the global provider they were made with (held, so that its
/// address is not another provider's while it is compared).
static GLOBAL: RwLock<Option<(GlobalProvider, Arc<MessagingMetrics>)>> = RwLock::new(None);

fn global() -> Option<Arc<MessagingMetrics>> {
    if !GLOBAL_ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    GLOBAL
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .map(|(_, metrics)| metrics.clone())
}

/// Looks at the global meter provider: instruments made again when it is another one,
/// none while it is the no-op provider.
pub(crate) fn look() {
    let provider: GlobalProvider = opentelemetry::global::meter_provider();
    let slot = || {
        GLOBAL
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if !is_live(&*provider) {
        GLOBAL_ACTIVE.store(false, Ordering::Relaxed);
        *slot() = None;
        return;
    }
    let seen = GLOBAL
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .is_some_and(|(seen, _)| Arc::ptr_eq(seen, &provider));
    if seen {
        return;
    }
    // The application's code runs outside the lock.
    let meter = provider.meter_with_scope(super::global_tracer::scope());
    let metrics = Arc::new(MessagingMetrics::new(&meter));
    *slot() = Some((provider, metrics));
    GLOBAL_ACTIVE.store(true, Ordering::Relaxed);
}

/// Whether `provider` records: the no-op provider is a type without fields; every provider
/// that records holds something (the SDK's: its pipelines).
fn is_live(provider: &(dyn MeterProvider + Send + Sync)) -> bool {
    std::mem::size_of_val(provider) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_no_op_meter_provider_is_not_live_and_the_sdk_is() {
        let noop = opentelemetry::metrics::noop::NoopMeterProvider::new();
        assert!(!is_live(&noop));
        let sdk = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
        assert!(is_live(&sdk));
        // As the global API hands them out.
        let global: GlobalProvider = Arc::new(noop);
        assert!(!is_live(&*global));
    }
}
