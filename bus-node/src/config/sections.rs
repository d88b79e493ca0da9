//! The sections of the node's configuration, with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bus_core::config::{ConfigError, NatsConfig, Secret, StreamsConfig, SubjectsConfig};
use bus_core::secret_file::read_secret_file;
use bus_core::{BusConfig, EventPattern};
use ipnet::IpNet;

use crate::webhooks::sealed::SealingKey;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest `http.max_body_bytes` accepted: NATS' own default message limit is 1 MiB, and
/// bodies are held in memory.
pub const MAX_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections open at once, idle or not; past it new ones wait in the listen backlog.
pub const DEFAULT_MAX_OPEN_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `http.max_connections` accepted (each is a permit of one semaphore).
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `http.body_read_timeout`.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
pub const DEFAULT_MAX_BATCH: usize = 1000;
pub const DEFAULT_RATE_PER_SECOND: u32 = 1000;
pub const DEFAULT_BURST: u32 = 2000;
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_PUSH_CLIENT_BUFFER: usize = 256;
pub const DEFAULT_PUSH_HEARTBEAT: Duration = Duration::from_secs(15);

/// Everything `bus-node` reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub http: HttpConfig,
    pub nats: NatsConfig,
    pub streams: StreamsConfig,
    pub subjects: SubjectsConfig,
    pub auth: AuthConfig,
    pub webhooks: WebhooksConfig,
    pub push: PushConfig,
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate()?;
        self.http.validate()?;
        self.bus().validate()?;
        self.auth.validate()?;
        self.webhooks.validate()?;
        self.push.validate()
    }

    /// The part the SDK needs.
    pub fn bus(&self) -> BusConfig {
        BusConfig {
            nats: self.nats.clone(),
            streams: self.streams.clone(),
            subjects: self.subjects.clone(),
        }
    }

    /// `http.listen`, parsed (call after `validate`).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.http
            .listen
            .parse()
            .map_err(|e| ConfigError::new("http.listen", format!("{:?}: {e}", self.http.listen)))
    }
}

/// `node.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// This node's name (default: the host name).
    pub id: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self { id: host_name() }
    }
}

impl NodeSection {
    fn validate(&self) -> Result<(), ConfigError> {
        let ok = !self.id.is_empty()
            && self.id.len() <= 128
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if ok {
            Ok(())
        } else {
            Err(ConfigError::new(
                "node.id",
                format!(
                    "{:?}: use 1 to 128 letters, digits, '-', '_' and '.'",
                    self.id
                ),
            ))
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "bus-node".to_owned())
}

/// `http.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// Largest request body; larger ones get `413` unread.
    pub max_body_bytes: usize,
    /// Events in one batch request.
    pub max_batch: usize,
    /// Requests served at once; more get `503` at once (never a queue).
    pub max_connections: usize,
    /// Connections open at once, idle or not; more wait in the listen backlog until one
    /// closes.
    pub max_open_connections: usize,
    /// How long a client may take to send a request's headers; then the connection is
    /// closed (slow or idle clients cannot hold connections for ever).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a client may take to send a request's body once its headers are in; then
    /// `408` and the connection closes. Less than `request_timeout`; unset: the less of
    /// [`DEFAULT_BODY_READ_TIMEOUT`] and half of `request_timeout`
    /// ([`HttpConfig::body_read_timeout`]).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Option<Duration>,
    /// Where `/metrics` is served instead of on `listen` (host:port, e.g. an address only
    /// the cluster's scraper reaches); unset: on `listen`, without authentication, like
    /// the probes.
    pub metrics_listen: Option<String>,
    /// How long shutdown waits for requests in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_open_connections: DEFAULT_MAX_OPEN_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            body_read_timeout: None,
            metrics_listen: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl HttpConfig {
    /// `body_read_timeout`, or the less of [`DEFAULT_BODY_READ_TIMEOUT`] and half of
    /// `request_timeout`.
    pub fn body_read_timeout(&self) -> Duration {
        self.body_read_timeout
            .unwrap_or_else(|| DEFAULT_BODY_READ_TIMEOUT.min(self.request_timeout / 2))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen.parse::<SocketAddr>().map_err(|e| {
            ConfigError::new(
                "http.listen",
                format!("{:?}: {e} (want host:port)", self.listen),
            )
        })?;
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_MAX_BODY_BYTES {
            return Err(ConfigError::new(
                "http.max_body_bytes",
                format!("must be 1 to {MAX_MAX_BODY_BYTES}"),
            ));
        }
        positive("http.max_batch", self.max_batch)?;
        if !(1..=MAX_MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(ConfigError::new(
                "http.max_connections",
                format!("must be 1 to {MAX_MAX_CONNECTIONS}"),
            ));
        }
        if !(1..=MAX_MAX_CONNECTIONS).contains(&self.max_open_connections) {
            return Err(ConfigError::new(
                "http.max_open_connections",
                format!("must be 1 to {MAX_MAX_CONNECTIONS}"),
            ));
        }
        nonzero("http.header_read_timeout", self.header_read_timeout)?;
        nonzero("http.request_timeout", self.request_timeout)?;
        if let Some(t) = self.body_read_timeout {
            nonzero("http.body_read_timeout", t)?;
            if t >= self.request_timeout {
                return Err(ConfigError::new(
                    "http.body_read_timeout",
                    format!(
                        "{t:?} must be less than http.request_timeout ({:?})",
                        self.request_timeout
                    ),
                ));
            }
        }
        if let Some(addr) = &self.metrics_listen {
            let parsed = addr.parse::<SocketAddr>().map_err(|e| {
                ConfigError::new(
                    "http.metrics_listen",
                    format!("{addr:?}: {e} (want host:port)"),
                )
            })?;
            if self.listen.parse::<SocketAddr>().is_ok_and(|l| l == parsed) {
                return Err(ConfigError::new(
                    "http.metrics_listen",
                    format!(
                        "{addr:?} is http.listen itself: leave it unset to serve /metrics there"
                    ),
                ));
            }
        }
        nonzero("http.shutdown_grace", self.shutdown_grace)
    }
}

/// `auth.*`: API keys for the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub enabled: bool,
    pub api_keys: Vec<ApiKeyConfig>,
    /// A file (a mounted Secret) holding the keys instead of `api_keys`, read at start-up
    /// into `api_keys` (`super::api_keys_file`).
    pub api_keys_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            api_keys: Vec::new(),
            api_keys_file: None,
        }
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.api_keys.is_empty() {
            return Err(ConfigError::new(
                "auth.api_keys",
                "auth.enabled is true but no key is configured",
            ));
        }
        validate_api_keys("auth.api_keys", &self.api_keys)
    }
}

/// Checks each key of `keys`, found at `at` (`auth.api_keys`); errors name `at[i].field`.
pub fn validate_api_keys(at: &str, keys: &[ApiKeyConfig]) -> Result<(), ConfigError> {
    for (i, k) in keys.iter().enumerate() {
        let key = |field: &str| format!("{at}[{i}].{field}");
        if k.name.is_empty() {
            return Err(ConfigError::new(key("name"), "must not be empty"));
        }
        if k.key.expose().len() < 16 {
            return Err(ConfigError::new(
                key("key"),
                "must be at least 16 characters",
            ));
        }
        for (field, patterns) in [("publish", &k.publish), ("read", &k.read)] {
            for (j, p) in patterns.iter().enumerate() {
                EventPattern::new(p.as_str())
                    .map_err(|e| ConfigError::new(format!("{}[{j}]", key(field)), e.to_string()))?;
            }
        }
        if k.rate_per_second == 0 {
            return Err(ConfigError::new(
                key("rate_per_second"),
                "must be at least 1",
            ));
        }
        if k.burst < k.rate_per_second.min(1) {
            return Err(ConfigError::new(key("burst"), "must be at least 1"));
        }
        let dup = keys[..i].iter().any(|o| o.key == k.key || o.name == k.name);
        if dup {
            return Err(ConfigError::new(key("key"), "name and key must be unique"));
        }
    }
    Ok(())
}

/// One API key: who may publish which types, and use the admin endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    pub key: Secret,
    /// Event type patterns this key may publish (`shop.>`, `shop.order.*`); empty: none.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Event type patterns this key may receive over push (SSE, WebSocket) and put in
    /// push tokens; empty: none.
    #[serde(default)]
    pub read: Vec<String>,
    /// May use `/v1/groups`, `/v1/dlq` and the other admin endpoints.
    #[serde(default)]
    pub admin: bool,
    /// May manage webhook subscriptions (`/v1/webhooks`), without the other admin
    /// endpoints.
    #[serde(default)]
    pub webhooks: bool,
    #[serde(default = "default_rate")]
    pub rate_per_second: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_rate() -> u32 {
    DEFAULT_RATE_PER_SECOND
}

fn default_burst() -> u32 {
    DEFAULT_BURST
}

/// `webhooks.*`: read and checked now, used by webhook delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    #[serde(with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Networks deliveries may reach despite the SSRF guard.
    pub allowed_networks: Vec<IpNet>,
    /// A PEM bundle of CA certificates that `https` endpoints may also chain to, besides
    /// the system's roots (a private PKI).
    pub ca_file: Option<PathBuf>,
    /// A file (a mounted Secret) holding the key that encrypts webhook secrets at rest;
    /// read and checked at start-up like every `*_file` key.
    pub secret_key_file: Option<PathBuf>,
    /// After a rotation, how long deliveries carry the previous secret's signature too.
    #[serde(with = "humantime_serde")]
    pub secret_overlap: Duration,
    /// An endpoint failing every attempt this long is disabled.
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// Deliveries in flight per subscription on each node.
    pub concurrency: usize,
    /// Deliveries in flight on each node, over all subscriptions.
    pub node_concurrency: usize,
    /// How long the attempts log keeps an attempt.
    #[serde(with = "humantime_serde")]
    pub attempts_max_age: Duration,
    /// The attempts log's size bound (oldest attempts go first).
    pub attempts_max_bytes: i64,
    /// Attempts kept per subscription (oldest go first).
    pub attempts_per_subscription: i64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let s = |secs| Duration::from_secs(secs);
        Self {
            retry_schedule: vec![s(5), s(300), s(1800), s(7200), s(18000), s(36000), s(36000)],
            timeout: DEFAULT_WEBHOOK_TIMEOUT,
            allowed_networks: Vec::new(),
            ca_file: None,
            secret_key_file: None,
            secret_overlap: s(24 * 3600),
            disable_after: s(5 * 24 * 3600),
            concurrency: 8,
            node_concurrency: 512,
            attempts_max_age: s(7 * 24 * 3600),
            attempts_max_bytes: 256 * 1024 * 1024,
            attempts_per_subscription: 10_000,
        }
    }
}

impl WebhooksConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_schedule.is_empty() {
            return Err(ConfigError::new(
                "webhooks.retry_schedule",
                "must not be empty",
            ));
        }
        if self.secret_key_file.is_some() {
            self.sealing_key()?;
        }
        self.extra_roots()?;
        if !(1..=256).contains(&self.concurrency) {
            return Err(ConfigError::new("webhooks.concurrency", "must be 1 to 256"));
        }
        if self.node_concurrency < self.concurrency || self.node_concurrency > 65_536 {
            return Err(ConfigError::new(
                "webhooks.node_concurrency",
                "must be at least webhooks.concurrency and at most 65536",
            ));
        }
        if self.attempts_max_bytes < 1024 * 1024 {
            return Err(ConfigError::new(
                "webhooks.attempts_max_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        if self.attempts_per_subscription < 1 {
            return Err(ConfigError::new(
                "webhooks.attempts_per_subscription",
                "must be at least 1",
            ));
        }
        nonzero("webhooks.secret_overlap", self.secret_overlap)?;
        nonzero("webhooks.disable_after", self.disable_after)?;
        nonzero("webhooks.attempts_max_age", self.attempts_max_age)?;
        nonzero("webhooks.timeout", self.timeout)
    }

    /// The certificates of `ca_file` (none when unset).
    pub fn extra_roots(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        let Some(path) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let fail = |why: String| {
            ConfigError::new("webhooks.ca_file", format!("{}: {why}", path.display()))
        };
        let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate in it".into()));
        }
        Ok(certs)
    }

    /// The key that seals webhook secrets, read from `secret_key_file` (`None`: not set,
    /// and the webhook API answers that webhooks are not configured).
    pub fn sealing_key(&self) -> Result<Option<SealingKey>, ConfigError> {
        let Some(path) = &self.secret_key_file else {
            return Ok(None);
        };
        let text = read_secret_file("webhooks.secret_key_file", path)?;
        SealingKey::parse(text.expose()).map(Some).map_err(|e| {
            ConfigError::new(
                "webhooks.secret_key_file",
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// `push.*`: SSE and WebSocket delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Events buffered per client; a client that falls further behind is disconnected
    /// and resumes from its last sequence.
    pub client_buffer: usize,
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Push clients connected to this node at once (SSE and WebSocket); past it, `503`.
    pub max_clients: usize,
    /// Resumes replaying history at once on this node; past it, `503` with `Retry-After`.
    pub max_replays: usize,
    /// Origins a browser's WebSocket may come from (`https://app.example.com`), besides
    /// the node's own; `*` allows any.
    pub allowed_origins: Vec<String>,
    /// The key that signs push tokens (at least 32 bytes); every node that accepts a
    /// token needs the same one. Unset: no tokens are issued (`dev` makes one).
    pub token_key_file: Option<PathBuf>,
    /// How long a push token is valid unless the request asks for less.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
}

/// Smallest key `push.token_key_file` may hold.
pub const MIN_TOKEN_KEY_BYTES: usize = 32;

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            client_buffer: DEFAULT_PUSH_CLIENT_BUFFER,
            heartbeat: DEFAULT_PUSH_HEARTBEAT,
            max_clients: 10_000,
            max_replays: 32,
            allowed_origins: Vec::new(),
            token_key_file: None,
            token_ttl: Duration::from_secs(600),
        }
    }
}

impl PushConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("push.client_buffer", self.client_buffer)?;
        positive("push.max_clients", self.max_clients)?;
        positive("push.max_replays", self.max_replays)?;
        if self.client_buffer > 65_536 {
            return Err(ConfigError::new(
                "push.client_buffer",
                "must be at most 65536",
            ));
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.trim_end_matches('/').contains(['?', '#', ' '])
                    && origin
                        .split("://")
                        .nth(1)
                        .is_some_and(|h| !h.is_empty() && !h.contains('/')));
            if !ok {
                return Err(ConfigError::new(
                    format!("push.allowed_origins[{i}]"),
                    "must be an origin (scheme://host[:port], no path) or \"*\"",
                ));
            }
        }
        self.token_key()?;
        nonzero("push.heartbeat", self.heartbeat)?;
        nonzero("push.token_ttl", self.token_ttl)
    }

    /// The key of `token_key_file` (`None`: not set).
    pub fn token_key(&self) -> Result<Option<Secret>, ConfigError> {
        let Some(path) = &self.token_key_file else {
            return Ok(None);
        };
        let key = read_secret_file("push.token_key_file", path)?;
        if key.expose().len() < MIN_TOKEN_KEY_BYTES {
            return Err(ConfigError::new(
                "push.token_key_file",
                format!(
                    "{}: must hold at least {MIN_TOKEN_KEY_BYTES} bytes",
                    path.display()
                ),
            ));
        }
        Ok(Some(key))
    }
}

fn positive(key: &str, n: usize) -> Result<(), ConfigError> {
    if n == 0 {
        Err(ConfigError::new(key, "must be at least 1"))
    } else {
        Ok(())
    }
}

fn nonzero(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(key, "must be more than zero"))
    } else {
        Ok(())
    }
}

/// A list of durations written as text (`["5s", "5m"]`).
mod duration_list {
    use std::time::Duration;

    use humantime_serde::Serde;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| Serde::from(*d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v: Vec<Serde<Duration>> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(Serde::into_inner).collect())
    }
}
