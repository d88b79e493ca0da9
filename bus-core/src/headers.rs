//! Header names of the CloudEvents binary mode on NATS and of the bus's own metadata.

pub const CE_ID: &str = "ce-id";
pub const CE_SOURCE: &str = "ce-source";
pub const CE_TYPE: &str = "ce-type";
pub const CE_SPECVERSION: &str = "ce-specversion";
pub const CE_TIME: &str = "ce-time";
pub const CE_SUBJECT: &str = "ce-subject";
pub const CE_DATASCHEMA: &str = "ce-dataschema";
pub const CE_PARTITIONKEY: &str = "ce-partitionkey";
/// Prefix of every CloudEvents attribute header.
pub const CE_PREFIX: &str = "ce-";
pub const CONTENT_TYPE: &str = "content-type";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// JetStream's de-duplication key; the bus sets it to the event id.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// Dead-letter metadata, added to the original headers.
pub const DLQ_REASON: &str = "bus-dlq-reason";
pub const DLQ_GROUP: &str = "bus-dlq-group";
pub const DLQ_ATTEMPTS: &str = "bus-dlq-attempts";
pub const DLQ_STREAM: &str = "bus-dlq-stream";
pub const DLQ_STREAM_SEQ: &str = "bus-dlq-stream-seq";
pub const DLQ_SUBJECT: &str = "bus-dlq-subject";
pub const DLQ_TIME: &str = "bus-dlq-time";
