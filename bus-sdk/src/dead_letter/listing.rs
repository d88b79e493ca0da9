//! Reading dead letters back (bounded pages with a cursor, [`Bus::dead_letters`]) and
//! sending them back to the group that gave up on them ([`Bus::redrive`],
//! [`Bus::redrive_group`]); each has an example.

use std::str::FromStr;

use async_nats::HeaderMap;
use async_nats::header::HeaderValue;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, DirectGetErrorKind};
use bus_core::headers::{CE_TYPE, NATS_MSG_ID, get_ignore_case};
use bus_core::{EventType, GroupName};

use super::DeadLetter;
use crate::admin::{AdminError, js_err};
use crate::bus::Bus;

/// Most dead letters one listing returns (the `limit` of
/// [`Bus::dead_letters`], example there).
pub const MAX_DEAD_LETTER_PAGE: usize = 1000;
/// A listing looks at most at this many messages per dead letter it may return: messages
/// on the dead-letter subjects that are not dead letters (anything a client published
/// there) are skipped, and a run of them ends the page early instead of the whole stream
/// being read in one call. See [`Bus::dead_letters`].
pub const DEAD_LETTER_SCAN_PER_LETTER: usize = 4;
/// A listing stops once the payloads it holds pass this many bytes (the letter that
/// passes it is kept, so this bound alone never leaves a page empty). See
/// [`Bus::dead_letters`].
pub const MAX_DEAD_LETTER_PAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most dead-letter messages one [`Bus::redrive_group`] call looks at.
pub const MAX_REDRIVE_SCAN: usize = 10_000;

/// One page of a dead-letter listing, from [`Bus::dead_letters`] (example there).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeadLetterPage {
    /// The dead letters, in dead-letter stream order.
    pub letters: Vec<StoredDeadLetter>,
    /// The last dead-letter sequence the listing looked at: the `after` of the next page.
    /// `None` when nothing came after `after`: the listing is complete.
    pub next_after: Option<u64>,
    /// Messages looked at, dead letters or not.
    pub examined: usize,
}

/// One dead letter with its place in the dead-letter stream; see [`Bus::dead_letters`]
/// and [`Bus::redrive`] for examples.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoredDeadLetter {
    /// Its sequence in the dead-letter stream: the `after` of the next page, and what
    /// [`Bus::redrive`] removes.
    pub seq: u64,
    /// The dead letter itself.
    pub letter: DeadLetter,
}

impl Bus {
    /// Dead letters after dead-letter sequence `after` (0: from the start), of one group or
    /// of all: at most `limit` (capped at [`MAX_DEAD_LETTER_PAGE`]), looking at most at
    /// [`DEAD_LETTER_SCAN_PER_LETTER`] messages per letter and stopping once the payloads
    /// pass [`MAX_DEAD_LETTER_PAGE_BYTES`]. Page on with [`DeadLetterPage::next_after`]
    /// until it is `None`; a page may be short, or empty, before the end.
    ///
    /// ```no_run
    /// # async fn f(bus: bus_sdk::Bus) -> Result<(), Box<dyn std::error::Error>> {
    /// let billing = bus_sdk::GroupName::new("billing")?;
    /// let mut after = 0;
    /// loop {
    ///     let page = bus.dead_letters(Some(&billing), after, 100).await?;
    ///     for stored in &page.letters {
    ///         let letter = &stored.letter;
    ///         println!("#{} {:?}: {}", stored.seq, letter.event_id, letter.reason);
    ///     }
    ///     match page.next_after {
    ///         Some(next) => after = next,
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn dead_letters(
        &self,
        group: Option<&GroupName>,
        after: u64,
        limit: usize,
    ) -> Result<DeadLetterPage, AdminError> {
        let subject = match group {
            Some(g) => self.subjects().dead_letter(g),
            None => self.subjects().all_dead_letters(),
        };
        let stream = self
            .jetstream()
            .get_stream(&self.config().streams.dlq_name)
            .await
            .map_err(js_err)?;
        let limit = limit.clamp(1, MAX_DEAD_LETTER_PAGE);
        let mut page = DeadLetterPage::default();
        let mut bytes = 0;
        let mut next = after.saturating_add(1);
        while page.letters.len() < limit
            && page.examined < limit * DEAD_LETTER_SCAN_PER_LETTER
            && bytes < MAX_DEAD_LETTER_PAGE_BYTES
        {
            let message = match stream
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(js_err(e)),
            };
            next = message.sequence.saturating_add(1);
            page.examined += 1;
            page.next_after = Some(message.sequence);
            if let Some(letter) = DeadLetter::parse(&message.headers, message.payload.clone()) {
                bytes += letter.payload.len();
                page.letters.push(StoredDeadLetter {
                    seq: message.sequence,
                    letter,
                });
            }
        }
        Ok(page)
    }

    /// Sends dead letter `seq` back to the group that gave up on it (and to no other
    /// group), then removes it from the dead letters. Safe to repeat: the redriven event
    /// is stored once.
    ///
    /// ```no_run
    /// # use bus_sdk::{Bus, admin::AdminError, dead_letter::DeadLetterPage};
    /// # async fn f(bus: Bus, page: DeadLetterPage) -> Result<(), AdminError> {
    /// for stored in page.letters.iter().filter(|s| s.letter.reason.contains("timed out")) {
    ///     match bus.redrive(stored).await {
    ///         Ok(()) => {}
    ///         Err(AdminError::NotRedrivable { seq, reason }) => eprintln!("#{seq}: {reason}"),
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn redrive(&self, letter: &StoredDeadLetter) -> Result<(), AdminError> {
        let not = |reason: &str| AdminError::NotRedrivable {
            seq: letter.seq,
            reason: reason.to_owned(),
        };
        let event_type = get_ignore_case(&letter.letter.headers, CE_TYPE)
            .and_then(|t| EventType::new(t).ok())
            .ok_or_else(|| not("it has no valid ce-type header"))?;
        let mut headers = HeaderMap::new();
        for (name, values) in letter.letter.headers.iter() {
            let n = name.to_string();
            if n.starts_with("bus-dlq-") || n == NATS_MSG_ID {
                continue;
            }
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
        let dedup = format!("redrive-{}-{}", self.config().streams.dlq_name, letter.seq);
        let value = HeaderValue::from_str(&dedup).map_err(|_| not("bad id"))?;
        headers.insert(NATS_MSG_ID, value);
        let subject = self.subjects().redrive(&letter.letter.group, &event_type);
        self.publisher()
            .publish_raw(subject, headers, letter.letter.payload.clone(), &dedup)
            .await?;
        let stream = self
            .jetstream()
            .get_stream(&self.config().streams.dlq_name)
            .await
            .map_err(js_err)?;
        match stream.delete_message(letter.seq).await {
            Ok(_) => Ok(()),
            // Already gone: an earlier redrive of the same letter got this far.
            Err(e)
                if matches!(e.kind(), DeleteMessageErrorKind::JetStream(ref err)
                    if err.error_code() == ErrorCode::NO_MESSAGE_FOUND) =>
            {
                Ok(())
            }
            Err(e) => Err(js_err(e)),
        }
    }

    /// Redrives the dead letters of `group` whose event id is in `ids` (all of them when
    /// `ids` is `None`); returns how many were redriven. One call looks at no more than
    /// [`MAX_REDRIVE_SCAN`] dead-letter messages: call it again for the rest.
    ///
    /// ```no_run
    /// # async fn f(bus: bus_sdk::Bus) -> Result<(), Box<dyn std::error::Error>> {
    /// let billing = bus_sdk::GroupName::new("billing")?;
    /// let ids = ["order-42-created".to_owned()];
    /// let redriven = bus.redrive_group(&billing, Some(ids.as_slice())).await?;
    /// # Ok(()) }
    /// ```
    pub async fn redrive_group(
        &self,
        group: &GroupName,
        ids: Option<&[String]>,
    ) -> Result<usize, AdminError> {
        let mut after = 0;
        let mut scanned = 0;
        let mut redriven = 0;
        while scanned < MAX_REDRIVE_SCAN {
            // A page looks at most at DEAD_LETTER_SCAN_PER_LETTER messages per letter: size
            // it so that the call stays within MAX_REDRIVE_SCAN.
            let room = (MAX_REDRIVE_SCAN - scanned) / DEAD_LETTER_SCAN_PER_LETTER;
            let limit = room.clamp(1, MAX_DEAD_LETTER_PAGE);
            let page = self.dead_letters(Some(group), after, limit).await?;
            let Some(next) = page.next_after else { break };
            after = next;
            scanned += page.examined;
            for letter in &page.letters {
                let wanted = match (ids, &letter.letter.event_id) {
                    (None, _) => true,
                    (Some(ids), Some(id)) => ids.contains(id),
                    (Some(_), None) => false,
                };
                if wanted {
                    self.redrive(letter).await?;
                    redriven += 1;
                }
            }
        }
        Ok(redriven)
    }
}
