//! Operating the bus: consumer groups and their backlog, dead letters, and redrive. Used
//! by `bus-node`'s admin endpoints and available to services.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::header::HeaderValue;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, DirectGetErrorKind};
use bus_core::EventType;
use bus_core::headers::{CE_TYPE, NATS_MSG_ID, get_ignore_case};
use futures::{StreamExt, TryStreamExt};

use crate::bus::Bus;
use crate::dead_letter::DeadLetter;
use crate::error::PublishError;
use crate::group::check_name;
use crate::group::presence::{self, Announcement, PRESENCE_INTERVAL};

/// Most dead letters one listing returns.
pub const MAX_DEAD_LETTER_PAGE: usize = 1000;
/// A listing looks at most at this many messages per dead letter it may return: messages
/// on the dead-letter subjects that are not dead letters (anything a client published
/// there) are skipped, and a run of them ends the page early instead of the whole stream
/// being read in one call.
pub const DEAD_LETTER_SCAN_PER_LETTER: usize = 4;
/// A listing stops once the payloads it holds pass this many bytes (the letter that
/// passes it is kept, so this bound alone never leaves a page empty).
pub const MAX_DEAD_LETTER_PAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most dead-letter messages one redrive call looks at.
pub const MAX_REDRIVE_SCAN: usize = 10_000;

/// An admin operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The group name is not 1 to 64 ASCII letters, digits, `-` and `_`; holds the name.
    #[error("invalid group name {0:?}")]
    InvalidGroup(String),
    /// A JetStream request failed (stream missing, no permission, timeout); holds its
    /// message.
    #[error("JetStream request failed: {0}")]
    JetStream(String),
    /// A dead letter cannot be sent back, for example because it has no valid `ce-type`
    /// header.
    #[error("dead letter {seq} cannot be redriven: {reason}")]
    NotRedrivable {
        /// The dead letter's sequence in the dead-letter stream.
        seq: u64,
        /// Why it cannot be redriven.
        reason: String,
    },
    /// Storing the redriven event failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

fn js_err(e: impl std::fmt::Display) -> AdminError {
    AdminError::JetStream(e.to_string())
}

/// A consumer group as JetStream sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupInfo {
    /// The group's name, which is also its durable consumer's name.
    pub name: String,
    /// The subject filters of the group's consumer.
    pub filters: Vec<String>,
    /// Events not yet delivered to any member.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub in_flight: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
    /// Pull requests waiting: roughly, idle member slots.
    pub waiting: u64,
}

/// One page of a dead-letter listing.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterPage {
    /// The dead letters, in dead-letter stream order.
    pub letters: Vec<StoredDeadLetter>,
    /// The last dead-letter sequence the listing looked at: the `after` of the next page.
    /// `None` when nothing came after `after`: the listing is complete.
    pub next_after: Option<u64>,
    /// Messages looked at, dead letters or not.
    pub examined: usize,
}

/// One dead letter with its place in the dead-letter stream.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    /// Its sequence in the dead-letter stream: the `after` of the next page, and what
    /// [`Bus::redrive`] removes.
    pub seq: u64,
    /// The dead letter itself.
    pub letter: DeadLetter,
}

impl Bus {
    /// Every consumer group on the events stream, with its backlog.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, AdminError> {
        let stream = self
            .jetstream()
            .get_stream(&self.config().streams.events_name)
            .await
            .map_err(js_err)?;
        let infos: Vec<_> = stream.consumers().try_collect().await.map_err(js_err)?;
        let mut groups: Vec<GroupInfo> = infos
            .into_iter()
            .filter(|i| i.config.durable_name.is_some())
            .map(|i| {
                let mut filters = i.config.filter_subjects.clone();
                if !i.config.filter_subject.is_empty() {
                    filters.push(i.config.filter_subject.clone());
                }
                GroupInfo {
                    name: i.name,
                    filters,
                    pending: i.num_pending,
                    in_flight: i.num_ack_pending as u64,
                    redelivered: i.num_redelivered as u64,
                    waiting: i.num_waiting as u64,
                }
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(groups)
    }

    /// Dead letters after dead-letter sequence `after` (0: from the start), of one group or
    /// of all: at most `limit` (capped at [`MAX_DEAD_LETTER_PAGE`]), looking at most at
    /// [`DEAD_LETTER_SCAN_PER_LETTER`] messages per letter and stopping once the payloads
    /// pass [`MAX_DEAD_LETTER_PAGE_BYTES`]. Page on with [`DeadLetterPage::next_after`]
    /// until it is `None`; a page may be short, or empty, before the end.
    pub async fn dead_letters(
        &self,
        group: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<DeadLetterPage, AdminError> {
        let subject = match group {
            Some(g) => {
                check_name(g).map_err(|_| AdminError::InvalidGroup(g.to_owned()))?;
                self.subjects().dead_letter(g)
            }
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
    /// `ids` is `None`); returns how many were redriven.
    pub async fn redrive_group(
        &self,
        group: &str,
        ids: Option<&[String]>,
    ) -> Result<usize, AdminError> {
        let mut after = 0;
        let mut scanned = 0;
        let mut redriven = 0;
        while scanned < MAX_REDRIVE_SCAN {
            let page = self
                .dead_letters(Some(group), after, MAX_DEAD_LETTER_PAGE)
                .await?;
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

/// Most members a [`PresenceTracker`] remembers; past it the stalest is forgotten.
pub const MAX_TRACKED_MEMBERS: usize = 10_000;
/// Largest announcement a tracker reads; larger ones are ignored (anyone who can publish
/// on the presence subjects could otherwise park megabytes per entry).
pub const MAX_ANNOUNCEMENT_BYTES: usize = 1024;
/// A member not heard from for this long is no longer listed.
pub const MEMBER_STALE_AFTER: Duration = Duration::from_secs(3 * PRESENCE_INTERVAL.as_secs());

/// A group member recently heard from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberSeen {
    /// The member's id, new each time a member starts.
    pub member: String,
    /// Host name of the member's machine (empty when unknown).
    pub host: String,
    /// Process id of the member.
    pub pid: u32,
    /// Seconds since its last announcement.
    pub last_seen_secs_ago: u64,
}

type Seen = Arc<Mutex<HashMap<(String, String), (Announcement, Instant)>>>;

/// Listens to member announcements; see [`Bus::track_presence`]. Stops when dropped.
#[derive(Debug)]
pub struct PresenceTracker {
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl PresenceTracker {
    /// Members of `group` heard from within [`MEMBER_STALE_AFTER`], by member id.
    pub fn members(&self, group: &str) -> Vec<MemberSeen> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<MemberSeen> = seen
            .iter()
            .filter(|((g, _), (_, at))| g == group && at.elapsed() < MEMBER_STALE_AFTER)
            .map(|(_, (a, at))| MemberSeen {
                member: a.member.clone(),
                host: a.host.clone(),
                pid: a.pid,
                last_seen_secs_ago: at.elapsed().as_secs(),
            })
            .collect();
        out.sort_by(|a, b| a.member.cmp(&b.member));
        out
    }
}

impl Drop for PresenceTracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bus {
    /// Starts listening to group members' announcements.
    pub async fn track_presence(&self) -> Result<PresenceTracker, AdminError> {
        let mut sub = self
            .client()
            .subscribe(presence::all_subjects(self))
            .await
            .map_err(js_err)?;
        let seen: Seen = Arc::default();
        let map = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                if message.payload.len() > MAX_ANNOUNCEMENT_BYTES {
                    continue;
                }
                let Ok(a) = serde_json::from_slice::<Announcement>(&message.payload) else {
                    continue;
                };
                let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
                m.retain(|_, (_, at)| at.elapsed() < MEMBER_STALE_AFTER);
                if m.len() >= MAX_TRACKED_MEMBERS {
                    let oldest = m
                        .iter()
                        .min_by_key(|(_, (_, at))| *at)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        m.remove(&k);
                    }
                }
                m.insert((a.group.clone(), a.member.clone()), (a, Instant::now()));
            }
        });
        Ok(PresenceTracker { seen, task })
    }
}
