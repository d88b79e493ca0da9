//! `POST/GET /v1/webhooks`, `GET/PATCH/DELETE /v1/webhooks/{id}`: webhook subscriptions,
//! for admin keys and keys with the `webhooks` scope. A subscription's secret is
//! generated unless given (`whsec_...`), shown in the answer to its creation (or
//! rotation) only, and stored sealed. `GET` gives the stored revision as `ETag`; `PATCH`
//! with `If-Match` changes it only if that is still the revision (412 otherwise).
//! The operations (`/secret/rotate`, `/test`, `/attempts`, `/replay`) are in
//! `webhook_operations.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use bus_core::EventPattern;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::read_bounded;
use super::problem::{Problem, page_limit, parsed_query};
use super::server::{ClientAddr, client_ip};
use crate::app::App;
use crate::webhooks::attempt::check_url;
use crate::webhooks::engine::{Webhooks, group_name};
use crate::webhooks::signature::Secret;
use crate::webhooks::ssrf::AddressPolicy;
use crate::webhooks::store::{self, StoreError, Subscription};

/// Subscription keys a listing looks at, at most.
pub const MAX_SUBSCRIPTIONS: usize = 100_000;
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
    rate_limit: Option<u32>,
    /// Sign with an Ed25519 key too (`v1a`); the answer gives its public key.
    #[serde(default)]
    ed25519: bool,
}

/// A `PATCH`: the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    url: Option<String>,
    types: Option<Vec<String>>,
    description: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    enabled: Option<bool>,
    /// `null` removes the limit; absent keeps it.
    #[serde(default, deserialize_with = "some_or_null")]
    rate_limit: Option<Option<u32>>,
    /// `true` adds an Ed25519 key (a new one each time), `false` removes it.
    ed25519: Option<bool>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn some_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The webhooks state, after the caller is checked as one who may manage them.
pub(super) fn admin_webhooks(
    app: &App,
    headers: &HeaderMap,
    client: &Option<Extension<ClientAddr>>,
) -> Result<Arc<Webhooks>, Problem> {
    app.auth
        .authenticate(headers, client_ip(client))?
        .check_webhooks()?;
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

pub(super) fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::Conflict(_) => Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "webhook-changed",
            "the subscription changed meanwhile: read it again (GET gives its ETag) and retry",
        ),
        e => Problem::unavailable(e.to_string(), 1),
    }
}

pub(super) fn invalid(detail: impl Into<String>) -> Problem {
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

/// Most deliveries per second a subscription may be limited to.
const MAX_RATE_LIMIT: u32 = 100_000;

fn validate_url(url: &str, policy: &AddressPolicy) -> Result<(), Problem> {
    if url.len() > MAX_TEXT {
        return Err(invalid(format!("url: at most {MAX_TEXT} bytes")));
    }
    let url = reqwest::Url::parse(url).map_err(|e| invalid(format!("url: {e}")))?;
    check_url(&url, policy).map_err(|e| invalid(format!("url: {e}")))
}

fn validate_types(types: &[String]) -> Result<(), Problem> {
    if types.is_empty() || types.len() > MAX_ITEMS {
        return Err(invalid(format!(
            "types: 1 to {MAX_ITEMS} event type patterns"
        )));
    }
    for t in types {
        EventPattern::new(t.as_str()).map_err(|e| invalid(format!("types: {e}")))?;
    }
    Ok(())
}

fn validate_description(d: &str) -> Result<(), Problem> {
    if d.len() > MAX_TEXT {
        return Err(invalid(format!("description: at most {MAX_TEXT} bytes")));
    }
    Ok(())
}

fn validate_rate(r: Option<u32>) -> Result<(), Problem> {
    match r {
        Some(r) if r == 0 || r > MAX_RATE_LIMIT => Err(invalid(format!(
            "rate_limit: 1 to {MAX_RATE_LIMIT} deliveries per second, or null for none"
        ))),
        _ => Ok(()),
    }
}

fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), Problem> {
    if headers.len() > MAX_ITEMS {
        return Err(invalid(format!("headers: at most {MAX_ITEMS}")));
    }
    for (k, v) in headers {
        let name = k.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&name.as_str())
            || name.starts_with("webhook-")
            || name == "traceparent"
            || name == "tracestate"
        {
            return Err(invalid(format!("headers: {k:?} is set by the bus")));
        }
        if HOP_BY_HOP.contains(&name.as_str()) {
            return Err(invalid(format!(
                "headers: {k:?} is a hop-by-hop header, not one to send"
            )));
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

/// Hop-by-hop headers (RFC 9110 7.6.1), which a client does not forward.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

fn validate(n: &NewSubscription, policy: &AddressPolicy) -> Result<(), Problem> {
    validate_url(&n.url, policy)?;
    validate_description(&n.description)?;
    validate_types(&n.types)?;
    validate_headers(&n.headers)?;
    validate_rate(n.rate_limit)
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
            format!("expected {{\"url\", \"types\", \"secret\"?, \"description\"?, \"headers\"?, \"enabled\"?, \"rate_limit\"?, \"ed25519\"?}}: {e}"),
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
    let mut sub = Subscription {
        id,
        url: n.url,
        types: n.types,
        enabled: n.enabled.unwrap_or(true),
        description: n.description,
        headers: n.headers,
        secrets: vec![sealed],
        previous_until: None,
        rate_limit: n.rate_limit,
        failing_since: None,
        ed25519: None,
        public_key: None,
        created,
        disabled_reason: None,
        from_seq: Some(next_sequence(&w).await?),
    };
    if n.ed25519 {
        sub.add_ed25519(&w.key)
            .map_err(|e| Problem::unavailable(e.to_string(), 1))?;
    }
    store::put(&w.store, &sub).await.map_err(store_problem)?;
    if sub.enabled {
        wait_for_consumer(&w, &sub.id).await;
    }
    let mut answer = sub.public();
    answer["secret"] = json!(secret.expose());
    Ok((StatusCode::CREATED, Json(answer)))
}

/// The sequence the events stream gives the next event it stores: where a subscription
/// made now starts.
async fn next_sequence(w: &Webhooks) -> Result<u64, Problem> {
    let name = &w.bus.config().streams.events_name;
    let info = async {
        let mut stream = w
            .bus
            .jetstream()
            .get_stream(name)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .info()
            .await
            .map(|i| i.state.last_sequence)
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(w.bus.config().nats.request_timeout * 2, info).await {
        Ok(Ok(last)) => Ok(last + 1),
        Ok(Err(e)) => Err(Problem::unavailable(
            format!("the events stream is not reachable: {e}"),
            1,
        )),
        Err(_) => Err(Problem::unavailable(
            "the events stream did not answer in time",
            1,
        )),
    }
}

/// Subscriptions one page lists unless asked for fewer.
const DEFAULT_LIST_PAGE: usize = 100;
/// Most subscriptions one page lists.
const MAX_LIST_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// A page of subscriptions in id order (ids are time-ordered: oldest first) after
/// `after`; `next_after` is the id to pass for the next page, `null` at the end.
pub async fn list(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    let q = parsed_query(query, "after and limit")?;
    let limit = page_limit(q.limit, DEFAULT_LIST_PAGE, MAX_LIST_PAGE)?;
    let (subs, more) = store::page(&w.store, q.after.as_deref(), limit, MAX_SUBSCRIPTIONS)
        .await
        .map_err(store_problem)?;
    let next_after = more.then(|| subs.last().map(|s| s.id.clone())).flatten();
    let items: Vec<Value> = subs.iter().map(Subscription::public).collect();
    Ok(Json(json!({ "webhooks": items, "next_after": next_after })))
}

/// How long a creation waits for the subscription's consumer.
const CONSUMER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (at most [`CONSUMER_WAIT`]) until this node's engine made the subscription's
/// consumer, so that deliveries have begun when the creation answers. Every event stored
/// after the answer is delivered whether or not it has: the consumer starts at the
/// subscription's `from_seq`.
pub(super) async fn wait_for_consumer(w: &Webhooks, id: &str) {
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

pub(super) fn not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-such-webhook",
        format!(
            "no webhook subscription {:?}",
            bus_core::binary_mode::excerpt(id)
        ),
    )
}

/// `"<revision>"`, the subscription's `ETag`.
fn etag(revision: u64) -> [(axum::http::HeaderName, String); 1] {
    [(axum::http::header::ETAG, format!("\"{revision}\""))]
}

pub async fn get_one(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    match store::entry(&w.store, &id).await.map_err(store_problem)? {
        Some((s, revision)) => Ok((etag(revision), Json(s.public()))),
        None => Err(not_found(&id)),
    }
}

/// The revision `If-Match` names, if the request has one; `*` matches any.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<u64>()
        .map(Some)
        .map_err(|_| {
            Problem::bad_request(
                "invalid-if-match",
                "If-Match: give the ETag a GET answered (\"<revision>\")",
            )
        })
}

pub async fn patch(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    let expected = if_match(&headers)?;
    let body = read_bounded(&headers, body, &app.config.http).await?;
    let c: Change = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "malformed-json",
            format!("expected some of {{\"url\", \"types\", \"description\", \"headers\", \"enabled\", \"rate_limit\", \"ed25519\"}} (the secret changes with /secret/rotate): {e}"),
        )
    })?;
    let policy = AddressPolicy::new(app.config.webhooks.allowed_networks.clone());
    if let Some(u) = &c.url {
        validate_url(u, &policy)?;
    }
    if let Some(t) = &c.types {
        validate_types(t)?;
    }
    if let Some(d) = &c.description {
        validate_description(d)?;
    }
    if let Some(h) = &c.headers {
        validate_headers(h)?;
    }
    if let Some(r) = c.rate_limit {
        validate_rate(r)?;
    }
    let Some((mut sub, revision)) = store::entry(&w.store, &id).await.map_err(store_problem)?
    else {
        return Err(not_found(&id));
    };
    if expected.is_some_and(|e| e != revision) {
        return Err(store_problem(StoreError::Conflict(revision)));
    }
    if let Some(u) = c.url {
        sub.url = u;
    }
    if let Some(t) = c.types {
        sub.types = t;
    }
    if let Some(d) = c.description {
        sub.description = d;
    }
    if let Some(h) = c.headers {
        sub.headers = h;
    }
    if let Some(r) = c.rate_limit {
        sub.rate_limit = r;
    }
    match c.ed25519 {
        Some(true) => sub
            .add_ed25519(&w.key)
            .map_err(|e| Problem::unavailable(e.to_string(), 1))?,
        Some(false) => {
            sub.ed25519 = None;
            sub.public_key = None;
        }
        None => {}
    }
    let enabling = c.enabled == Some(true) && !sub.enabled;
    if let Some(e) = c.enabled {
        sub.enabled = e;
    }
    if enabling {
        sub.disabled_reason = None;
        sub.failing_since = None;
    }
    let new_revision = store::update(&w.store, &sub, revision)
        .await
        .map_err(store_problem)?;
    if enabling {
        wait_for_consumer(&w, &sub.id).await;
    }
    Ok((etag(new_revision), Json(sub.public())))
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
