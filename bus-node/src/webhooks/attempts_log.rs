//! The attempts log: one record per delivery attempt (event id, attempt number, time,
//! status code or error kind, duration, node), kept in the stream `<events
//! stream>_WEBHOOK_ATTEMPTS` on the subject `_BUS.<events stream>.attempts.<subscription
//! id>`, replicated like the events, for `webhooks.attempts_max_age`, at most
//! `webhooks.attempts_per_subscription` records per subscription and
//! `webhooks.attempts_max_bytes` in all (the oldest go first). Read by subject from any
//! replica (direct get), a page at a time.
//!
//! Writing a record never holds up a delivery: it is sent without waiting for the
//! stream's acknowledgement, so a record made while NATS is unreachable may be missing
//! (the delivery itself is not affected).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};

use crate::config::WebhooksConfig;

/// Most records one page gives.
pub const MAX_PAGE: usize = 100;
/// Records a page gives unless asked for fewer or more.
pub const DEFAULT_PAGE: usize = 50;
/// How long reading one record may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One attempt, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub event_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When it started, RFC 3339.
    pub time: String,
    /// `delivered`, `retry`, `gone`, `refused`.
    pub outcome: String,
    /// The endpoint's status code, when it answered.
    pub status: Option<u16>,
    /// Why there was no answer (`timeout`, `connect`, `blocked_destination`, ...).
    pub error: Option<String>,
    pub duration_ms: f64,
    /// The node that made it.
    pub node: String,
}

/// Where the records go.
#[derive(Debug, Clone)]
pub struct AttemptsLog {
    js: jetstream::Context,
    stream: String,
    prefix: String,
}

/// Why the log could not be read or opened.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the attempts log is not reachable: {0}")]
    Unavailable(String),
}

/// The stream's name for the events stream `events`.
pub fn stream_name(events: &str) -> String {
    format!("{events}_WEBHOOK_ATTEMPTS")
}

impl AttemptsLog {
    /// Creates or updates the log's stream.
    pub async fn open(
        js: &jetstream::Context,
        events: &str,
        replicas: usize,
        config: &WebhooksConfig,
    ) -> Result<Self, LogError> {
        let prefix = format!("_BUS.{events}.attempts");
        let wanted = stream::Config {
            name: stream_name(events),
            description: Some("bus webhook delivery attempts".into()),
            subjects: vec![format!("{prefix}.>")],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: config.attempts_max_age,
            max_bytes: config.attempts_max_bytes,
            max_messages_per_subject: config.attempts_per_subscription,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        };
        js.create_or_update_stream(wanted)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(Self {
            js: js.clone(),
            stream: stream_name(events),
            prefix,
        })
    }

    fn subject(&self, subscription: &str) -> String {
        format!("{}.{subscription}", self.prefix)
    }

    /// Logs `record` for `subscription` (not waiting for the stream's acknowledgement).
    pub async fn record(&self, subscription: &str, record: &AttemptRecord) {
        let Ok(bytes) = serde_json::to_vec(record) else {
            return;
        };
        if let Err(e) = self
            .js
            .publish(self.subject(subscription), bytes.into())
            .await
        {
            tracing::debug!(webhook = %subscription, error = %e, "attempt not logged");
        }
    }

    /// Up to `limit` records of `subscription` stored after sequence `after`, oldest
    /// first, each with its sequence (pass the last one as `after` for the next page).
    pub async fn page(
        &self,
        subscription: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, AttemptRecord)>, LogError> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let subject = self.subject(subscription);
        let mut out = Vec::new();
        let mut next = after.saturating_add(1);
        while out.len() < limit.min(MAX_PAGE) {
            let got = tokio::time::timeout(
                READ_TIMEOUT,
                stream.direct_get_next_for_subject(subject.as_str(), Some(next)),
            )
            .await
            .map_err(|_| LogError::Unavailable("reading the attempts log timed out".into()))?;
            let message = match got {
                Ok(m) => m,
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(LogError::Unavailable(e.to_string())),
            };
            next = message.sequence.saturating_add(1);
            match serde_json::from_slice(&message.payload) {
                Ok(r) => out.push((message.sequence, r)),
                Err(e) => {
                    tracing::warn!(seq = message.sequence, error = %e, "unreadable attempt record")
                }
            }
        }
        Ok(out)
    }
}
