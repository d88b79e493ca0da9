//! API keys: who is calling, what they may publish, whether they may administer, and
//! their rate.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use bus_core::{EventPattern, EventType};

use crate::config::AuthConfig;
use crate::http::problem::Problem;
use crate::rate_limit::TokenBucket;

/// Header carrying an API key (alternative to `Authorization: Bearer <key>`).
pub const API_KEY_HEADER: &str = "x-api-key";

#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    keys: Vec<Key>,
}

/// A configured API key.
#[derive(Debug)]
pub struct Key {
    name: String,
    secret: Vec<u8>,
    publish: Vec<EventPattern>,
    admin: bool,
    bucket: Mutex<TokenBucket>,
}

/// The caller of one request.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'a> {
    /// Authentication is off: everything is allowed.
    Anyone,
    Key(&'a Key),
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Self {
        let keys = config
            .api_keys
            .iter()
            .map(|k| Key {
                name: k.name.clone(),
                secret: k.key.expose().as_bytes().to_vec(),
                // Validated at load time; an invalid pattern cannot get here.
                publish: k
                    .publish
                    .iter()
                    .filter_map(|p| EventPattern::new(p.as_str()).ok())
                    .collect(),
                admin: k.admin,
                bucket: Mutex::new(TokenBucket::new(k.rate_per_second, k.burst)),
            })
            .collect();
        Self {
            enabled: config.enabled,
            keys,
        }
    }

    /// 401 when the key is missing or unknown.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal<'_>, Problem> {
        if !self.enabled {
            return Ok(Principal::Anyone);
        }
        let presented = presented_key(headers).ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                format!(
                    "send an API key as 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>'"
                ),
            )
        })?;
        let found = self
            .keys
            .iter()
            .find(|k| constant_time_eq(&k.secret, presented.as_bytes()));
        match found {
            Some(k) => Ok(Principal::Key(k)),
            None => Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "unknown API key",
            )),
        }
    }
}

fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Principal<'_> {
    pub fn name(&self) -> &str {
        match self {
            Principal::Anyone => "anonymous",
            Principal::Key(k) => &k.name,
        }
    }

    /// 403 unless this caller may publish `event_type`.
    pub fn check_publish(&self, event_type: &EventType) -> Result<(), Problem> {
        match self {
            Principal::Anyone => Ok(()),
            Principal::Key(k) if k.publish.iter().any(|p| p.matches(event_type)) => Ok(()),
            Principal::Key(k) => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("API key {:?} may not publish {event_type}", k.name),
            )),
        }
    }

    /// 403 unless this caller may use the admin endpoints.
    pub fn check_admin(&self) -> Result<(), Problem> {
        match self {
            Principal::Anyone => Ok(()),
            Principal::Key(k) if k.admin => Ok(()),
            Principal::Key(k) => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("API key {:?} is not an admin key", k.name),
            )),
        }
    }

    /// 429 with `Retry-After` when the caller is over its rate; `cost` is the number of events.
    pub fn check_rate(&self, cost: u32) -> Result<(), Problem> {
        let Principal::Key(k) = self else {
            return Ok(());
        };
        let mut bucket = k.bucket.lock().unwrap_or_else(|p| p.into_inner());
        bucket.take(cost, Instant::now()).map_err(|wait: Duration| {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!("API key {:?} is over its rate", k.name),
            )
            .retry_after(wait.as_secs_f64().ceil() as u64)
        })
    }
}
