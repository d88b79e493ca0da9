//! Push over HTTP: `GET /v1/events/stream` (Server-Sent Events) and
//! `POST /v1/push/tokens`. The stream is a [`Session`] written as SSE: a `retry:` hint
//! and a `bus.push.hello` event (node, epoch), the events (`id: <epoch>:<seq>`,
//! `event: <type>`, `data: <CloudEvent>`), `bus.push.gap` when a resume point is gone,
//! heartbeat comments, and a last comment `: bus.push.closed <reason>` when the node
//! ends the stream.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::read_bounded;
use super::problem::{Problem, parsed_query};
use super::server::{ClientAddr, ConnectionKill, client_ip};
use crate::app::App;
use crate::push::access::{Reader, parse_patterns};
use crate::push::frame::sse_notice;
use crate::push::hub::Hub;
use crate::push::position::Position;
use crate::push::session::{Item, Session};
use crate::push::token::Claims;

/// Which transport a client uses (a metrics label).
pub const SSE: &str = "sse";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    types: Option<String>,
    token: Option<String>,
    last_event_id: Option<String>,
}

/// The node's hub and bus, or 503 while it connects.
pub fn connected(app: &App) -> Result<(Arc<Hub>, bus_sdk::Bus), Problem> {
    match (app.push(), app.bus()) {
        (Some(hub), Some(bus)) if !app.is_draining() => Ok((hub.clone(), bus.clone())),
        _ if app.is_draining() => Err(Problem::unavailable("the node is shutting down", 1)),
        _ => Err(Problem::unavailable("NATS not connected yet", 1)),
    }
}

/// A resume point from text (`Last-Event-ID`, `last_event_id`, `since`); 400 when it is
/// not one.
pub fn resume_point(text: Option<&str>) -> Result<Option<Position>, Problem> {
    text.filter(|t| !t.trim().is_empty())
        .map(|t| {
            Position::parse(t)
                .map_err(|e| Problem::bad_request("invalid-resume-point", e.to_string()))
        })
        .transpose()
}

pub async fn stream(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    kill: Option<Extension<ConnectionKill>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let q = parsed_query(query, "types, last_event_id, token")?;
    let reader = Reader::identify(&app, &headers, q.token.as_deref(), client_ip(&client))?;
    let patterns = reader.patterns(q.types.as_deref())?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.last_event_id.as_deref());
    let resume = resume_point(last_event_id)?;
    let (hub, bus) = connected(&app)?;
    // Cut off, the client's connection ends even if it never reads again.
    let signal = kill.map(|k| k.0.0.clone()).unwrap_or_default();
    let session = Session::open(hub.clone(), bus, patterns, resume, signal).await?;
    let gauge = hub.metrics.clients.get_or_create(&transport(SSE)).clone();
    let deliveries = hub
        .metrics
        .deliveries
        .get_or_create(&transport(SSE))
        .clone();
    gauge.inc();
    let connected = Connected(gauge);
    let body = futures::stream::unfold(Some((session, connected)), move |state| {
        let deliveries = deliveries.clone();
        async move {
            let (mut session, connected) = state?;
            let item = session.next().await?;
            let (bytes, more) = match item {
                Item::Event(frame) => {
                    deliveries.inc();
                    (frame.sse(), true)
                }
                Item::Closed(reason) => (
                    Bytes::from(format!(": bus.push.closed {}\n\n", reason.as_str())),
                    false,
                ),
                other => (sse_item(&other), true),
            };
            let next = more.then_some((session, connected));
            Some((Ok::<_, std::convert::Infallible>(bytes), next))
        }
    });
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies (nginx) that buffer responses would hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Counts a connected client for as long as it lives.
struct Connected(prometheus_client::metrics::gauge::Gauge);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub fn transport(name: &'static str) -> crate::metrics::TransportLabels {
    crate::metrics::TransportLabels { transport: name }
}

/// An item other than an event or the end, as SSE.
fn sse_item(item: &Item) -> Bytes {
    match item {
        Item::Hello { node, epoch } => {
            let mut out = BytesMut::new();
            out.put_slice(format!("retry: {}\n\n", crate::push::RETRY_HINT_MS).as_bytes());
            out.put_slice(&sse_notice(
                "bus.push.hello",
                &json!({"node": node, "epoch": epoch.as_str()}),
            ));
            out.freeze()
        }
        Item::Gap(gap) => sse_notice("bus.push.gap", gap),
        Item::Heartbeat => Bytes::from_static(b": heartbeat\n\n"),
        Item::Event(frame) => frame.sse(),
        Item::Closed(reason) => Bytes::from(format!(": bus.push.closed {}\n\n", reason.as_str())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    types: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<std::time::Duration>,
}

/// `POST /v1/push/tokens`: a token for what the calling key may read (or the part of it
/// asked for), valid `push.token_ttl` or the shorter `ttl` asked for.
pub async fn issue_token(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let reader = Reader::identify(&app, &headers, None, client_ip(&client))?;
    let Some(key) = app.push_token_key() else {
        return Err(Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "push-tokens-off",
            "this node issues no push tokens: set push.token_key_file",
        ));
    };
    let body = read_bounded(&headers, body, &app.config.http).await?;
    let request: TokenRequest = if body.is_empty() {
        TokenRequest {
            types: None,
            ttl: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Problem::bad_request(
                "malformed-json",
                format!("expected {{\"types\"?: [patterns], \"ttl\"?: \"5m\"}}: {e}"),
            )
        })?
    };
    let asked = request.types.map(|t| t.join(","));
    // Validates the patterns and checks them against the key.
    let patterns = match asked.as_deref() {
        Some(text) if parse_patterns(text)?.is_empty() => {
            return Err(Problem::bad_request(
                "invalid-types",
                "types: give at least one pattern, or leave types out",
            ));
        }
        other => reader.patterns(other)?,
    };
    let max = app.config.push.token_ttl;
    let ttl = match request.ttl {
        None => max,
        Some(t) if t.is_zero() || t > max => {
            return Err(Problem::bad_request(
                "invalid-ttl",
                format!(
                    "ttl: must be more than zero and at most {} (push.token_ttl)",
                    humantime_serde::re::humantime::format_duration(max)
                ),
            ));
        }
        Some(t) => t,
    };
    let expires = time::OffsetDateTime::now_utc() + ttl;
    let claims = Claims {
        key: reader.name.clone(),
        types: patterns.iter().map(|p| p.as_str().to_owned()).collect(),
        exp: expires.unix_timestamp(),
    };
    let token = key.issue(&claims);
    let expires_at = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": expires_at, "types": claims.types})),
    ))
}
