//! A delivery as every kind of subscription reads it: the message, its headers taken
//! out once (shared by the handler's `EventMeta`, the span and a dead letter, never
//! copied) and what JetStream says about it.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::Message;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::delivery_info::DeliveryInfo;

/// One delivery of one stored event.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The message, without its headers.
    pub message: Message,
    pub headers: Option<Arc<HeaderMap>>,
    pub stream_seq: u64,
    /// 1 on the first delivery, as the handler sees it (a group does not count the
    /// deliveries its members handed back for lack of a handler).
    pub attempt: u32,
    /// Deliveries that were no attempts (groups only): handed back for lack of a
    /// handler, or returned unstarted by a member that stopped or re-opened.
    pub handoffs: u32,
    /// When JetStream stored the event.
    pub published: OffsetDateTime,
    /// When JetStream last heard of this delivery (its arrival, or the last in-progress
    /// ack while it waited for a handler slot): its ack deadline runs from here.
    pub last_heard: Instant,
}

impl Delivery {
    /// Reads a delivery; fails for a message without JetStream metadata (one that cannot
    /// be settled).
    pub(crate) fn read(
        mut message: Message,
        last_heard: Instant,
    ) -> Result<Self, async_nats::Error> {
        let (stream_seq, attempt, published) = {
            let info = DeliveryInfo::of(&message)?;
            (
                info.stream_seq,
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                info.published,
            )
        };
        let headers = message.message.headers.take().map(Arc::new);
        Ok(Self {
            message,
            headers,
            stream_seq,
            attempt,
            handoffs: 0,
            published,
            last_heard,
        })
    }

    /// The stream the event is stored in (read again from the reply subject: only a dead
    /// letter needs it, so no delivery carries a copy).
    pub(crate) fn stream(&self) -> String {
        DeliveryInfo::of(&self.message)
            .map(|i| i.stream.to_owned())
            .unwrap_or_default()
    }
}
