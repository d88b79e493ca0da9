//! Dead letters: events a group gave up on, kept in the dead-letter stream with their
//! payload and headers as received plus `bus-dlq-*` headers (reason, group, attempts,
//! where the event was stored). Stored here and read back here; listed and redriven in
//! [`listing`].
//!
//! ```no_run
//! # async fn f(bus: bus_sdk::Bus) -> Result<(), Box<dyn std::error::Error>> {
//! // The handler is fixed: see what billing gave up on, then send all of it back.
//! let billing = bus_sdk::GroupName::new("billing")?;
//! let page = bus.dead_letters(Some(&billing), 0, 10).await?;
//! for stored in &page.letters {
//!     println!("#{}: {}", stored.seq, stored.letter.reason);
//! }
//! let redriven = bus.redrive_group(&billing, None).await?;
//! # Ok(()) }
//! ```

pub mod listing;

pub use listing::{
    DEAD_LETTER_SCAN_PER_LETTER, DeadLetterPage, MAX_DEAD_LETTER_PAGE, MAX_DEAD_LETTER_PAGE_BYTES,
    MAX_REDRIVE_SCAN, StoredDeadLetter,
};

use async_nats::HeaderMap;
use async_nats::header::HeaderValue;
use bus_core::GroupName;
use bus_core::headers::*;
use bytes::Bytes;
use std::str::FromStr;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::PublishError;
use crate::publish::Publisher;

/// A dead letter as read back from the dead-letter stream, listed by
/// [`Bus::dead_letters`](crate::Bus::dead_letters) (example there).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The consumer group that gave up on the event.
    pub group: GroupName,
    /// Why it gave up: the handler's error, why the event could not be decoded, or that
    /// deliveries were never settled.
    pub reason: String,
    /// Deliveries made before the group gave up.
    pub attempts: u32,
    /// Stream and sequence where the event itself is stored.
    pub stream: String,
    /// The event's sequence in that stream.
    pub stream_seq: u64,
    /// The subject the event was delivered on.
    pub subject: String,
    /// The event id, if the event had one.
    pub event_id: Option<String>,
    /// All headers: the original ones and the `bus-dlq-*` ones.
    pub headers: HeaderMap,
    /// The payload as received.
    pub payload: Bytes,
}

impl DeadLetter {
    /// Reads a message of the dead-letter stream; `None` if it lacks the dead-letter headers.
    ///
    /// ```
    /// use bus_sdk::DeadLetter;
    /// use bus_sdk::async_nats::HeaderMap;
    /// use bus_sdk::bus_core::headers::*;
    /// let mut headers = HeaderMap::new();
    /// for (name, value) in [
    ///     (CE_ID, "order-42-created"),
    ///     (DLQ_GROUP, "billing"),
    ///     (DLQ_REASON, "card declined"),
    ///     (DLQ_ATTEMPTS, "5"),
    ///     (DLQ_STREAM, "BUS_EVENTS"),
    ///     (DLQ_STREAM_SEQ, "17"),
    ///     (DLQ_SUBJECT, "bus.evt.shop.order.created"),
    /// ] {
    ///     headers.insert(name, value);
    /// }
    /// let letter = DeadLetter::parse(&headers, r#"{"order_id":42}"#.into()).ok_or("no")?;
    /// assert_eq!((letter.group.as_str(), letter.attempts), ("billing", 5));
    /// assert_eq!(letter.event_id.as_deref(), Some("order-42-created"));
    /// assert!(DeadLetter::parse(&HeaderMap::new(), letter.payload).is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parse(headers: &HeaderMap, payload: Bytes) -> Option<Self> {
        let get = |name: &str| get_ignore_case(headers, name).map(str::to_owned);
        Some(Self {
            group: GroupName::new(get(DLQ_GROUP)?).ok()?,
            reason: get(DLQ_REASON)?,
            attempts: get(DLQ_ATTEMPTS)?.parse().ok()?,
            stream: get(DLQ_STREAM)?,
            stream_seq: get(DLQ_STREAM_SEQ)?.parse().ok()?,
            subject: get(DLQ_SUBJECT)?,
            event_id: get(CE_ID),
            headers: headers.clone(),
            payload,
        })
    }
}

/// Where a delivery came from, for the dead letter's headers.
pub(crate) struct Origin<'a> {
    pub group: &'a GroupName,
    pub stream: &'a str,
    pub stream_seq: u64,
    pub subject: &'a str,
    pub attempts: u32,
}

/// Stores a dead letter; returns once the dead-letter stream has it.
pub(crate) async fn store(
    publisher: &Publisher,
    original_headers: Option<&HeaderMap>,
    payload: Bytes,
    origin: &Origin<'_>,
    reason: &str,
) -> Result<(), PublishError> {
    let mut headers = original_headers.cloned().unwrap_or_default();
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    // One dead letter per stored event and group, however often this is retried.
    let dedup_id = format!(
        "dlq-{}-{}-{}",
        origin.group, origin.stream, origin.stream_seq
    );
    let fields = [
        (NATS_MSG_ID, dedup_id.clone()),
        (DLQ_REASON, sanitize(reason)),
        (DLQ_GROUP, origin.group.to_string()),
        (DLQ_ATTEMPTS, origin.attempts.to_string()),
        (DLQ_STREAM, origin.stream.to_owned()),
        (DLQ_STREAM_SEQ, origin.stream_seq.to_string()),
        (DLQ_SUBJECT, origin.subject.to_owned()),
        (DLQ_TIME, now),
    ];
    for (name, value) in fields {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    let subject = publisher.subjects.dead_letter(origin.group);
    publisher
        .publish_raw(subject, headers, payload, &dedup_id)
        .await
        .map(|_| ())
}

/// A header-safe, bounded reason.
fn sanitize(reason: &str) -> String {
    const MAX: usize = 1024;
    let mut s: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
