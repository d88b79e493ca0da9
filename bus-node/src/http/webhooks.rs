//! `POST/GET /v1/webhooks`, `GET/DELETE /v1/webhooks/{id}`: webhook subscriptions, for
//! admin keys. A subscription's secret is generated unless given (`whsec_...`), shown
//! in the answer to its creation only, and stored sealed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use bus_core::EventPattern;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::read_bounded;
use super::problem::Problem;
use super::server::{ClientAddr, client_ip};
use crate::app::App;
use crate::webhooks::attempt::check_url;
use crate::webhooks::engine::{Webhooks, group_name};
use crate::webhooks::signature::Secret;
use crate::webhooks::ssrf::AddressPolicy;
use crate::webhooks::store::{self, StoreError, Subscription};

/// Subscriptions listed at most.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;
/// Longest accepted URL, description, header value.
const MAX_TEXT: usize = 2048;
/// Patterns and headers per subscription.
const MAX_ITEMS: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    url: String,
    types: Vec<String>,
    secret: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    enabled: Option<bool>,
}

/// The webhooks state, after the caller is checked as an admin.
fn admin_webhooks(
    app: &App,
    headers: &HeaderMap,
    client: &Option<Extension<ClientAddr>>,
) -> Result<Arc<Webhooks>, Problem> {
    app.auth
        .authenticate(headers, client_ip(client))?
        .check_admin()?;
    if app.config.webhooks.secret_key_file.is_none() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks-not-configured",
            "webhooks need webhooks.secret_key_file (the key that seals their secrets)",
        ));
    }
    app.webhooks()
        .cloned()
        .ok_or_else(|| Problem::unavailable("NATS is not reachable from this node", 1))
}

fn store_problem(e: StoreError) -> Problem {
    Problem::unavailable(e.to_string(), 1)
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::bad_request("invalid-webhook", detail)
}

/// Headers a subscription may not set: the bus sets them, or they frame the request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "user-agent",
];

fn validate(n: &NewSubscription, policy: &AddressPolicy) -> Result<(), Problem> {
    if n.url.len() > MAX_TEXT || n.description.len() > MAX_TEXT {
        return Err(invalid(format!(
            "url and description are at most {MAX_TEXT} bytes"
        )));
    }
    let url = reqwest::Url::parse(&n.url).map_err(|e| invalid(format!("url: {e}")))?;
    check_url(&url, policy).map_err(|e| invalid(format!("url: {e}")))?;
    if n.types.is_empty() || n.types.len() > MAX_ITEMS {
        return Err(invalid(format!(
            "types: 1 to {MAX_ITEMS} event type patterns"
        )));
    }
    for t in &n.types {
        EventPattern::new(t.as_str()).map_err(|e| invalid(format!("types: {e}")))?;
    }
    if n.headers.len() > MAX_ITEMS {
        return Err(invalid(format!("headers: at most {MAX_ITEMS}")));
    }
    for (k, v) in &n.headers {
        let name = k.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("webhook-") {
            return Err(invalid(format!("headers: {k:?} is set by the bus")));
        }
        axum::http::HeaderName::try_from(k.as_str())
            .map_err(|_| invalid(format!("headers: {k:?} is not a header name")))?;
        if v.len() > MAX_TEXT || axum::http::HeaderValue::try_from(v.as_str()).is_err() {
            return Err(invalid(format!(
                "headers: the value of {k:?} is not a header value"
            )));
        }
    }
    Ok(())
}

pub async fn create(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    let body = read_bounded(&headers, body, &app.config.http).await?;
    let n: NewSubscription = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "malformed-json",
            format!("expected {{\"url\", \"types\", \"secret\"?, \"description\"?, \"headers\"?, \"enabled\"?}}: {e}"),
        )
    })?;
    validate(
        &n,
        &AddressPolicy::new(app.config.webhooks.allowed_networks.clone()),
    )?;
    let secret = match &n.secret {
        Some(text) => Secret::parse(text).map_err(|e| invalid(format!("secret: {e}")))?,
        None => {
            let mut key = vec![0u8; 32];
            OsRng.fill_bytes(&mut key);
            Secret::from_key(key).map_err(|e| invalid(e.to_string()))?
        }
    };
    let id = format!("wh-{}", uuid::Uuid::now_v7().simple());
    let sealed = w
        .key
        .seal(&id, secret.expose().as_bytes())
        .map_err(|e| Problem::unavailable(e.to_string(), 1))?;
    let created = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let sub = Subscription {
        id,
        url: n.url,
        types: n.types,
        enabled: n.enabled.unwrap_or(true),
        description: n.description,
        headers: n.headers,
        secrets: vec![sealed],
        created,
        disabled_reason: None,
    };
    store::put(&w.store, &sub).await.map_err(store_problem)?;
    if sub.enabled {
        wait_for_consumer(&w, &sub.id).await;
    }
    let mut answer = sub.public();
    answer["secret"] = json!(secret.expose());
    Ok((StatusCode::CREATED, Json(answer)))
}

pub async fn list(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    let subs = store::list(&w.store, MAX_SUBSCRIPTIONS)
        .await
        .map_err(store_problem)?;
    let items: Vec<Value> = subs.iter().map(Subscription::public).collect();
    Ok(Json(json!({ "webhooks": items })))
}

/// How long a creation waits for the subscription's consumer.
const CONSUMER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (at most [`CONSUMER_WAIT`]) until this node's engine made the subscription's
/// consumer, so that every event stored after the answer is delivered to it (a
/// subscription takes events from its consumer's creation on).
async fn wait_for_consumer(w: &Webhooks, id: &str) {
    let stream = &w.bus.config().streams.events_name;
    let name = group_name(id);
    let deadline = tokio::time::Instant::now() + CONSUMER_WAIT;
    while tokio::time::Instant::now() < deadline {
        let found = w
            .bus
            .jetstream()
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                &name, stream,
            )
            .await;
        if found.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::warn!(webhook = %id, "the subscription's consumer is not there yet");
}

fn not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-such-webhook",
        format!(
            "no webhook subscription {:?}",
            bus_core::binary_mode::excerpt(id)
        ),
    )
}

pub async fn get_one(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    match store::get(&w.store, &id).await.map_err(store_problem)? {
        Some(s) => Ok(Json(s.public())),
        None => Err(not_found(&id)),
    }
}

pub async fn delete(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    if store::get(&w.store, &id)
        .await
        .map_err(store_problem)?
        .is_none()
    {
        return Err(not_found(&id));
    }
    store::delete(&w.store, &id).await.map_err(store_problem)?;
    // Its consumer too (every node's member stops as it sees the deletion).
    let stream = &w.bus.config().streams.events_name;
    if let Err(e) = w
        .bus
        .jetstream()
        .delete_consumer_from_stream(group_name(&id), stream)
        .await
    {
        tracing::debug!(webhook = %id, error = %e, "the subscription's consumer was not deleted (maybe never made)");
    }
    Ok(StatusCode::NO_CONTENT)
}
