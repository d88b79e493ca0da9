//! Configuration shared by the SDK and the node: how to reach NATS, the streams, and the
//! subject prefixes. Every section has serde defaults, refuses unknown keys, and is checked
//! by `validate`, whose errors name the key (`nats.servers[1]`) and the reason.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret_file::{at_most_one, read_text_file, value_or_file};
use crate::subjects::{
    DEFAULT_DLQ_PREFIX, DEFAULT_EVENT_PREFIX, DEFAULT_ORDERED_PREFIX, DEFAULT_REDRIVE_PREFIX,
    Subjects,
};

/// The NATS server of `nats.servers` when none is configured: a local one.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// How long one connection attempt to a NATS server may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one JetStream request or publish waits for its answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a publish keeps retrying through leader elections and reconnects.
pub const DEFAULT_PUBLISH_DEADLINE: Duration = Duration::from_secs(30);
/// Name of the JetStream stream that stores the events.
pub const DEFAULT_EVENTS_STREAM: &str = "BUS_EVENTS";
/// Name of the JetStream stream that stores the dead letters.
pub const DEFAULT_DLQ_STREAM: &str = "BUS_DLQ";
/// Copies of every stream: one, as on a single server.
pub const DEFAULT_REPLICAS: usize = 1;
/// How long the events stream keeps an event.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the dead-letter stream keeps a dead letter.
pub const DEFAULT_DLQ_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Window in which a repeated event id is recognised and not stored again.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Size limit of each stream in bytes.
pub const DEFAULT_MAX_BYTES: i64 = 1024 * 1024 * 1024;
/// Default [`StreamsConfig::max_consumers`]. Set explicitly because nats-server 2.15
/// gives a stream that sets none a limit of 1,000 consumers, and every group, webhook
/// subscription, broadcast instance, node's push hub and replay is one.
pub const DEFAULT_MAX_CONSUMERS: i32 = 100_000;

/// A configuration value that is wrong: `key` is its dotted path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the wrong value (`nats.servers[1]`).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// An error about `key` (its dotted path) for `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A secret string: never printed by `Debug`, serialized as `"<redacted>"`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret in clear text, to hand to the NATS client; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Everything a bus client needs: `nats`, `streams` and `subjects`. Every key has a
/// default, so a file names only what differs; unknown keys are refused.
///
/// ```
/// use bus_core::BusConfig;
/// let config: BusConfig = serde_json::from_str(
///     r#"{
///         "nats": {
///             "servers": ["nats://nats-1:4222", "nats://nats-2:4222"],
///             "publish_deadline": "10s"
///         },
///         "streams": { "replicas": 3 }
///     }"#,
/// )?;
/// config.validate()?;
/// assert_eq!(config.streams.events_name, bus_core::config::DEFAULT_EVENTS_STREAM);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `nats.*`: how to reach NATS.
    pub nats: NatsConfig,
    /// `streams.*`: the events stream and the dead-letter stream.
    pub streams: StreamsConfig,
    /// `subjects.*`: the subject prefixes.
    pub subjects: SubjectsConfig,
}

impl BusConfig {
    /// A configuration with defaults that talks to `servers`.
    ///
    /// ```
    /// let servers = ["nats://nats-1:4222", "nats://nats-2:4222"];
    /// let config = bus_core::BusConfig::with_servers(servers);
    /// assert_eq!(config.nats.servers.len(), 2);
    /// ```
    pub fn with_servers<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        let mut c = Self::default();
        c.nats.servers = servers.into_iter().map(Into::into).collect();
        c
    }

    /// Checks every section; the error names the first wrong key.
    ///
    /// ```
    /// let mut config = bus_core::BusConfig::default();
    /// config.streams.replicas = 2;
    /// assert_eq!(config.validate().unwrap_err().key, "streams.replicas");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.streams.validate()?;
        self.subjects.validate()
    }

    /// The subjects of the configured prefixes.
    ///
    /// ```
    /// # use bus_core::{BusConfig, EventType};
    /// let mut config = BusConfig::default();
    /// config.subjects.prefix = "shop.evt".to_owned();
    /// let subject = config.subjects().event(&EventType::new("order.created")?);
    /// assert_eq!(subject, "shop.evt.order.created");
    /// # Ok::<(), bus_core::EventTypeError>(())
    /// ```
    pub fn subjects(&self) -> Subjects {
        Subjects::new(
            &self.subjects.prefix,
            &self.subjects.dlq_prefix,
            &self.subjects.redrive_prefix,
        )
        .with_ordered_prefix(&self.subjects.ordered_prefix)
    }
}

/// `nats.*`: servers, authentication, TLS and timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats.servers`: URLs of the NATS servers (default [`DEFAULT_NATS_URL`]).
    pub servers: Vec<String>,
    /// Connection name shown by the server's monitoring.
    pub name: Option<String>,
    /// `nats.credentials_file`: a `.creds` file (user JWT and NKey seed) to authenticate with.
    pub credentials_file: Option<PathBuf>,
    /// NKey seed (`SU...`).
    pub nkey: Option<Secret>,
    /// `nats.nkey_file`: a file holding `nats.nkey` ([`crate::secret_file`]).
    pub nkey_file: Option<PathBuf>,
    /// `nats.user`: user name; set together with `nats.password`.
    pub user: Option<String>,
    /// `nats.user_file`: a file holding `nats.user`.
    pub user_file: Option<PathBuf>,
    /// `nats.password`: the password of `nats.user`.
    pub password: Option<Secret>,
    /// `nats.password_file`: a file holding `nats.password`.
    pub password_file: Option<PathBuf>,
    /// `nats.token`: an authentication token.
    pub token: Option<Secret>,
    /// `nats.token_file`: a file holding `nats.token`.
    pub token_file: Option<PathBuf>,
    /// `nats.tls.*`: TLS to the servers.
    pub tls: TlsConfig,
    /// `nats.connect_timeout`: how long one connection attempt may take (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `nats.request_timeout`: how long one JetStream request or publish waits for its answer
    /// (default [`DEFAULT_REQUEST_TIMEOUT`]).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `nats.publish_deadline`: how long a publish keeps retrying before it fails as
    /// unavailable (default [`DEFAULT_PUBLISH_DEADLINE`]).
    #[serde(with = "humantime_serde")]
    pub publish_deadline: Duration,
    /// `nats.server_msg_trace`: let nats-server's own message tracing (an account's
    /// `msg_trace` destination, servers 2.11 and later) see sampled events. Off by default:
    /// sampled events then carry `Nats-Trace-Dest: trace disabled`, which spares the
    /// server a header map per sampled message ([`crate::server_trace`]).
    pub server_msg_trace: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: vec![DEFAULT_NATS_URL.to_owned()],
            name: None,
            credentials_file: None,
            nkey: None,
            nkey_file: None,
            user: None,
            user_file: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            tls: TlsConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            publish_deadline: DEFAULT_PUBLISH_DEADLINE,
            server_msg_trace: false,
        }
    }
}

/// The NATS credentials of a [`NatsConfig`], each given as a value or read from its
/// `_file` key ([`NatsConfig::credentials`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsCredentials {
    /// `nats.nkey` or the content of `nats.nkey_file`.
    pub nkey: Option<Secret>,
    /// `nats.user` or the content of `nats.user_file`.
    pub user: Option<String>,
    /// `nats.password` or the content of `nats.password_file`.
    pub password: Option<Secret>,
    /// `nats.token` or the content of `nats.token_file`.
    pub token: Option<Secret>,
}

impl NatsConfig {
    /// Checks the server URLs, the files named, that at most one authentication method
    /// is set, and that no timeout is zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::new(
                "nats.servers",
                "at least one URL is needed",
            ));
        }
        for (i, url) in self.servers.iter().enumerate() {
            async_nats::ServerAddr::from_str(url).map_err(|e| {
                ConfigError::new(format!("nats.servers[{i}]"), format!("{url:?}: {e}"))
            })?;
        }
        if let Some(path) = &self.credentials_file
            && !path.is_file()
        {
            return Err(ConfigError::new(
                "nats.credentials_file",
                format!("{} is not a readable file", path.display()),
            ));
        }
        let creds = self.credentials()?;
        match (&creds.user, &creds.password) {
            (Some(_), None) => return Err(ConfigError::new("nats.password", "set with nats.user")),
            (None, Some(_)) => return Err(ConfigError::new("nats.user", "set with nats.password")),
            _ => {}
        }
        let methods = [
            self.credentials_file.is_some(),
            creds.nkey.is_some(),
            creds.user.is_some(),
            creds.token.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(ConfigError::new(
                "nats",
                "choose one of credentials_file, nkey, user/password and token",
            ));
        }
        self.tls.validate()?;
        for (key, d) in [
            ("nats.connect_timeout", self.connect_timeout),
            ("nats.request_timeout", self.request_timeout),
            ("nats.publish_deadline", self.publish_deadline),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be more than zero"));
            }
        }
        Ok(())
    }

    /// The nkey, user, password and token, each from its key or read from its `_file`
    /// key's file (the rules of [`crate::secret_file`]: not both, a file that is missing
    /// or empty is an error naming the `_file` key and the path).
    pub fn credentials(&self) -> Result<NatsCredentials, ConfigError> {
        at_most_one(
            "nats.user",
            self.user.is_some(),
            "nats.user_file",
            self.user_file.is_some(),
        )?;
        let user = match &self.user_file {
            Some(path) => Some(read_text_file("nats.user_file", path)?),
            None => self.user.clone(),
        };
        Ok(NatsCredentials {
            nkey: value_or_file(
                "nats.nkey",
                self.nkey.as_ref(),
                "nats.nkey_file",
                self.nkey_file.as_deref(),
            )?,
            user,
            password: value_or_file(
                "nats.password",
                self.password.as_ref(),
                "nats.password_file",
                self.password_file.as_deref(),
            )?,
            token: value_or_file(
                "nats.token",
                self.token.as_ref(),
                "nats.token_file",
                self.token_file.as_deref(),
            )?,
        })
    }
}

/// `nats.tls.*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Require TLS even for `nats://` URLs.
    pub required: bool,
    /// `nats.tls.ca_file`: PEM root certificates to verify the servers with.
    pub ca_file: Option<PathBuf>,
    /// `nats.tls.cert_file`: PEM client certificate; set together with `nats.tls.key_file`.
    pub cert_file: Option<PathBuf>,
    /// `nats.tls.key_file`: PEM private key of `nats.tls.cert_file`.
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("nats.tls.ca_file", &self.ca_file),
            ("nats.tls.cert_file", &self.cert_file),
            ("nats.tls.key_file", &self.key_file),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(ConfigError::new(
                    key,
                    format!("{} is not a readable file", p.display()),
                ));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::new(
                "nats.tls.key_file",
                "cert_file and key_file go together",
            ));
        }
        Ok(())
    }
}

/// `streams.*`: the events stream and the dead-letter stream.
///
/// Both are file-backed. The events stream refuses new publishes when it is full
/// (`max_bytes`) rather than dropping stored events: a publish that was acknowledged is
/// never discarded to make room. Events older than `max_age` are removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// `streams.events_name`: name of the events stream (default [`DEFAULT_EVENTS_STREAM`]).
    pub events_name: String,
    /// `streams.dlq_name`: name of the dead-letter stream (default [`DEFAULT_DLQ_STREAM`]).
    pub dlq_name: String,
    /// 1, 3 or 5 copies of every stream.
    pub replicas: usize,
    /// `streams.max_age`: how long the events stream keeps an event (default
    /// [`DEFAULT_MAX_AGE`]); zero keeps events until `max_bytes` is reached.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// `streams.dlq_max_age`: how long the dead-letter stream keeps a dead letter (default
    /// [`DEFAULT_DLQ_MAX_AGE`]).
    #[serde(with = "humantime_serde")]
    pub dlq_max_age: Duration,
    /// Window in which a repeated event (same source and id) is recognised and not stored
    /// again.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Size limit of each stream in bytes.
    pub max_bytes: i64,
    /// `streams.max_consumers`: consumers a stream may have (default
    /// [`DEFAULT_MAX_CONSUMERS`]).
    pub max_consumers: i32,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            events_name: DEFAULT_EVENTS_STREAM.to_owned(),
            dlq_name: DEFAULT_DLQ_STREAM.to_owned(),
            replicas: DEFAULT_REPLICAS,
            max_age: DEFAULT_MAX_AGE,
            dlq_max_age: DEFAULT_DLQ_MAX_AGE,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_bytes: DEFAULT_MAX_BYTES,
            max_consumers: DEFAULT_MAX_CONSUMERS,
        }
    }
}

impl StreamsConfig {
    /// Checks the stream names, `replicas`, `duplicate_window`, `max_bytes` and `max_consumers`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, name) in [
            ("streams.events_name", &self.events_name),
            ("streams.dlq_name", &self.dlq_name),
        ] {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(ConfigError::new(
                    key,
                    format!("{name:?}: use letters, digits, '_' and '-'"),
                ));
            }
        }
        if self.events_name == self.dlq_name {
            return Err(ConfigError::new(
                "streams.dlq_name",
                "must differ from streams.events_name",
            ));
        }
        if ![1, 3, 5].contains(&self.replicas) {
            return Err(ConfigError::new(
                "streams.replicas",
                format!("{}: must be 1, 3 or 5", self.replicas),
            ));
        }
        if self.duplicate_window.is_zero() {
            return Err(ConfigError::new(
                "streams.duplicate_window",
                "must be more than zero",
            ));
        }
        if !self.max_age.is_zero() && self.duplicate_window > self.max_age {
            return Err(ConfigError::new(
                "streams.duplicate_window",
                "must not exceed streams.max_age",
            ));
        }
        if !self.dlq_max_age.is_zero() && self.duplicate_window > self.dlq_max_age {
            return Err(ConfigError::new(
                "streams.duplicate_window",
                "must not exceed streams.dlq_max_age",
            ));
        }
        if self.max_bytes == 0 || self.max_bytes < -1 {
            return Err(ConfigError::new(
                "streams.max_bytes",
                "a positive size, or -1 for no limit",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_consumers) {
            return Err(ConfigError::new(
                "streams.max_consumers",
                "must be 1 to 1000000 (nats-server takes no 'unlimited' here)",
            ));
        }
        Ok(())
    }
}

/// `subjects.*`: where events and dead letters live on NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectsConfig {
    /// `subjects.prefix`: prefix of event subjects (default [`DEFAULT_EVENT_PREFIX`]).
    pub prefix: String,
    /// `subjects.dlq_prefix`: prefix of dead-letter subjects (default [`DEFAULT_DLQ_PREFIX`]).
    pub dlq_prefix: String,
    /// `subjects.redrive_prefix`: prefix of redriven events' subjects (default
    /// [`DEFAULT_REDRIVE_PREFIX`]).
    pub redrive_prefix: String,
    /// `subjects.ordered_prefix`: prefix of the partition subjects of ordered groups
    /// (default [`DEFAULT_ORDERED_PREFIX`]).
    pub ordered_prefix: String,
}

impl Default for SubjectsConfig {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_EVENT_PREFIX.to_owned(),
            dlq_prefix: DEFAULT_DLQ_PREFIX.to_owned(),
            redrive_prefix: DEFAULT_REDRIVE_PREFIX.to_owned(),
            ordered_prefix: DEFAULT_ORDERED_PREFIX.to_owned(),
        }
    }
}

impl SubjectsConfig {
    /// Checks that each prefix is a subject without wildcards and that no prefix overlaps
    /// another.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_prefix("subjects.prefix", &self.prefix)?;
        check_prefix("subjects.dlq_prefix", &self.dlq_prefix)?;
        check_prefix("subjects.redrive_prefix", &self.redrive_prefix)?;
        check_prefix("subjects.ordered_prefix", &self.ordered_prefix)?;
        let keyed = [
            ("subjects.prefix", &self.prefix),
            ("subjects.dlq_prefix", &self.dlq_prefix),
            ("subjects.redrive_prefix", &self.redrive_prefix),
            ("subjects.ordered_prefix", &self.ordered_prefix),
        ];
        for (i, (key, p)) in keyed.iter().enumerate() {
            for (other_key, q) in &keyed[..i] {
                let (a, b) = (format!("{p}."), format!("{q}."));
                if a.starts_with(&b) || b.starts_with(&a) {
                    return Err(ConfigError::new(
                        *key,
                        format!("must not overlap {other_key}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(ConfigError::new(key, "must not be empty"));
    }
    for (i, token) in prefix.split('.').enumerate() {
        if token.is_empty() {
            return Err(ConfigError::new(
                key,
                format!("{prefix:?}: empty token {i}"),
            ));
        }
        if let Some(c) = token
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(ConfigError::new(
                key,
                format!("{prefix:?}: character {c:?} is not allowed in a subject prefix"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mutate: impl FnOnce(&mut BusConfig), key: Option<&str>) {
        let mut c = BusConfig::default();
        mutate(&mut c);
        assert_eq!(c.validate().map_err(|e| e.key).err().as_deref(), key);
    }

    #[test]
    fn defaults_are_valid() {
        check(|_| {}, None);
    }

    #[test]
    fn each_error_names_its_key() {
        check(|c| c.nats.servers.clear(), Some("nats.servers"));
        check(
            |c| c.nats.servers = vec![DEFAULT_NATS_URL.into(), "http://a b".into()],
            Some("nats.servers[1]"),
        );
        check(|c| c.nats.user = Some("u".into()), Some("nats.password"));
        check(
            |c| {
                c.nats.token = Some(Secret::new("t"));
                c.nats.nkey = Some(Secret::new("SU"));
            },
            Some("nats"),
        );
        check(
            |c| c.nats.credentials_file = Some("/nonexistent/creds".into()),
            Some("nats.credentials_file"),
        );
        check(
            |c| c.nats.request_timeout = Duration::ZERO,
            Some("nats.request_timeout"),
        );
        check(|c| c.streams.replicas = 2, Some("streams.replicas"));
        check(
            |c| c.streams.events_name = "a.b".into(),
            Some("streams.events_name"),
        );
        check(
            |c| c.streams.dlq_name = c.streams.events_name.clone(),
            Some("streams.dlq_name"),
        );
        check(|c| c.streams.max_bytes = 0, Some("streams.max_bytes"));
        check(
            |c| c.streams.max_consumers = 0,
            Some("streams.max_consumers"),
        );
        check(
            |c| c.streams.dlq_max_age = Duration::from_secs(60),
            Some("streams.duplicate_window"),
        );
        check(
            |c| c.subjects.prefix = "bus.*".into(),
            Some("subjects.prefix"),
        );
        check(
            |c| c.subjects.prefix = "bus..x".into(),
            Some("subjects.prefix"),
        );
        check(
            |c| c.subjects.dlq_prefix = "bus.evt.dlq".into(),
            Some("subjects.dlq_prefix"),
        );
    }

    /// A directory with a `password` file ("pw" and a line break) and an empty file.
    fn secret_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (name, content) in [("password", "pw\n"), ("user", "bus\n"), ("empty", "")] {
            std::fs::write(dir.path().join(name), content).unwrap_or_else(|e| panic!("{e}"));
        }
        dir
    }

    #[test]
    fn each_secret_file_key_follows_the_file_rules() {
        let dir = secret_dir();
        let file = |name: &str| Some(dir.path().join(name));
        type Set = fn(&mut NatsConfig, Option<PathBuf>);
        let file_keys: [(&str, &str, Set, Set); 4] = [
            (
                "nats.password_file",
                "nats.password",
                |n, p| {
                    n.user = Some("u".into());
                    n.password_file = p;
                },
                |n, _| n.password = Some(Secret::new("v")),
            ),
            (
                "nats.user_file",
                "nats.user",
                |n, p| {
                    n.password = Some(Secret::new("v"));
                    n.user_file = p;
                },
                |n, _| n.user = Some("v".into()),
            ),
            (
                "nats.token_file",
                "nats.token",
                |n, p| n.token_file = p,
                |n, _| n.token = Some(Secret::new("v")),
            ),
            (
                "nats.nkey_file",
                "nats.nkey",
                |n, p| n.nkey_file = p,
                |n, _| n.nkey = Some(Secret::new("v")),
            ),
        ];
        for (file_key, value_key, set_file, set_value) in file_keys {
            // A readable file is accepted.
            check(|c| set_file(&mut c.nats, file("password")), None);
            // Missing and empty files name the file key and the path.
            for name in ["missing", "empty"] {
                let mut c = BusConfig::default();
                set_file(&mut c.nats, file(name));
                let e = c.validate().err();
                let e = e.unwrap_or_else(|| panic!("{file_key}: {name} accepted"));
                assert_eq!(e.key, file_key, "{e}");
                assert!(e.reason.contains(name), "{e}");
            }
            // The value and its file together: an error naming both.
            let mut c = BusConfig::default();
            set_file(&mut c.nats, file("password"));
            set_value(&mut c.nats, None);
            let e = c.validate().err();
            let e = e.unwrap_or_else(|| panic!("{file_key} with {value_key} accepted"));
            assert_eq!(e.key, file_key, "{e}");
            assert!(e.reason.contains(value_key), "{e}");
        }
    }

    #[test]
    fn credentials_come_from_the_files_without_their_line_break() {
        let dir = secret_dir();
        let mut n = NatsConfig {
            user_file: Some(dir.path().join("user")),
            password_file: Some(dir.path().join("password")),
            ..NatsConfig::default()
        };
        let creds = n.credentials().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(creds.user.as_deref(), Some("bus"));
        assert_eq!(creds.password.as_ref().map(Secret::expose), Some("pw"));
        // A file method counts as that method: a token besides user/password is refused.
        n.token = Some(Secret::new("t"));
        assert_eq!(
            n.validate().map_err(|e| e.key).err().as_deref(),
            Some("nats")
        );
        // The files' paths print; their content is never part of the configuration.
        let shown = serde_json::to_string(&n).unwrap_or_default();
        assert!(
            shown.contains("password_file") && !shown.contains("\"pw\""),
            "{shown}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(
            serde_json::to_string(&s).ok().as_deref(),
            Some("\"<redacted>\"")
        );
    }

    #[test]
    fn durations_read_as_human_text_and_unknown_keys_are_refused() {
        let c: Result<StreamsConfig, _> =
            serde_json::from_value(serde_json::json!({"max_age": "1h", "replicas": 3}));
        let c = c.map(|c| (c.max_age, c.replicas));
        assert_eq!(c.ok(), Some((Duration::from_secs(3600), 3)));
        let bad: Result<StreamsConfig, _> =
            serde_json::from_value(serde_json::json!({"replica": 3}));
        assert!(bad.is_err());
    }
}
