//! Push over WebSocket: `GET /v1/ws?types=..&since=..&token=..`. The same [`Session`]
//! as SSE, as text frames: `{"hello":{"node","epoch"}}` first, each event
//! `{"seq":N,"event":<CloudEvent>}`, `{"gap":{..}}` when a resume point is gone. The
//! client may send `{"subscribe":[patterns]}` and `{"unsubscribe":[patterns]}`, each
//! answered `{"ack":{..,"types":[now]}}` or `{"error":{..}}`. Pings every
//! `push.heartbeat`. Close codes: 1001 the node is stopping, 1008 the client fell behind
//! its buffer (resume from the last `seq`), 1012 the stream was made again (resume with
//! `since`, and a gap is announced), 1011 the stream could not be read, 1003/1007 a
//! message the node does not take.
//!
//! A browser's connection must come from the node's own origin or one of
//! `push.allowed_origins` (403 otherwise): browsers send cookies and credentials to any
//! WebSocket, so the origin is what keeps another site's page out.

use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::problem::{Problem, parsed_query};
use super::push::{connected, resume_point, transport};
use super::server::{ClientAddr, client_ip};
use crate::app::App;
use crate::push::access::{Reader, parse_patterns};
use crate::push::hub::CloseReason;
use crate::push::session::{Item, Session};

const WEBSOCKET: &str = "websocket";
/// Largest message a client may send (a subscribe with its patterns).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsQuery {
    types: Option<String>,
    since: Option<String>,
    token: Option<String>,
}

pub async fn upgrade(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let q = parsed_query(query, "types, since, token")?;
    check_origin(&headers, &app.config.push.allowed_origins)?;
    let reader = Reader::identify(&app, &headers, q.token.as_deref(), client_ip(&client))?;
    let patterns = reader.patterns(q.types.as_deref())?;
    let resume = resume_point(q.since.as_deref())?;
    let upgrade = upgrade.map_err(|e| {
        Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket-required",
            format!("this endpoint speaks WebSocket: {e}"),
        )
    })?;
    let (hub, bus) = connected(&app)?;
    let signal = tokio_util::sync::CancellationToken::new();
    let session = Session::open(hub.clone(), bus, patterns, resume, signal).await?;
    Ok(upgrade
        // Small buffers: an idle connection holds little.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let gauge = hub
                .metrics
                .clients
                .get_or_create(&transport(WEBSOCKET))
                .clone();
            gauge.inc();
            serve(socket, session, reader, &hub.metrics).await;
            gauge.dec();
        }))
}

/// 403 when a browser's `Origin` is neither the node's own (the `Host` it was asked
/// under) nor allowed. Clients that are not browsers send none and pass.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), Problem> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let own = origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority.eq_ignore_ascii_case(host));
    let listed = allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if own || listed {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "origin-not-allowed",
            format!(
                "WebSocket connections from origin {:?} are not allowed (push.allowed_origins)",
                bus_core::binary_mode::excerpt(origin)
            ),
        ))
    }
}

async fn serve(
    socket: WebSocket,
    mut session: Session,
    reader: Reader,
    metrics: &crate::metrics::PushMetrics,
) {
    let deliveries = metrics
        .deliveries
        .get_or_create(&transport(WEBSOCKET))
        .clone();
    let (mut sink, mut incoming) = socket.split();
    let cut_off = session.cut_signal();
    loop {
        tokio::select! {
            item = session.next() => {
                let message = match item {
                    None => break,
                    Some(Item::Event(frame)) => {
                        deliveries.inc();
                        Message::Text(frame.ws())
                    }
                    Some(Item::Hello { node, epoch }) => text(&json!({"hello": {"node": node, "epoch": epoch.as_str()}})),
                    Some(Item::Gap(gap)) => text(&json!({"gap": gap})),
                    Some(Item::Heartbeat) => Message::Ping(bytes::Bytes::new()),
                    Some(Item::Closed(reason)) => {
                        let _ = sink.send(close(reason)).await;
                        break;
                    }
                };
                // A client that does not read blocks the send: cut off meanwhile, it
                // is dropped (closing its connection) rather than waited for.
                let sent = tokio::select! {
                    sent = sink.send(message) => sent.is_ok(),
                    () = cut_off.cancelled() => false,
                };
                if !sent {
                    break;
                }
            }
            message = incoming.next() => {
                let reply = match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => match control(&mut session, &reader, t.as_str()) {
                        Ok(reply) => text(&reply),
                        Err(close) => {
                            let _ = sink.send(close).await;
                            break;
                        }
                    },
                    Some(Ok(Message::Binary(_))) => {
                        let _ = sink.send(close_with(close_code::UNSUPPORTED, "binary messages are not taken")).await;
                        break;
                    }
                    // tungstenite answers pings itself.
                    Some(Ok(_)) => continue,
                };
                if sink.send(reply).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    subscribe: Option<Vec<String>>,
    unsubscribe: Option<Vec<String>>,
}

/// A client's message: the answer to send, or the close when it is not one.
fn control(session: &mut Session, reader: &Reader, text: &str) -> Result<Value, Message> {
    let Ok(control) = serde_json::from_str::<Control>(text) else {
        return Err(close_with(
            close_code::INVALID,
            "expected {\"subscribe\": [..]} or {\"unsubscribe\": [..]}",
        ));
    };
    let (op, list, adding) = match (control.subscribe, control.unsubscribe) {
        (Some(list), None) => ("subscribe", list, true),
        (None, Some(list)) => ("unsubscribe", list, false),
        _ => {
            return Err(close_with(
                close_code::INVALID,
                "one of subscribe or unsubscribe",
            ));
        }
    };
    let error = |p: Problem| json!({"error": {"op": op, "type": p.slug, "detail": p.detail}});
    let patterns = match parse_patterns(&list.join(",")) {
        Ok(p) => p,
        Err(p) => return Ok(error(p)),
    };
    let mut now = session.patterns().to_vec();
    if adding {
        if let Err(p) = reader.check(&patterns) {
            return Ok(error(p));
        }
        for p in patterns {
            if !now.contains(&p) {
                now.push(p);
            }
        }
        if now.len() > crate::push::access::MAX_PATTERNS {
            return Ok(error(Problem::bad_request(
                "invalid-types",
                "too many patterns",
            )));
        }
    } else {
        now.retain(|p| !patterns.contains(p));
    }
    let types: Vec<&str> = now.iter().map(|p| p.as_str()).collect();
    let reply = json!({"ack": {op: list, "types": types}});
    session.set_patterns(now);
    Ok(reply)
}

fn text(value: &Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

fn close(reason: CloseReason) -> Message {
    match reason {
        CloseReason::Slow => close_with(
            close_code::POLICY,
            "slow: fell behind its buffer; resume from the last seq",
        ),
        CloseReason::GoingAway => close_with(
            close_code::AWAY,
            "shutdown: the node is stopping; resume on another",
        ),
        CloseReason::EpochChanged => close_with(
            close_code::RESTART,
            "epoch: the stream was made again; resume",
        ),
        CloseReason::Unavailable => close_with(
            close_code::ERROR,
            "unavailable: the stream cannot be read; resume",
        ),
    }
}

fn close_with(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}
