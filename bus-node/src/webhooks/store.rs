//! Webhook subscriptions, kept in the key-value bucket `<events stream>_WEBHOOKS` (one
//! key per subscription id, replicated like the streams) so that every node reads the
//! same ones and any node can serve the API. Secrets are stored sealed (`sealed.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

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
    /// RFC 3339.
    pub created: String,
    /// Why the bus disabled it (410 Gone, ...), if it did.
    #[serde(default)]
    pub disabled_reason: Option<String>,
}

impl Subscription {
    /// Its secrets, opened with `key`.
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

    /// The subscription's view for the API: everything but the secrets.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "url": self.url,
            "types": self.types,
            "enabled": self.enabled,
            "description": self.description,
            "headers": self.headers,
            "created": self.created,
            "disabled_reason": self.disabled_reason,
        })
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the webhook subscriptions bucket is not reachable: {0}")]
    Unavailable(String),
    #[error("a stored subscription cannot be read: {0}")]
    Corrupt(String),
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

/// Every subscription, at most `limit` of them.
pub async fn list(store: &kv::Store, limit: usize) -> Result<Vec<Subscription>, StoreError> {
    use futures::StreamExt;
    let keys = store
        .keys()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let keys: Vec<String> =
        tokio::time::timeout(Duration::from_secs(5), keys.take(limit).collect::<Vec<_>>())
            .await
            .map_err(|_| StoreError::Unavailable("listing keys timed out".into()))?
            .into_iter()
            .filter_map(Result::ok)
            .collect();
    let mut out = Vec::new();
    for k in keys {
        if let Some(s) = get(store, &k).await? {
            out.push(s);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Removes subscription `id`.
pub async fn delete(store: &kv::Store, id: &str) -> Result<(), StoreError> {
    store
        .purge(id)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}
