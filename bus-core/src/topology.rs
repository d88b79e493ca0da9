//! The JetStream streams the bus needs: events, dead letters, and the hand-off bucket
//! (a key-value bucket where group members note the events they handed back for lack of
//! a handler). `ensure` creates them or brings them to the configured shape; it is
//! idempotent, and several processes may run it at the same time (the losers of a create
//! race read and compare instead).

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, kv};

use crate::retry::{backoff_delay, is_transient_code};

use crate::config::BusConfig;

/// How long `ensure` keeps trying through elections and timeouts.
pub const DEFAULT_ENSURE_DEADLINE: Duration = Duration::from_secs(30);
/// How long a hand-off record is kept (it matters only while its event is handed from
/// member to member).
pub const HANDOFF_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The hand-off bucket of the events stream `events_name`: `<events_name>_HANDOFFS`.
pub fn handoff_bucket(events_name: &str) -> String {
    format!("{events_name}_HANDOFFS")
}

/// The ordered groups' stream of the events stream `events_name`: `<events_name>_ORDERED`.
pub fn ordered_stream(events_name: &str) -> String {
    format!("{events_name}_ORDERED")
}

/// How long the ordered stream recognises an event copied into a partition again (the
/// copy a new sequencer makes of what a dead one had already copied): longer than any
/// sequencer failover (its ack deadline and pin timeout, seconds).
pub const ORDERED_DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// The ordered groups' stream for `config`: every ordered group's partitions
/// (`<subjects.ordered_prefix>.<group>.<partition>`), a work queue (an event leaves it
/// once its group has settled it), file storage, the events stream's replicas, age and
/// size limits.
pub fn ordered_stream_config(config: &BusConfig) -> Config {
    let s = &config.streams;
    let max_age = s.max_age;
    Config {
        name: ordered_stream(&s.events_name),
        description: Some("bus ordered groups: events by group and partition".into()),
        subjects: vec![config.subjects().all_ordered()],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        num_replicas: s.replicas,
        max_age,
        max_bytes: s.max_bytes,
        max_consumers: s.max_consumers,
        discard: DiscardPolicy::New,
        // A partition's oldest event read from any replica (`GET /v1/groups`, metrics).
        allow_direct: true,
        // Within the age limit, as JetStream requires.
        duplicate_window: if max_age.is_zero() {
            ORDERED_DUPLICATE_WINDOW
        } else {
            ORDERED_DUPLICATE_WINDOW.min(max_age)
        },
        ..Default::default()
    }
}

/// Creates the ordered groups' stream, or brings it to `config`'s shape, retrying
/// transient failures until `deadline` (the first ordered group to start does it).
pub async fn ensure_ordered_stream(
    js: &jetstream::Context,
    config: &BusConfig,
    deadline: Duration,
) -> Result<(), TopologyError> {
    ensure_stream(js, &ordered_stream_config(config), deadline).await
}

/// Why the streams could not be put in place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// A stream exists with a setting JetStream cannot change in place (storage,
    /// retention).
    #[error(
        "stream {stream}: {field} is {actual} on the server but {wanted} in the configuration and cannot be changed in place"
    )]
    Conflict {
        /// The stream's name.
        stream: String,
        /// The setting that differs.
        field: &'static str,
        /// Its value on the server.
        actual: String,
        /// Its value in the configuration.
        wanted: String,
    },
    /// JetStream refused to read, create or update a stream, and retrying cannot help
    /// (permissions, account limits, an invalid configuration).
    #[error("stream {stream}: JetStream refused: {source}")]
    Refused {
        /// The stream's name.
        stream: String,
        /// JetStream's answer.
        source: async_nats::Error,
    },
    /// The stream was still not in place when the deadline passed (JetStream unreachable,
    /// no quorum).
    #[error("stream {stream}: not in place after {waited:?}: {last}")]
    Unavailable {
        /// The stream's name.
        stream: String,
        /// How long `ensure` kept trying.
        waited: Duration,
        /// The last transient error seen.
        last: String,
    },
}

/// The desired stream configurations.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The events stream: every event and every redriven dead letter.
    pub events: Config,
    /// The dead-letter stream.
    pub dead_letters: Config,
    /// The hand-off bucket (see [`handoff_bucket`]).
    pub handoffs: kv::Config,
}

impl Topology {
    /// The streams `config` asks for: file storage, and a full stream refuses new
    /// messages rather than dropping stored ones.
    pub fn from_config(config: &BusConfig) -> Self {
        let s = &config.streams;
        let subjects = config.subjects();
        let events = Config {
            name: s.events_name.clone(),
            description: Some("bus events".into()),
            subjects: vec![subjects.all_events(), subjects.all_redrives()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: s.replicas,
            max_age: s.max_age,
            max_bytes: s.max_bytes,
            max_consumers: s.max_consumers,
            // Refuse new events when full rather than drop stored ones.
            discard: DiscardPolicy::New,
            duplicate_window: s.duplicate_window,
            // Reads by sequence or subject from any replica (dead-letter listing, replay).
            allow_direct: true,
            ..Default::default()
        };
        let dead_letters = Config {
            name: s.dlq_name.clone(),
            description: Some("bus dead letters".into()),
            subjects: vec![subjects.all_dead_letters()],
            max_age: s.dlq_max_age,
            duplicate_window: s.duplicate_window,
            ..events.clone()
        };
        let handoffs = kv::Config {
            bucket: handoff_bucket(&s.events_name),
            description: "bus group hand-offs: events handed back for lack of a handler".into(),
            history: 1,
            max_age: HANDOFF_MAX_AGE,
            storage: StorageType::File,
            num_replicas: s.replicas,
            ..Default::default()
        };
        Self {
            events,
            dead_letters,
            handoffs,
        }
    }

    /// Creates or updates both streams, retrying transient failures until `deadline`.
    pub async fn ensure(
        &self,
        js: &jetstream::Context,
        deadline: Duration,
    ) -> Result<(), TopologyError> {
        ensure_stream(js, &self.events, deadline).await?;
        ensure_stream(js, &self.dead_letters, deadline).await?;
        ensure_bucket(js, &self.handoffs, deadline).await
    }
}

/// Creates the bucket, or updates it when its replicas or age limit differ, retrying
/// until `deadline`.
async fn ensure_bucket(
    js: &jetstream::Context,
    wanted: &kv::Config,
    deadline: Duration,
) -> Result<(), TopologyError> {
    let stream = format!("KV_{}", wanted.bucket);
    let start = tokio::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        let current = match js.get_stream(&stream).await {
            Ok(s) => Some(s.cached_info().config.clone()),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(err)
                    if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    None
                }
                _ => {
                    if start.elapsed() >= deadline {
                        return Err(TopologyError::Unavailable {
                            stream,
                            waited: start.elapsed(),
                            last: e.to_string(),
                        });
                    }
                    tokio::time::sleep(backoff_delay(attempt)).await;
                    attempt += 1;
                    continue;
                }
            },
        };
        if current
            .is_some_and(|c| c.num_replicas == wanted.num_replicas && c.max_age == wanted.max_age)
        {
            return Ok(());
        }
        match js.create_or_update_key_value(wanted.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() < deadline => {
                tracing::debug!(bucket = %wanted.bucket, error = %e, "hand-off bucket not in place yet; retrying");
                tokio::time::sleep(backoff_delay(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                return Err(TopologyError::Refused {
                    stream,
                    source: e.into(),
                });
            }
        }
    }
}

enum Step {
    Done,
    Retry(String),
}

async fn ensure_stream(
    js: &jetstream::Context,
    wanted: &Config,
    deadline: Duration,
) -> Result<(), TopologyError> {
    let start = tokio::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        let last = match step(js, wanted).await? {
            Step::Done => return Ok(()),
            Step::Retry(why) => why,
        };
        if start.elapsed() >= deadline {
            return Err(TopologyError::Unavailable {
                stream: wanted.name.clone(),
                waited: start.elapsed(),
                last,
            });
        }
        tracing::debug!(stream = %wanted.name, %last, "topology not in place yet; retrying");
        tokio::time::sleep(backoff_delay(attempt)).await;
        attempt += 1;
    }
}

async fn step(js: &jetstream::Context, wanted: &Config) -> Result<Step, TopologyError> {
    let refused = |source: async_nats::Error| TopologyError::Refused {
        stream: wanted.name.clone(),
        source,
    };
    match js.get_stream(&wanted.name).await {
        Ok(stream) => {
            let actual = &stream.cached_info().config;
            if let Some(conflict) = immutable_difference(actual, wanted) {
                return Err(conflict);
            }
            if needs_update(actual, wanted) {
                tracing::info!(stream = %wanted.name, "updating stream configuration");
                return match js.update_stream(wanted).await {
                    Ok(_) => Ok(Step::Done),
                    Err(e) if transient_create(e.kind()) => Ok(Step::Retry(e.to_string())),
                    Err(e) => Err(refused(e.into())),
                };
            }
            Ok(Step::Done)
        }
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                match js.create_stream(wanted.clone()).await {
                    Ok(_) => Ok(Step::Done),
                    // Someone else created it first: read and compare next time round.
                    Err(e) if transient_create(e.kind()) => Ok(Step::Retry(e.to_string())),
                    Err(e) => Err(refused(e.into())),
                }
            }
            GetStreamErrorKind::Request => Ok(Step::Retry(e.to_string())),
            GetStreamErrorKind::JetStream(err) if is_transient_code(err.error_code()) => {
                Ok(Step::Retry(e.to_string()))
            }
            _ => Err(refused(e.into())),
        },
    }
}

fn transient_create(kind: CreateStreamErrorKind) -> bool {
    match kind {
        CreateStreamErrorKind::TimedOut
        | CreateStreamErrorKind::JetStreamUnavailable
        | CreateStreamErrorKind::Response => true,
        CreateStreamErrorKind::JetStream(err) => {
            err.error_code() == ErrorCode::STREAM_NAME_EXIST || is_transient_code(err.error_code())
        }
        _ => false,
    }
}

fn immutable_difference(actual: &Config, wanted: &Config) -> Option<TopologyError> {
    let conflict = |field, actual_value: String, wanted_value: String| TopologyError::Conflict {
        stream: wanted.name.clone(),
        field,
        actual: actual_value,
        wanted: wanted_value,
    };
    if actual.storage != wanted.storage {
        return Some(conflict(
            "storage",
            format!("{:?}", actual.storage),
            format!("{:?}", wanted.storage),
        ));
    }
    if actual.retention != wanted.retention {
        return Some(conflict(
            "retention",
            format!("{:?}", actual.retention),
            format!("{:?}", wanted.retention),
        ));
    }
    None
}

fn needs_update(actual: &Config, wanted: &Config) -> bool {
    actual.subjects != wanted.subjects
        || actual.num_replicas != wanted.num_replicas
        || actual.max_age != wanted.max_age
        || actual.max_bytes != wanted.max_bytes
        || actual.max_consumers != wanted.max_consumers
        || actual.discard != wanted.discard
        || actual.duplicate_window != wanted.duplicate_window
        || actual.allow_direct != wanted.allow_direct
}
