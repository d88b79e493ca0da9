//! API keys: who is calling, what they may publish, whether they may administer, and
//! their rate.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode, header};
use bus_core::{EventPattern, EventType};

use crate::config::AuthConfig;
use crate::failed_auth::FailedAuth;
use crate::http::problem::Problem;
use crate::rate_limit::{Refusal, TokenBucket};

/// Header carrying an API key (alternative to `Authorization: Bearer <key>`).
pub const API_KEY_HEADER: &str = "x-api-key";

#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    keys: Vec<Key>,
    failed: FailedAuth,
}

/// A configured API key.
#[derive(Debug)]
pub struct Key {
    name: String,
    secret: Vec<u8>,
    publish: Vec<EventPattern>,
    read: Vec<EventPattern>,
    admin: bool,
    webhooks: bool,
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
                read: k
                    .read
                    .iter()
                    .filter_map(|p| EventPattern::new(p.as_str()).ok())
                    .collect(),
                admin: k.admin,
                webhooks: k.webhooks,
                bucket: Mutex::new(TokenBucket::new(k.rate_per_second, k.burst)),
            })
            .collect();
        Self {
            enabled: config.enabled,
            keys,
            failed: FailedAuth::default(),
        }
    }

    /// 401 when the key is missing or unknown; 400 when the request carries more than
    /// one credential (two headers, or both `Authorization` and `x-api-key`: which one
    /// counts would be a guess); 429 when `client` sent too many wrong keys
    /// (`failed_auth.rs`).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<Principal<'_>, Problem> {
        if !self.enabled {
            return Ok(Principal::Anyone);
        }
        let presented = presented_key(headers)?.ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                format!(
                    "send an API key as 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>'"
                ),
            )
        })?;
        if let Some(ip) = client {
            let wait = self.failed.wait(ip);
            if !wait.is_zero() {
                return Err(Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-wrong-keys",
                    "too many wrong API keys from this address",
                )
                .retry_after(wait.as_secs_f64().ceil() as u64));
            }
        }
        let found = self
            .keys
            .iter()
            .find(|k| constant_time_eq(&k.secret, presented.as_bytes()));
        match found {
            Some(k) => Ok(Principal::Key(k)),
            None => {
                if let Some(ip) = client {
                    self.failed.failed(ip);
                }
                Err(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "unknown API key",
                ))
            }
        }
    }
}

/// The key the request presents, if any; more than one credential header is a 400.
fn presented_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let api_keys = headers.get_all(API_KEY_HEADER).iter().count();
    let authorizations = headers.get_all(header::AUTHORIZATION).iter().count();
    if api_keys > 1 || authorizations > 1 || (api_keys == 1 && authorizations == 1) {
        return Err(Problem::bad_request(
            "ambiguous-credentials",
            format!(
                "send one credential: one 'Authorization: Bearer <key>' or one '{API_KEY_HEADER}' header, not both or two"
            ),
        ));
    }
    if let Some(v) = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()) {
        return Ok(Some(v.trim().to_owned()));
    }
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    Ok(auth.split_once(' ').and_then(|(scheme, token)| {
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    }))
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

    /// The type patterns this caller may receive over push; `None`: any (authentication
    /// is off).
    pub fn readable(&self) -> Option<&[EventPattern]> {
        match self {
            Principal::Anyone => None,
            Principal::Key(k) => Some(&k.read),
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

    /// 403 unless this caller may manage webhook subscriptions (an admin key, or one with
    /// the `webhooks` scope).
    pub fn check_webhooks(&self) -> Result<(), Problem> {
        match self {
            Principal::Anyone => Ok(()),
            Principal::Key(k) if k.admin || k.webhooks => Ok(()),
            Principal::Key(k) => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "API key {:?} may not manage webhooks (it needs \"webhooks\": true or \"admin\": true)",
                    k.name
                ),
            )),
        }
    }

    /// 429 with `Retry-After` when the caller is over its rate; 413 when `cost` (the
    /// number of events) is more than the key's burst, which no wait would satisfy.
    pub fn check_rate(&self, cost: u32) -> Result<(), Problem> {
        let Principal::Key(k) = self else {
            return Ok(());
        };
        let mut bucket = k.bucket.lock().unwrap_or_else(|p| p.into_inner());
        bucket
            .take(cost, Instant::now())
            .map_err(|refusal| match refusal {
                Refusal::Wait(wait) => Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    format!("API key {:?} is over its rate", k.name),
                )
                .retry_after(wait.as_secs_f64().ceil() as u64),
                Refusal::OverBurst { burst } => Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch-over-burst",
                    format!(
                        "{cost} events in one request; API key {:?} may send at most {burst} at once (its burst): split the batch",
                        k.name
                    ),
                ),
            })
    }
}
