//! Operations on one webhook subscription: `POST /v1/webhooks/{id}/secret/rotate` (a new
//! secret; for `webhooks.secret_overlap` deliveries carry the previous one's signature
//! too), `POST .../test` (one `bus.webhook.test` delivery, made now, its outcome in the
//! answer), `GET .../attempts?after=&limit=` (the attempts log, a page at a time) and
//! `POST .../replay` (`{"since": RFC 3339}` or `{"since_seq": N}`: what the events
//! stream still holds, sent again to this subscription).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use bus_core::{Event, EventType};
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::read_bounded;
use super::problem::{Problem, page_limit, parsed_query};
use super::server::ClientAddr;
use super::webhooks::{admin_webhooks, invalid, not_found, store_problem};
use crate::app::App;
use crate::webhooks::attempt::Outcome;
use crate::webhooks::attempts_log::{DEFAULT_PAGE, MAX_PAGE};
use crate::webhooks::engine::{Target, attempt_now};
use crate::webhooks::replay::{self, ReplayError, Start};
use crate::webhooks::signature::Secret;
use crate::webhooks::store::{self, Subscription};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// The new secret; generated when absent.
    secret: Option<String>,
}

/// Reads a JSON body that may be empty (then `T::default()`).
async fn optional_json<T: for<'de> Deserialize<'de> + Default>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<T, Problem> {
    let bytes = read_bounded(headers, body, &app.config.http).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Problem::bad_request("malformed-json", format!("expected {expected}: {e}")))
}

pub async fn rotate(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    let r: Rotation = optional_json(&app, &headers, body, "{\"secret\"?}").await?;
    let secret = match &r.secret {
        Some(text) => Secret::parse(text).map_err(|e| invalid(format!("secret: {e}")))?,
        None => {
            let mut key = vec![0u8; 32];
            OsRng.fill_bytes(&mut key);
            Secret::from_key(key).map_err(|e| invalid(e.to_string()))?
        }
    };
    let sealed = w
        .key
        .seal(&id, secret.expose().as_bytes())
        .map_err(|e| Problem::unavailable(e.to_string(), 1))?;
    let overlap = i64::try_from(app.config.webhooks.secret_overlap.as_secs()).unwrap_or(i64::MAX);
    let until = store::now().saturating_add(overlap);
    let rotated = store::modify(&w.store, &id, |s| {
        // The newest secret signs on through the overlap; older ones stop now.
        let previous = s.secrets.first().cloned();
        s.secrets = std::iter::once(sealed.clone()).chain(previous).collect();
        s.previous_until = Some(until);
        true
    })
    .await
    .map_err(store_problem)?;
    if rotated.is_none() {
        return Err(not_found(&id));
    }
    Ok(Json(json!({
        "secret": secret.expose(),
        "previous_secret_until": store::rfc3339(until),
    })))
}

/// The subscription, or 404.
async fn subscription(
    w: &crate::webhooks::engine::Webhooks,
    id: &str,
) -> Result<Subscription, Problem> {
    store::get(&w.store, id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| not_found(id))
}

pub async fn test(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    let sub = subscription(&w, &id).await?;
    let target = Target::new(&sub, &w.key)
        .map_err(|e| Problem::unavailable(format!("the subscription cannot be used: {e}"), 1))?;
    let event_type =
        EventType::new("bus.webhook.test").map_err(|e| Problem::unavailable(e.to_string(), 1))?;
    let event = Event::builder(event_type, format!("bus-node/{}", w.node))
        .data_json(&json!({"webhook": id}))
        .map_err(|e| Problem::unavailable(e.to_string(), 1))?
        .build();
    let outcome = attempt_now(&w, &target, &event, 1).await;
    let answer = match outcome {
        Outcome::Delivered { status, took } => json!({
            "outcome": "delivered", "status": status, "duration_ms": took.as_secs_f64() * 1e3,
        }),
        Outcome::Gone { took } => json!({
            "outcome": "gone", "status": 410, "duration_ms": took.as_secs_f64() * 1e3,
        }),
        Outcome::Retry {
            status,
            error,
            took,
            ..
        } => json!({
            "outcome": "failed", "status": status,
            "error": status.is_none().then_some(error),
            "duration_ms": took.as_secs_f64() * 1e3,
        }),
        Outcome::Refused { reason } => json!({
            "outcome": "refused", "error": "blocked_destination", "detail": reason,
        }),
    };
    Ok(Json(json!({"event_id": event.id, "result": answer})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

pub async fn attempts(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<AttemptsQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    let q = parsed_query(query, "after and limit")?;
    let limit = page_limit(q.limit, DEFAULT_PAGE, MAX_PAGE)?;
    subscription(&w, &id).await?;
    let page = w
        .attempts
        .page(&id, q.after.unwrap_or(0), limit)
        .await
        .map_err(|e| Problem::unavailable(e.to_string(), 1))?;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|(seq, _)| *seq))
        .flatten();
    let items: Vec<Value> = page
        .into_iter()
        .map(|(seq, r)| {
            let mut v = json!(r);
            v["seq"] = json!(seq);
            v
        })
        .collect();
    Ok(Json(json!({"attempts": items, "next_after": next_after})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    since: Option<String>,
    since_seq: Option<u64>,
}

pub async fn replay(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, Problem> {
    let w = admin_webhooks(&app, &headers, &client)?;
    let r: ReplayRequest = optional_json(
        &app,
        &headers,
        body,
        "{\"since\": RFC 3339} or {\"since_seq\": N}",
    )
    .await?;
    let from = match (&r.since, r.since_seq) {
        (Some(t), None) => Start::Time(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| invalid(format!("since: an RFC 3339 time: {e}")))?,
        ),
        (None, Some(s)) => Start::Sequence(s),
        _ => {
            return Err(invalid(
                "give exactly one of since (RFC 3339) and since_seq (a stream sequence)",
            ));
        }
    };
    let sub = subscription(&w, &id).await?;
    let done = replay::replay(&w.bus, &sub, from)
        .await
        .map_err(|e| match e {
            ReplayError::Unavailable(why) => Problem::unavailable(why, 1),
            ReplayError::Types(why) => Problem::unavailable(why, 1),
        })?;
    Ok(Json(json!({
        "replayed": done.count,
        "next_since_seq": done.next_seq,
    })))
}
