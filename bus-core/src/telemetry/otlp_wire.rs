//! OTLP trace export encoding: finished spans written straight into the protobuf bytes
//! of an `ExportTraceServiceRequest`, without building the generated message types.
//!
//! Why not `opentelemetry-proto` + `prost`: converting each span into the generated types
//! copies every name, key and value into a new `String`, and `prost` computes the length
//! of a nested message again at every level above it; together about 23 k instructions
//! per publish span, more than the rest of the span's life (BENCHMARKS.md, "Tracing
//! cost"). Here the bytes are written in one pass: a nested message's length goes in
//! front of it once its bytes are written (room for the usual length is left first;
//! [`nested`]).
//!
//! The bytes decode to what `opentelemetry-proto`'s conversion builds from the same spans
//! (the tests compare the two), field for field: the same span flags, status always
//! present, empty fields left out as proto3 leaves them out.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

use super::propagation::trace_state_text;

// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
pub(super) const LEN: u8 = 2;
const FIXED32: u8 = 5;

// `SpanFlags`: the context's `is_remote` is known, and whether it is set.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// Appends `ExportTraceServiceRequest { resource_spans: [ one ResourceSpans ] }` for
/// `spans` to `out`, with one `ScopeSpans` per instrumentation scope, in order of first
/// appearance.
#[cfg(test)]
pub(crate) fn encode_request(resource: &Resource, spans: &[SpanData], out: &mut Vec<u8>) {
    let mut scopes: Vec<(InstrumentationScope, Vec<u8>)> = Vec::new();
    for span in spans {
        let i = match scopes
            .iter()
            .position(|(s, _)| *s == span.instrumentation_scope)
        {
            Some(i) => i,
            None => {
                scopes.push((span.instrumentation_scope.clone(), Vec::new()));
                scopes.len() - 1
            }
        };
        put_span_entry(&mut scopes[i].1, span);
    }
    put_request(out, &encode_resource(resource), &scopes);
}

/// `resource` as the content of a `Resource` message: written once, put in every request.
pub(crate) fn encode_resource(resource: &Resource) -> EncodedResource {
    let mut attributes = Vec::new();
    for (k, v) in resource.iter() {
        put_key_value(&mut attributes, 1, k.as_str(), v);
    }
    EncodedResource {
        attributes,
        schema_url: resource.schema_url().unwrap_or_default().to_owned(),
    }
}

/// A resource written once by [`encode_resource`].
#[derive(Debug, Clone, Default)]
pub(crate) struct EncodedResource {
    attributes: Vec<u8>,
    schema_url: String,
}

/// Appends `span` as an entry of `ScopeSpans.spans` (its key, length and bytes): what
/// [`put_request`] takes, concatenated, per scope.
pub(crate) fn put_span_entry(out: &mut Vec<u8>, span: &SpanData) {
    // A publish span is 300-500 bytes: a two-byte length.
    nested(out, 2, 2, |out| put_span(out, span));
}

/// Appends the request around span entries already written: one `ResourceSpans` for
/// `resource`, one `ScopeSpans` per `(scope, entries)` that has entries.
pub(crate) fn put_request(
    out: &mut Vec<u8>,
    resource: &EncodedResource,
    scopes: &[(InstrumentationScope, Vec<u8>)],
) {
    let total: usize = scopes.iter().map(|(_, entries)| entries.len()).sum();
    out.reserve(total + resource.attributes.len() + 64);
    nested(out, 1, varint_len(total as u64 + 32), |out| {
        nested(out, 1, 2, |out| out.extend_from_slice(&resource.attributes));
        for (scope, entries) in scopes.iter().filter(|(_, e)| !e.is_empty()) {
            nested(out, 2, varint_len(entries.len() as u64 + 32), |out| {
                nested(out, 1, 1, |out| {
                    put_string(out, 1, scope.name());
                    put_string(out, 2, scope.version().unwrap_or_default());
                    for kv in scope.attributes() {
                        put_key_value(out, 3, kv.key.as_str(), &kv.value);
                    }
                });
                out.extend_from_slice(entries);
                put_string(out, 3, scope.schema_url().unwrap_or_default());
            });
        }
        put_string(out, 3, &resource.schema_url);
    });
}

// ---- writing ----------------------------------------------------------------------

/// Bytes of a varint.
fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends a length-delimited `field` whose content `body` writes: `room` bytes are left
/// for the length, and the content is moved when its length needs another count.
pub(super) fn nested(out: &mut Vec<u8>, field: u32, room: usize, body: impl FnOnce(&mut Vec<u8>)) {
    put_key(out, field, LEN);
    let at = out.len();
    out.resize(at + room, 0);
    body(out);
    let len = out.len() - at - room;
    let need = varint_len(len as u64);
    if need != room {
        let content = at + room..out.len();
        if need > room {
            out.resize(out.len() + need - room, 0);
        }
        out.copy_within(content, at + need);
        out.truncate(at + need + len);
    }
    let mut v = len as u64;
    for b in &mut out[at..at + need] {
        *b = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
    }
    out[at + need - 1] &= 0x7f;
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

pub(super) fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(super) fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

pub(super) fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, VARINT);
        put_varint(out, v);
    }
}

pub(super) fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    put_key(out, field, FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

/// A `KeyValue { key = 1, AnyValue value = 2 }` as `field`.
pub(super) fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    nested(out, field, 1, |out| {
        put_string(out, 1, key);
        nested(out, 2, 1, |out| put_any_value(out, value));
    });
}

/// A `KeyValue` with a string value as `field`, without making a `Value` of it; its
/// lengths are computed, not measured (it runs several times per publish span).
pub(super) fn put_str_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    // AnyValue { string_value = 1 }.
    let any = 1 + varint_len(value.len() as u64) + value.len();
    put_attribute_head(out, field, key, any);
    put_bytes(out, 1, value.as_bytes());
}

/// A `KeyValue` with an integer value as `field`, lengths computed.
pub(super) fn put_int_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: i64) {
    // AnyValue { int_value = 3 }.
    let any = 1 + varint_len(value as u64);
    put_attribute_head(out, field, key, any);
    put_key(out, 3, VARINT);
    put_varint(out, value as u64);
}

/// `KeyValue { key = 1, value = 2 }` as `field` up to the `AnyValue`'s content, which is
/// `any` bytes long and the caller writes next.
fn put_attribute_head(out: &mut Vec<u8>, field: u32, key: &str, any: usize) {
    let kv = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any as u64) + any;
    out.reserve(key_len(field) + varint_len(kv as u64) + kv);
    put_key(out, field, LEN);
    put_varint(out, kv as u64);
    put_bytes(out, 1, key.as_bytes());
    put_key(out, 2, LEN);
    put_varint(out, any as u64);
}

/// Bytes of a key (field number and wire type).
fn key_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

/// The content of an `AnyValue`.
fn put_any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            put_key(out, 2, VARINT);
            out.push(u8::from(*b));
        }
        Value::I64(i) => {
            put_key(out, 3, VARINT);
            put_varint(out, *i as u64);
        }
        Value::F64(f) => {
            put_key(out, 4, FIXED64);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => put_bytes(out, 1, s.as_str().as_bytes()),
        Value::Array(a) => nested(out, 5, 1, |out| put_array(out, a)),
        other => put_bytes(out, 1, other.to_string().as_bytes()),
    }
}

/// The content of an `ArrayValue { repeated AnyValue values = 1 }`.
fn put_array(out: &mut Vec<u8>, array: &Array) {
    let element = |out: &mut Vec<u8>, v: Value| nested(out, 1, 1, |out| put_any_value(out, &v));
    match array {
        Array::Bool(v) => v.iter().for_each(|b| element(out, Value::Bool(*b))),
        Array::I64(v) => v.iter().for_each(|i| element(out, Value::I64(*i))),
        Array::F64(v) => v.iter().for_each(|f| element(out, Value::F64(*f))),
        Array::String(v) => v
            .iter()
            .for_each(|s| element(out, Value::String(s.clone()))),
        other => element(out, Value::String(other.to_string().into())),
    }
}

/// The content of a `Span`.
fn put_span(out: &mut Vec<u8>, span: &SpanData) {
    let sc = &span.span_context;
    put_bytes(out, 1, &sc.trace_id().to_bytes());
    put_bytes(out, 2, &sc.span_id().to_bytes());
    put_string(out, 3, &trace_state_text(sc));
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        put_bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    put_string(out, 5, &span.name);
    put_uint(out, 6, kind_number(&span.span_kind));
    put_fixed64(out, 7, nanos(span.start_time));
    put_fixed64(out, 8, nanos(span.end_time));
    for kv in &span.attributes {
        put_key_value(out, 9, kv.key.as_str(), &kv.value);
    }
    put_uint(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        nested(out, 11, 1, |out| {
            put_fixed64(out, 1, nanos(event.timestamp));
            put_string(out, 2, &event.name);
            for kv in &event.attributes {
                put_key_value(out, 3, kv.key.as_str(), &kv.value);
            }
            put_uint(out, 4, u64::from(event.dropped_attributes_count));
        });
    }
    put_uint(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        nested(out, 13, 1, |out| {
            let lc = &link.span_context;
            put_bytes(out, 1, &lc.trace_id().to_bytes());
            put_bytes(out, 2, &lc.span_id().to_bytes());
            put_string(out, 3, &trace_state_text(lc));
            for kv in &link.attributes {
                put_key_value(out, 4, kv.key.as_str(), &kv.value);
            }
            put_uint(out, 5, u64::from(link.dropped_attributes_count));
            put_fixed32(out, 6, flags(lc, lc.is_remote()));
        });
    }
    put_uint(out, 14, u64::from(span.links.dropped_count));
    nested(out, 15, 1, |out| {
        let (code, message) = status_parts(&span.status);
        put_string(out, 2, message);
        put_uint(out, 3, code);
    });
    put_fixed32(out, 16, flags(sc, span.parent_span_is_remote));
}

// ---- values as OTLP has them ------------------------------------------------------

fn kind_number(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// The trace flags, plus whether the (parent or linked) context is remote.
pub(super) fn flags(sc: &SpanContext, remote: bool) -> u32 {
    let mut f = u32::from(sc.trace_flags().to_u8()) | CONTEXT_HAS_IS_REMOTE;
    if remote {
        f |= CONTEXT_IS_REMOTE;
    }
    f
}

/// `(code, message)`: 0 unset, 1 ok, 2 error with its description.
fn status_parts(status: &Status) -> (u64, &str) {
    match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    }
}

pub(super) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::KeyValue;
    use opentelemetry::trace::{Event, Link, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    fn context(trace: u128, span: u64, sampled: bool, remote: bool, state: &str) -> SpanContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let state = state.parse::<TraceState>().unwrap_or_default();
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            flags,
            remote,
            state,
        )
    }

    fn every_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new(
                "messaging.destination.name",
                String::from("bus.evt.shop.order"),
            ),
            KeyValue::new("empty", ""),
            KeyValue::new("yes", true),
            KeyValue::new("no", false),
            KeyValue::new("seq", 300_i64),
            KeyValue::new("negative", -5_i64),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("ratio", 0.25_f64),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("ints", Value::Array(Array::I64(vec![0, -1, 1 << 40]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![1.5, -0.0]))),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec!["a".into(), "".into()])),
            ),
            KeyValue::new("long", "x".repeat(300)),
        ]
    }

    fn span(scope: &InstrumentationScope, n: u64, status: Status, kind: SpanKind) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + n);
        let mut events = SpanEvents::default();
        let mut links = SpanLinks::default();
        if !n.is_multiple_of(2) {
            events.events.push(Event::new(
                "retry",
                start + Duration::from_micros(5),
                vec![KeyValue::new("attempt", 2_i64)],
                1,
            ));
            events.dropped_count = 3;
            links.links.push(Link::new(
                context(7, 8, true, true, "vendor=value"),
                vec![KeyValue::new("why", "producer")],
                2,
            ));
            links.dropped_count = 1;
        }
        SpanData {
            span_context: context(
                0xabc0 + u128::from(n),
                0x10 + n,
                !n.is_multiple_of(3),
                false,
                "",
            ),
            parent_span_id: if n.is_multiple_of(2) {
                SpanId::INVALID
            } else {
                SpanId::from(0x99)
            },
            parent_span_is_remote: n % 4 == 1,
            span_kind: kind,
            name: format!("publish bus.evt.{n}").into(),
            start_time: start,
            end_time: start + Duration::from_micros(120),
            attributes: if n == 0 { Vec::new() } else { every_value() },
            dropped_attributes_count: u32::try_from(n % 2).unwrap_or(0),
            events,
            links,
            status,
            instrumentation_scope: scope.clone(),
        }
    }

    /// What `opentelemetry-proto` + `prost` send for the same spans, decoded.
    fn upstream(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        }
    }

    fn ours(resource: &Resource, spans: &[SpanData]) -> ExportTraceServiceRequest {
        let mut bytes = Vec::new();
        encode_request(resource, spans, &mut bytes);
        match ExportTraceServiceRequest::decode(bytes.as_slice()) {
            Ok(request) => request,
            Err(e) => panic!("our bytes do not decode: {e}"),
        }
    }

    #[test]
    fn a_batch_decodes_to_what_the_upstream_conversion_builds() {
        let resource = Resource::builder()
            .with_service_name("billing")
            .with_attribute(KeyValue::new("deployment.environment", "test"))
            .build();
        let bus = InstrumentationScope::builder("bus").build();
        let other = InstrumentationScope::builder("other")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
            .with_attributes([KeyValue::new("scope.attr", 1_i64)])
            .build();
        let spans = vec![
            span(&bus, 0, Status::Unset, SpanKind::Producer),
            span(&other, 1, Status::Ok, SpanKind::Consumer),
            span(&bus, 2, Status::error("handler_error"), SpanKind::Server),
            span(&other, 3, Status::error(""), SpanKind::Client),
            span(&bus, 5, Status::Unset, SpanKind::Internal),
        ];
        assert_eq!(ours(&resource, &spans), upstream(&resource, spans));
    }

    #[test]
    fn a_resource_schema_and_a_lone_span_decode_alike() {
        let resource = Resource::builder_empty()
            .with_schema_url(
                [KeyValue::new("service.name", "node")],
                "https://opentelemetry.io/schemas/1.26.0",
            )
            .build();
        let bus = InstrumentationScope::builder("bus").build();
        let spans = vec![span(&bus, 1, Status::Unset, SpanKind::Producer)];
        assert_eq!(ours(&resource, &spans), upstream(&resource, spans));
    }

    #[test]
    fn a_nested_length_is_right_whatever_room_was_left_for_it() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            for room in [1, 2, 3] {
                let mut out = vec![0xee];
                nested(&mut out, 9, room, |out| out.resize(out.len() + len, 0xab));
                let mut expected = vec![0xee];
                put_key(&mut expected, 9, LEN);
                put_varint(&mut expected, len as u64);
                expected.resize(expected.len() + len, 0xab);
                assert_eq!(out, expected, "length {len}, room {room}");
            }
        }
    }

    #[test]
    fn an_int_attribute_is_written_as_the_general_key_value() {
        for value in [0, 1, 300, -5, i64::MAX, i64::MIN] {
            let mut general = Vec::new();
            put_key_value(&mut general, 9, "seq", &Value::I64(value));
            let mut direct = Vec::new();
            put_int_attribute(&mut direct, 9, "seq", value);
            assert_eq!(direct, general, "{value}");
        }
    }

    #[test]
    fn a_string_attribute_is_written_as_the_general_key_value() {
        for (key, value) in [
            ("k", ""),
            ("messaging.system", "nats"),
            ("long", &*"v".repeat(200)),
        ] {
            let mut general = Vec::new();
            put_key_value(&mut general, 9, key, &Value::from(value.to_owned()));
            let mut direct = Vec::new();
            put_str_attribute(&mut direct, 9, key, value);
            assert_eq!(direct, general, "{key}");
        }
    }

    #[test]
    fn varint_lengths_match_the_bytes_written() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
