//! The publish span recorded without an SDK span, when spans go out through the bus's
//! own OTLP/HTTP processor ([`super::batch_encoder`]).
//!
//! Every event published makes one of these, so it is the span the bus makes most.
//! Through the SDK it cost ~6 k instructions besides its encoding (a span builder and a
//! span of ~300 bytes moved several times, six allocations: name, attribute list and
//! four attribute strings, the `SpanData` it becomes); here it is one allocation for its
//! strings, and when it ends it is written straight into OTLP bytes
//! (BENCHMARKS.md, "Profile, fourth round"). It is the same span: the tracer's sampler
//! decides, with the same ids, parent, name, kind, attributes and flags as
//! [`super::HopSpan::publish`] builds through the SDK (a test compares the two's bytes).
//! With OTLP/gRPC (the upstream exporter) publish spans still go through the SDK.

use std::sync::{LazyLock, OnceLock};
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample,
};

use super::batch_encoder::Direct;
use super::otlp_wire::{
    LEN, flags, nanos, nested, put_bytes, put_fixed32, put_fixed64, put_int_attribute, put_key,
    put_key_value, put_str_attribute, put_string, put_uint, put_varint,
};
use super::propagation::trace_state_text;

/// Where publish spans go and who decides which are recorded: the installed processor
/// and the tracer's sampler. Unset (OTLP/gRPC, no export): the SDK path.
static LEAN: OnceLock<Lean> = OnceLock::new();

#[derive(Debug)]
struct Lean {
    sink: Direct,
    sampler: Sampler,
}

/// Sends publish spans to `sink`, sampled by `sampler` (the tracer's). Once per process.
pub(crate) fn install(sink: Direct, sampler: Sampler) {
    let _ = LEAN.set(Lean { sink, sampler });
}

/// `Span.kind` PRODUCER.
const PRODUCER: u64 = 4;
/// The operation, as the sampler is told it.
const OPERATION: &str = "publish";
/// The span name is this and the destination.
const NAME_PREFIX: &str = "publish ";

/// The attributes every publish span has, written once.
static CONSTANT_ATTRIBUTES: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut out = Vec::new();
    put_str_attribute(&mut out, 9, "messaging.system", "nats");
    put_str_attribute(&mut out, 9, "messaging.operation.name", "publish");
    put_str_attribute(&mut out, 9, "messaging.operation.type", "send");
    out
});

/// A publish span: recorded (written when dropped) or, when the sampler dropped it, only
/// a context to propagate.
#[derive(Debug)]
pub(crate) struct PublishSpan {
    sc: SpanContext,
    /// The parent's span id and whether it came from another process.
    parent: Option<(SpanId, bool)>,
    start: SystemTime,
    /// The destination, the message id, then (after the PubAck) the stream name.
    text: String,
    destination_len: usize,
    id_len: usize,
    sequence: Option<u64>,
    duplicate: bool,
    error: Option<String>,
    /// Attributes the sampler added (none for the SDK's samplers).
    extra: Vec<KeyValue>,
    /// `None`: not recorded.
    sink: Option<&'static Direct>,
}

/// The publish span of `message_id` to `destination` under `parent`, or `None` when
/// publish spans go through the SDK.
pub(crate) fn start(destination: &str, message_id: &str, parent: &Context) -> Option<PublishSpan> {
    let lean = LEAN.get()?;
    let ids = RandomIdGenerator::default();
    let span_id = ids.new_span_id();
    let parent_span = parent.span();
    let psc = parent_span.span_context();
    let (trace_id, parent_ids, parent_flags) = if psc.is_valid() {
        (
            psc.trace_id(),
            Some((psc.span_id(), psc.is_remote())),
            psc.trace_flags(),
        )
    } else {
        (ids.new_trace_id(), None, TraceFlags::default())
    };
    let result = lean.sampler.should_sample(
        Some(parent),
        trace_id,
        OPERATION,
        &SpanKind::Producer,
        &[],
        &[],
    );
    let recorded = matches!(result.decision, SamplingDecision::RecordAndSample);
    let flags = match result.decision {
        SamplingDecision::RecordAndSample => parent_flags.with_sampled(true),
        // Recorded but not sampled: nothing is exported, as the SDK's processors do.
        SamplingDecision::RecordOnly => parent_flags.with_sampled(false),
        SamplingDecision::Drop => TraceFlags::default(),
    };
    let sc = SpanContext::new(trace_id, span_id, flags, false, result.trace_state);
    let mut text = String::new();
    if recorded {
        // Room for the stream name the PubAck adds.
        text.reserve(destination.len() + message_id.len() + 16);
        text.push_str(destination);
        text.push_str(message_id);
    }
    Some(PublishSpan {
        sc,
        parent: parent_ids,
        start: SystemTime::now(),
        text,
        destination_len: destination.len(),
        id_len: message_id.len(),
        sequence: None,
        duplicate: false,
        error: None,
        extra: result.attributes,
        sink: recorded.then_some(&lean.sink),
    })
}

impl PublishSpan {
    pub(crate) fn span_context(&self) -> &SpanContext {
        &self.sc
    }

    /// What the PubAck said.
    pub(crate) fn record_ack(&mut self, stream: &str, sequence: u64, duplicate: bool) {
        if self.sink.is_none() || self.sequence.is_some() {
            return;
        }
        self.text.push_str(stream);
        self.sequence = Some(sequence);
        self.duplicate = duplicate;
    }

    /// Marks it failed, with a short error type.
    pub(crate) fn record_error(&mut self, error_type: &str) {
        if self.sink.is_some() {
            self.error = Some(error_type.to_owned());
        }
    }

    /// Appends the span as a `ScopeSpans.spans` entry, ended at `end`.
    fn write(&self, out: &mut Vec<u8>, end: SystemTime) {
        let (destination, rest) = self.text.split_at(self.destination_len);
        let (message_id, stream) = rest.split_at(self.id_len);
        // A publish span is 300-500 bytes: a two-byte length.
        nested(out, 2, 2, |out| {
            put_bytes(out, 1, &self.sc.trace_id().to_bytes());
            put_bytes(out, 2, &self.sc.span_id().to_bytes());
            put_string(out, 3, &trace_state_text(&self.sc));
            if let Some((id, _)) = self.parent {
                put_bytes(out, 4, &id.to_bytes());
            }
            put_key(out, 5, LEN);
            put_varint(out, (NAME_PREFIX.len() + destination.len()) as u64);
            out.extend_from_slice(NAME_PREFIX.as_bytes());
            out.extend_from_slice(destination.as_bytes());
            put_uint(out, 6, PRODUCER);
            put_fixed64(out, 7, nanos(self.start));
            put_fixed64(out, 8, nanos(end));
            out.extend_from_slice(&CONSTANT_ATTRIBUTES);
            put_str_attribute(out, 9, "messaging.destination.name", destination);
            put_str_attribute(out, 9, "messaging.message.id", message_id);
            if let Some(sequence) = self.sequence {
                put_str_attribute(out, 9, "messaging.nats.stream", stream);
                let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
                put_int_attribute(out, 9, "messaging.nats.stream.sequence", sequence);
                if self.duplicate {
                    put_key_value(out, 9, "messaging.nats.duplicate", &Value::Bool(true));
                }
            }
            if let Some(error) = &self.error {
                put_str_attribute(out, 9, "error.type", error);
            }
            for kv in &self.extra {
                put_key_value(out, 9, kv.key.as_str(), &kv.value);
            }
            // Status: unset (empty), or error without a message (code 2).
            put_key(out, 15, LEN);
            if self.error.is_some() {
                out.extend_from_slice(&[2, 3 << 3, 2]);
            } else {
                out.push(0);
            }
            let remote = self.parent.is_some_and(|(_, remote)| remote);
            put_fixed32(out, 16, flags(&self.sc, remote));
        });
    }
}

impl Drop for PublishSpan {
    fn drop(&mut self) {
        if let Some(sink) = self.sink {
            let end = SystemTime::now();
            sink.queue(|out| self.write(out, end));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{Status, TraceId, TraceState};
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

    use super::super::otlp_wire::put_span_entry;
    use super::*;

    fn sdk_publish(parent: Option<(SpanId, bool)>, ack: bool, error: bool) -> SpanData {
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_123);
        let mut attributes = vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new(
                "messaging.destination.name",
                "bus.evt.shop.order".to_owned(),
            ),
            KeyValue::new("messaging.message.id", "e-1".to_owned()),
        ];
        if ack {
            attributes.push(KeyValue::new(
                "messaging.nats.stream",
                "BUS_EVENTS".to_owned(),
            ));
            attributes.push(KeyValue::new("messaging.nats.stream.sequence", 42_i64));
            attributes.push(KeyValue::new("messaging.nats.duplicate", true));
        }
        if error {
            attributes.push(KeyValue::new("error.type", "timeout".to_owned()));
        }
        SpanData {
            span_context: context(),
            parent_span_id: parent.map_or(SpanId::INVALID, |(id, _)| id),
            parent_span_is_remote: parent.is_some_and(|(_, r)| r),
            span_kind: SpanKind::Producer,
            name: "publish bus.evt.shop.order".into(),
            start_time: start,
            end_time: start + Duration::from_micros(250),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if error {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: InstrumentationScope::builder("bus").build(),
        }
    }

    fn context() -> SpanContext {
        SpanContext::new(
            TraceId::from(0xabcdef_u128),
            SpanId::from(0x1234_u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    fn ours(parent: Option<(SpanId, bool)>, ack: bool, error: bool) -> Vec<u8> {
        let sdk = sdk_publish(parent, ack, error);
        let text = String::from("bus.evt.shop.ordere-1");
        let mut span = PublishSpan {
            sc: context(),
            parent,
            start: sdk.start_time,
            text,
            destination_len: "bus.evt.shop.order".len(),
            id_len: "e-1".len(),
            sequence: None,
            duplicate: false,
            error: None,
            extra: Vec::new(),
            // Not recorded: dropping it writes nothing anywhere.
            sink: None,
        };
        if ack {
            span.text.push_str("BUS_EVENTS");
            span.sequence = Some(42);
            span.duplicate = true;
        }
        if error {
            span.error = Some("timeout".into());
        }
        let mut out = Vec::new();
        span.write(&mut out, sdk.end_time);
        out
    }

    #[test]
    fn given_the_same_span_should_write_the_bytes_the_sdk_span_gives() {
        for parent in [
            None,
            Some((SpanId::from(7_u64), true)),
            Some((SpanId::from(9_u64), false)),
        ] {
            for (ack, error) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut sdk = Vec::new();
                put_span_entry(&mut sdk, &sdk_publish(parent, ack, error));
                assert_eq!(
                    ours(parent, ack, error),
                    sdk,
                    "parent {parent:?}, ack {ack}, error {error}"
                );
            }
        }
    }
}
