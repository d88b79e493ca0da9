//! Webhook subscriptions, kept in the key-value bucket `<events stream>_WEBHOOKS` (one
//! key per subscription id, replicated like the streams) so that every node reads the
//! same ones and any node can serve the API. Secrets are stored sealed (`sealed.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::asymmetric::SigningPair;
use super::sealed::{SealError, SealingKey};
use super::signature::Secret;

/// The bucket's name for the events stream `events`.
pub fn bucket_name(events: &str) -> String {
    format!("{events}_WEBHOOKS")
}

/// One subscription as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    /// Event type patterns (`shop.order.*`, `shop.>`).
    pub types: Vec<String>,
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
    /// Headers added to every delivery.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The secrets, newest first, each sealed for this subscription.
    pub secrets: Vec<String>,
    /// Until when (Unix seconds) the secrets after the first still sign: the overlap of
    /// the last rotation. `None`: only the first signs.
    #[serde(default)]
    pub previous_until: Option<i64>,
    /// Deliveries per second at most, on each node delivering it.
    #[serde(default)]
    pub rate_limit: Option<u32>,
    /// Since when (Unix seconds) every attempt failed; `None` after a delivery.
    #[serde(default)]
    pub failing_since: Option<i64>,
    /// The Ed25519 signing key's seed, sealed for `"{id}.ed25519"`, when deliveries carry
    /// a `v1a` signature too.
    #[serde(default)]
    pub ed25519: Option<String>,
    /// Its public key, `whpk_...` (not secret).
    #[serde(default)]
    pub public_key: Option<String>,
    /// RFC 3339.
    pub created: String,
    /// Why the bus disabled it (410 Gone, ...), if it did.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// The first stream sequence it takes (the stream's next one when it was made), so
    /// that every event stored after its creation is delivered however late its consumer
    /// is made. Absent in subscriptions made before it was recorded: events from their
    /// consumer's creation on.
    #[serde(default)]
    pub from_seq: Option<u64>,
}

impl Subscription {
    /// Its secrets, newest first, opened with `key` (those after the first sign only
    /// until `previous_until`).
    pub fn open_secrets(&self, key: &SealingKey) -> Result<Vec<Secret>, SealError> {
        self.secrets
            .iter()
            .map(|s| {
                let plain = key.open(&self.id, s)?;
                let text = String::from_utf8(plain).map_err(|_| SealError::Malformed)?;
                Secret::parse(&text).map_err(|_| SealError::Malformed)
            })
            .collect()
    }

    /// The associated data its Ed25519 seed is sealed for.
    pub fn ed25519_label(&self) -> String {
        format!("{}.ed25519", self.id)
    }

    /// Its Ed25519 signing key, if it has one, opened with `key`.
    pub fn open_ed25519(&self, key: &SealingKey) -> Result<Option<SigningPair>, SealError> {
        let Some(sealed) = &self.ed25519 else {
            return Ok(None);
        };
        let seed = key.open(&self.ed25519_label(), sealed)?;
        SigningPair::from_seed(&seed)
            .map(Some)
            .map_err(|_| SealError::Malformed)
    }

    /// Gives it a new Ed25519 signing key, sealed with `key`.
    pub fn add_ed25519(&mut self, key: &SealingKey) -> Result<(), SealError> {
        let pair = SigningPair::generate();
        self.ed25519 = Some(key.seal(&self.ed25519_label(), &pair.seed())?);
        self.public_key = Some(pair.public_text());
        Ok(())
    }

    /// The subscription's view for the API: everything but the secrets.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "url": self.url,
            "types": self.types,
            "enabled": self.enabled,
            "description": self.description,
            "headers": self.headers,
            "rate_limit": self.rate_limit,
            "created": self.created,
            "disabled_reason": self.disabled_reason,
            "failing_since": self.failing_since.and_then(rfc3339),
            "previous_secret_until": self.previous_until.and_then(rfc3339),
            "public_key": self.public_key,
        })
    }

    /// What deliveries depend on: a change here restarts them, a change elsewhere (a
    /// description, the failure record) does not.
    pub fn delivery_view(&self) -> String {
        serde_json::json!([
            self.url,
            self.types,
            self.enabled,
            self.headers,
            self.secrets,
            self.previous_until,
            self.rate_limit,
            self.ed25519
        ])
        .to_string()
    }
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(secs: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the webhook subscriptions bucket is not reachable: {0}")]
    Unavailable(String),
    #[error("a stored subscription cannot be read: {0}")]
    Corrupt(String),
    /// A conditional write found another revision than the one it was based on.
    #[error("the subscription changed meanwhile (revision {0} is not the latest)")]
    Conflict(u64),
}

/// Opens the bucket, creating it if it is not there.
pub async fn open(
    js: &jetstream::Context,
    events: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    let name = bucket_name(events);
    match js.get_key_value(&name).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name,
                description: "bus webhook subscriptions".into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string())),
    }
}

/// Writes `s`.
pub async fn put(store: &kv::Store, s: &Subscription) -> Result<u64, StoreError> {
    let bytes = serde_json::to_vec(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    store
        .put(&s.id, Bytes::from(bytes))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Reads subscription `id`, if there is one.
pub async fn get(store: &kv::Store, id: &str) -> Result<Option<Subscription>, StoreError> {
    match store.get(id).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string())),
        Ok(None) => Ok(None),
        Err(e) => Err(StoreError::Unavailable(e.to_string())),
    }
}

/// Reads subscription `id` and its revision, if there is one.
pub async fn entry(store: &kv::Store, id: &str) -> Result<Option<(Subscription, u64)>, StoreError> {
    match store.entry(id).await {
        Ok(Some(e)) if matches!(e.operation, kv::Operation::Put) => {
            serde_json::from_slice(&e.value)
                .map(|s| Some((s, e.revision)))
                .map_err(|err| StoreError::Corrupt(err.to_string()))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(StoreError::Unavailable(e.to_string())),
    }
}

/// Writes `s` if `revision` is still its latest one; gives the new revision.
pub async fn update(store: &kv::Store, s: &Subscription, revision: u64) -> Result<u64, StoreError> {
    let bytes = serde_json::to_vec(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    store
        .update(&s.id, Bytes::from(bytes), revision)
        .await
        .map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict(revision),
            _ => StoreError::Unavailable(e.to_string()),
        })
}

/// Applies `change` to subscription `id` and writes it, re-reading and retrying when
/// another writer came first (a few rounds); `Ok(None)` when there is no such
/// subscription or `change` declined (returned false).
pub async fn modify(
    store: &kv::Store,
    id: &str,
    mut change: impl FnMut(&mut Subscription) -> bool,
) -> Result<Option<Subscription>, StoreError> {
    for _ in 0..5 {
        let Some((mut sub, revision)) = entry(store, id).await? else {
            return Ok(None);
        };
        if !change(&mut sub) {
            return Ok(None);
        }
        match update(store, &sub, revision).await {
            Ok(_) => return Ok(Some(sub)),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict(0))
}

/// A page of at most `limit` subscriptions in id order after `after`, and whether more
/// follow. Looks at no more than `max_keys` keys.
pub async fn page(
    store: &kv::Store,
    after: Option<&str>,
    limit: usize,
    max_keys: usize,
) -> Result<(Vec<Subscription>, bool), StoreError> {
    use futures::StreamExt;
    let keys = store
        .keys()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let mut keys: Vec<String> = tokio::time::timeout(
        Duration::from_secs(10),
        keys.take(max_keys).collect::<Vec<_>>(),
    )
    .await
    .map_err(|_| StoreError::Unavailable("listing keys timed out".into()))?
    .into_iter()
    .filter_map(Result::ok)
    .filter(|k| after.is_none_or(|a| k.as_str() > a))
    .collect();
    keys.sort();
    let more = keys.len() > limit;
    let mut out = Vec::new();
    for k in keys.into_iter().take(limit) {
        if let Some(s) = get(store, &k).await? {
            out.push(s);
        }
    }
    Ok((out, more))
}

/// Removes subscription `id`.
pub async fn delete(store: &kv::Store, id: &str) -> Result<(), StoreError> {
    store
        .purge(id)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}
