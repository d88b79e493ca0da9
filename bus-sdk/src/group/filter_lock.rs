//! The lock around a change of the group's filter. Changing it is a read (the
//! consumer's filter) and a write (that filter widened by this member's types), and
//! JetStream has no compare-and-set for consumers: two members widening it at the same
//! moment would each write their own union, the later dropping the earlier's types, and
//! the consumer would pass events of the dropped types by for good (it moves on along
//! the stream). So a member takes this lock first: key `<group>.filter` in the hand-off
//! bucket, made with a create that fails while another member holds it.
//!
//! A holder keeps it for at most [`hold_limit`] (two JetStream requests, each under the
//! connection's request timeout); a holder that died with it is taken over by a waiter
//! that has seen the same revision for longer than that, by its own clock (no clock is
//! compared across hosts), with a compare-and-set on that revision so that one waiter
//! wins.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store};
use bus_core::GroupName;
use tokio::time::Instant;

/// How long a waiter polls between tries.
const POLL: Duration = Duration::from_millis(25);
/// Added to the hold limit before a waiter takes a lock over.
const STALE_MARGIN: Duration = Duration::from_secs(2);

/// The longest a member holds the lock: the read and the write of the consumer, each
/// bounded by the connection's request timeout.
pub(crate) fn hold_limit(request_timeout: Duration) -> Duration {
    request_timeout * 2
}

/// How long a waiter waits for the lock before giving up (a holder that died with it is
/// taken over before that).
pub(crate) fn wait_limit(request_timeout: Duration) -> Duration {
    hold_limit(request_timeout) + STALE_MARGIN * 3
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    #[error("the filter lock of group {group} was not free within {waited:?} (last: {last})")]
    TimedOut {
        group: GroupName,
        waited: Duration,
        last: String,
    },
}

/// A held lock; [`Held::release`] frees it (a lock not released is taken over once
/// stale).
pub(crate) struct Held<'a> {
    store: &'a Store,
    key: String,
    revision: u64,
}

impl Held<'_> {
    /// Frees the lock, unless a waiter took it over meanwhile (then it is theirs).
    pub(crate) async fn release(self) {
        if let Err(e) = self
            .store
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::debug!(key = %self.key, error = %e, "filter lock not released; it goes stale");
        }
    }
}

fn key(group: &GroupName) -> String {
    format!("{group}.filter")
}

/// Takes the filter lock of `group`, waiting for a holder to release it (or to go stale)
/// for at most [`wait_limit`].
pub(crate) async fn acquire<'a>(
    store: &'a Store,
    group: &GroupName,
    request_timeout: Duration,
) -> Result<Held<'a>, LockError> {
    let key = key(group);
    let stale_after = hold_limit(request_timeout) + STALE_MARGIN;
    let limit = wait_limit(request_timeout);
    let start = Instant::now();
    // The holder's revision and when this waiter first saw it.
    let mut seen: Option<(u64, Instant)> = None;
    let mut last = String::from("held by another member");
    loop {
        match store.create(&key, holder()).await {
            Ok(revision) => {
                return Ok(Held {
                    store,
                    key,
                    revision,
                });
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                match store.entry(&key).await {
                    Ok(Some(entry)) if entry.operation == Operation::Put => match seen {
                        Some((revision, since))
                            if revision == entry.revision && since.elapsed() >= stale_after =>
                        {
                            tracing::warn!(%group, "taking over a stale filter lock");
                            if let Ok(revision) = store.update(&key, holder(), entry.revision).await
                            {
                                return Ok(Held {
                                    store,
                                    key,
                                    revision,
                                });
                            }
                        }
                        Some((revision, _)) if revision == entry.revision => {}
                        _ => seen = Some((entry.revision, Instant::now())),
                    },
                    // Released between the create and the read: try again at once.
                    Ok(_) => {}
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        if start.elapsed() >= limit {
            return Err(LockError::TimedOut {
                group: group.clone(),
                waited: start.elapsed(),
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What the lock holds: who took it, for an operator reading the bucket.
fn holder() -> bytes::Bytes {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    bytes::Bytes::from(format!("{host} pid {}", std::process::id()))
}
