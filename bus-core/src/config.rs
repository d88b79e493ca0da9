//! Configuration shared by the SDK and the node: how to reach NATS, the streams, and the
//! subject prefixes. Every section has serde defaults, refuses unknown keys, and is checked
//! by `validate`, whose errors name the key (`nats.servers[1]`) and the reason.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::subjects::{DEFAULT_DLQ_PREFIX, DEFAULT_EVENT_PREFIX, DEFAULT_REDRIVE_PREFIX, Subjects};

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one JetStream request or publish waits for its answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a publish keeps retrying through leader elections and reconnects.
pub const DEFAULT_PUBLISH_DEADLINE: Duration = Duration::from_secs(30);
pub const DEFAULT_EVENTS_STREAM: &str = "BUS_EVENTS";
pub const DEFAULT_DLQ_STREAM: &str = "BUS_DLQ";
pub const DEFAULT_REPLICAS: usize = 1;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_DLQ_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
pub const DEFAULT_MAX_BYTES: i64 = 1024 * 1024 * 1024;

/// A configuration value that is wrong: `key` is its dotted path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
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
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

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

/// Everything a bus client needs: `nats`, `streams` and `subjects`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    pub nats: NatsConfig,
    pub streams: StreamsConfig,
    pub subjects: SubjectsConfig,
}

impl BusConfig {
    /// A configuration with defaults that talks to `servers`.
    pub fn with_servers<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        let mut c = Self::default();
        c.nats.servers = servers.into_iter().map(Into::into).collect();
        c
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.streams.validate()?;
        self.subjects.validate()
    }

    pub fn subjects(&self) -> Subjects {
        Subjects::new(
            &self.subjects.prefix,
            &self.subjects.dlq_prefix,
            &self.subjects.redrive_prefix,
        )
    }
}

/// `nats.*`: servers, authentication, TLS and timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    pub servers: Vec<String>,
    /// Connection name shown by the server's monitoring.
    pub name: Option<String>,
    pub credentials_file: Option<PathBuf>,
    /// NKey seed (`SU...`).
    pub nkey: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    pub tls: TlsConfig,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub publish_deadline: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: vec![DEFAULT_NATS_URL.to_owned()],
            name: None,
            credentials_file: None,
            nkey: None,
            user: None,
            password: None,
            token: None,
            tls: TlsConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            publish_deadline: DEFAULT_PUBLISH_DEADLINE,
        }
    }
}

impl NatsConfig {
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
        match (&self.user, &self.password) {
            (Some(_), None) => return Err(ConfigError::new("nats.password", "set with nats.user")),
            (None, Some(_)) => return Err(ConfigError::new("nats.user", "set with nats.password")),
            _ => {}
        }
        let methods = [
            self.credentials_file.is_some(),
            self.nkey.is_some(),
            self.user.is_some(),
            self.token.is_some(),
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
}

/// `nats.tls.*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Require TLS even for `nats://` URLs.
    pub required: bool,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
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
    pub events_name: String,
    pub dlq_name: String,
    /// 1, 3 or 5 copies of every stream.
    pub replicas: usize,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(with = "humantime_serde")]
    pub dlq_max_age: Duration,
    /// Window in which a repeated event id is recognised and not stored again.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Size limit of each stream in bytes.
    pub max_bytes: i64,
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
        }
    }
}

impl StreamsConfig {
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
        if self.max_bytes == 0 || self.max_bytes < -1 {
            return Err(ConfigError::new(
                "streams.max_bytes",
                "a positive size, or -1 for no limit",
            ));
        }
        Ok(())
    }
}

/// `subjects.*`: where events and dead letters live on NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectsConfig {
    pub prefix: String,
    pub dlq_prefix: String,
    pub redrive_prefix: String,
}

impl Default for SubjectsConfig {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_EVENT_PREFIX.to_owned(),
            dlq_prefix: DEFAULT_DLQ_PREFIX.to_owned(),
            redrive_prefix: DEFAULT_REDRIVE_PREFIX.to_owned(),
        }
    }
}

impl SubjectsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_prefix("subjects.prefix", &self.prefix)?;
        check_prefix("subjects.dlq_prefix", &self.dlq_prefix)?;
        check_prefix("subjects.redrive_prefix", &self.redrive_prefix)?;
        let keyed = [
            ("subjects.prefix", &self.prefix),
            ("subjects.dlq_prefix", &self.dlq_prefix),
            ("subjects.redrive_prefix", &self.redrive_prefix),
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
