//! Header names of the CloudEvents binary mode on NATS and of the bus's own metadata.

/// `ce-id`: the event's `id`.
pub const CE_ID: &str = "ce-id";
/// `ce-source`: the event's `source`, the context that produced it.
pub const CE_SOURCE: &str = "ce-source";
/// `ce-type`: the event type name (`shop.order.created`).
pub const CE_TYPE: &str = "ce-type";
/// `ce-specversion`: the CloudEvents version, always [`SPEC_VERSION`](crate::event::SPEC_VERSION).
pub const CE_SPECVERSION: &str = "ce-specversion";
/// `ce-time`: when the event happened, as RFC 3339 text.
pub const CE_TIME: &str = "ce-time";
/// `ce-subject`: what the event is about within its source.
pub const CE_SUBJECT: &str = "ce-subject";
/// `ce-dataschema`: the URI of the schema the data follows.
pub const CE_DATASCHEMA: &str = "ce-dataschema";
/// `ce-partitionkey`: the ordering key of ordered groups.
pub const CE_PARTITIONKEY: &str = "ce-partitionkey";
/// Prefix of every CloudEvents attribute header.
pub const CE_PREFIX: &str = "ce-";
/// `content-type`: the event's `datacontenttype`, the media type of the payload.
pub const CONTENT_TYPE: &str = "content-type";
/// `traceparent`: the W3C trace context of the hop that published the event.
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate`: the W3C vendor trace state that goes with `traceparent`.
pub const TRACESTATE: &str = "tracestate";
/// W3C baggage (`key=value,...`): application context carried with the trace context,
/// kept through redeliveries, dead letters and webhooks.
pub const BAGGAGE: &str = "baggage";
/// JetStream's de-duplication key; the bus derives it from the event's source and id
/// ([`dedup_id`](crate::binary_mode::dedup_id)).
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// nats-server's message-trace destination; the bus writes it only to switch the
/// server's tracing off for a sampled message ([`server_trace`](crate::server_trace)).
pub const NATS_TRACE_DEST: &str = "Nats-Trace-Dest";

/// `bus-publish-id`: one publish call's random id, the same on each of its retries.
///
/// When a retry's PubAck says "duplicate", the stored copy's `bus-publish-id` tells
/// whether the copy is this call's own earlier attempt (then the call stored the event:
/// not a duplicate) or an earlier request's.
pub const PUBLISH_ID: &str = "bus-publish-id";

/// `bus-dlq-reason`: why the group gave up on the event, on one line.
///
/// Dead-letter metadata, added to the original headers.
pub const DLQ_REASON: &str = "bus-dlq-reason";
/// `bus-dlq-group`: the consumer group that gave up on the event.
pub const DLQ_GROUP: &str = "bus-dlq-group";
/// `bus-dlq-attempts`: how many deliveries the group made, in decimal.
pub const DLQ_ATTEMPTS: &str = "bus-dlq-attempts";
/// `bus-dlq-stream`: the stream where the event itself is stored.
pub const DLQ_STREAM: &str = "bus-dlq-stream";
/// `bus-dlq-stream-seq`: the event's sequence in that stream, in decimal.
pub const DLQ_STREAM_SEQ: &str = "bus-dlq-stream-seq";
/// `bus-dlq-subject`: the subject the event was delivered on.
pub const DLQ_SUBJECT: &str = "bus-dlq-subject";
/// `bus-dlq-time`: when the event was dead-lettered, as RFC 3339 text.
pub const DLQ_TIME: &str = "bus-dlq-time";

/// The first value of header `name`, matched without regard to case (NATS header names
/// are case-sensitive on the wire, and plain clients write `Ce-Id` as often as `ce-id`).
pub fn get_ignore_case<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    if let Some(v) = headers.get(name) {
        return Some(v.as_str());
    }
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str())
}
