//! `POST /v1/events`: one event in structured or binary mode, or a batch. Answers `202`
//! only after JetStream stored every event; bad input is refused before anything is
//! stored.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::{HeaderName as NatsName, HeaderValue as NatsValue};
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bus_core::binary_mode::{EncodeError, excerpt};
use bus_core::{Event, binary_mode, structured};
use bus_sdk::{PublishError, PublishErrorKind, PublishReceipt};
use bytes::Bytes;
use serde_json::{Value, json};

use super::body::read_bounded;
use super::problem::Problem;
use super::server::{ClientAddr, client_ip};
use crate::app::App;
use crate::metrics::{OutcomeLabels, SendLabels};

pub const STRUCTURED: &str = "application/cloudevents+json";
pub const BATCH: &str = "application/cloudevents-batch+json";

enum Mode {
    Structured,
    Batch,
    Binary,
}

pub async fn post_events(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let began = Instant::now();
    let principal = app.auth.authenticate(&headers, client_ip(&client))?;
    let mode = mode(&headers)?;
    let bytes = read_bounded(&headers, body, &app.config.http).await?;
    let events = match mode {
        Mode::Structured => vec![structured::from_json(&bytes).map_err(invalid)?],
        Mode::Batch => {
            let events = structured::batch_from_json(&bytes).map_err(invalid)?;
            if events.len() > app.config.http.max_batch {
                return Err(Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch-too-large",
                    format!(
                        "{} events; the limit is {} (http.max_batch)",
                        events.len(),
                        app.config.http.max_batch
                    ),
                ));
            }
            events
        }
        Mode::Binary => vec![from_binary(&headers, bytes)?],
    };
    for (i, e) in events.iter().enumerate() {
        principal.check_publish(&e.event_type)?;
        // Refuse what cannot be put on NATS before storing any event of the request: the
        // rule of the SDK's publish (`binary_mode::check_value`), a permanent 4xx.
        binary_mode::encode(e).map_err(|err| encode_problem(&mode, i, e, &err))?;
    }
    principal.check_rate(u32::try_from(events.len()).unwrap_or(u32::MAX))?;
    let bus = app
        .bus()
        .filter(|b| b.client().connection_state() == async_nats::connection::State::Connected)
        .ok_or_else(|| Problem::unavailable("NATS is not reachable from this node", 1))?;
    if !app.nats_answering() {
        // Refused before anything is sent: nothing of this request is stored.
        return Err(Problem::unavailable(
            "NATS is not answering this node (see /readyz); nothing was stored",
            2,
        ));
    }

    tracing::debug!(
        caller = principal.name(),
        events = events.len(),
        "publishing"
    );
    let start = Instant::now();
    let publish = async {
        match mode {
            Mode::Batch => bus.publish_batch(&events).await,
            _ => vec![bus.publish_event(&events[0]).await],
        }
    };
    // Answer before the request deadline cuts the request off, so that the answer can
    // say what is known: sent, so perhaps stored.
    let deadline =
        publish_deadline(app.config.http.request_timeout).saturating_sub(began.elapsed());
    let Ok(results) = tokio::time::timeout(deadline, publish).await else {
        // Each event's outcome is unknown.
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        app.metrics
            .publishes
            .get_or_create(&OutcomeLabels { outcome: "unknown" })
            .inc_by(count);
        let timed_out = SendLabels::publish(Some("timeout"));
        app.metrics.sent.get_or_create(&timed_out).inc_by(count);
        app.metrics
            .publish_duration
            .get_or_create(&timed_out)
            .observe(start.elapsed().as_secs_f64());
        return Err(outcome_unknown(format!("no PubAck within {deadline:?}")));
    };
    let failed = results
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| e.kind().as_str()));
    app.metrics
        .publish_duration
        .get_or_create(&SendLabels::publish(failed))
        .observe(start.elapsed().as_secs_f64());
    let mut receipts = Vec::with_capacity(results.len());
    let mut first_error = None;
    for r in results {
        let outcome = match &r {
            Ok(r) if r.duplicate => "duplicate",
            Ok(_) => "stored",
            Err(_) => "failed",
        };
        app.metrics
            .publishes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        let error_type = r.as_ref().err().map(|e| e.kind().as_str());
        app.metrics
            .sent
            .get_or_create(&SendLabels::publish(error_type))
            .inc();
        match r {
            Ok(receipt) => receipts.push(receipt_json(&receipt)),
            Err(e) => {
                receipts.push(json!({"error": e.to_string(), "id": excerpt(e.event_id())}));
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        let problem = publish_problem(&e);
        return Err(if matches!(mode, Mode::Batch) {
            problem.with_extra(json!({"results": receipts}))
        } else {
            problem
        });
    }
    let body = match mode {
        Mode::Batch => Value::Array(receipts),
        _ => receipts.into_iter().next().unwrap_or(Value::Null),
    };
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

fn mode(headers: &HeaderMap) -> Result<Mode, Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == STRUCTURED {
        Ok(Mode::Structured)
    } else if essence == BATCH {
        Ok(Mode::Batch)
    } else if headers.contains_key("ce-specversion") {
        Ok(Mode::Binary)
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!(
                "content type {ct:?} without ce-* headers: send {STRUCTURED}, {BATCH}, or binary mode (ce-id, ce-source, ce-type, ce-specversion headers)"
            ),
        ))
    }
}

/// A structured-mode body refused: `malformed-json` when it is not JSON, else
/// `invalid-event`. `structured` reads the envelope's values as raw text (no recursion)
/// and checks `data` within serde_json's 128-level limit, so no body can exhaust the
/// stack; each event's JSON `data` keeps the exact bytes of the body.
fn invalid(e: structured::StructuredError) -> Problem {
    let slug = match e {
        structured::StructuredError::Malformed(_) => "malformed-json",
        _ => "invalid-event",
    };
    Problem::bad_request(slug, e.to_string())
}

fn from_binary(headers: &HeaderMap, body: Bytes) -> Result<Event, Problem> {
    let mut nats = async_nats::HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        let carried =
            n.starts_with("ce-") || n == "content-type" || n == "traceparent" || n == "tracestate";
        if !carried {
            continue;
        }
        let bad = || {
            Problem::bad_request(
                "invalid-header",
                format!("header {n} is not printable ASCII"),
            )
        };
        let v = value.to_str().map_err(|_| bad())?;
        let name = NatsName::from_str(n).map_err(|_| bad())?;
        let value = NatsValue::from_str(v).map_err(|_| bad())?;
        nats.insert(name, value);
    }
    let event = binary_mode::decode(Some(&nats), body)
        .map_err(|e| Problem::bad_request("invalid-event", e.to_string()))?;
    check_json_data(&event)?;
    Ok(event)
}

/// Binary mode with a JSON `content-type`: the body must be JSON, as a consumer that
/// reads the type will parse it (an empty body is no data). Only syntax is checked; the
/// bytes are stored as sent.
fn check_json_data(event: &Event) -> Result<(), Problem> {
    let json = event
        .datacontenttype
        .as_deref()
        .is_some_and(structured::is_json);
    if !json || event.data.is_empty() {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&event.data)
        .map(|_| ())
        .map_err(|e| {
            Problem::bad_request(
                "malformed-json",
                format!("the body is not the JSON its content-type says: {e}"),
            )
        })
}

/// `413` for headers over the total limit, else `400`; quoting at most an excerpt of
/// the id.
fn encode_problem(mode: &Mode, index: usize, e: &Event, err: &EncodeError) -> Problem {
    let which = match mode {
        Mode::Batch => format!("event {index} of the batch (id {:?})", excerpt(&e.id)),
        _ => format!("event {:?}", excerpt(&e.id)),
    };
    let detail = format!("{which}: {err}");
    match err {
        EncodeError::HeadersTooLarge { .. } => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", detail)
        }
        _ => Problem::bad_request("invalid-event", detail),
    }
}

fn receipt_json(r: &PublishReceipt) -> Value {
    json!({"id": r.id, "type": r.event_type, "stream": r.stream, "seq": r.seq, "duplicate": r.duplicate})
}

fn publish_problem(e: &PublishError) -> Problem {
    match e.kind() {
        PublishErrorKind::TooLarge => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", e.to_string())
        }
        PublishErrorKind::Unavailable => outcome_unknown(e.to_string()),
        PublishErrorKind::Rejected => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "rejected", e.to_string()).retry_after(5)
        }
        _ => Problem::bad_request("invalid-event", e.to_string()),
    }
}

/// How long a request's publishes may take: the request deadline less a margin (a
/// tenth, at most a second) for the answer to be written.
fn publish_deadline(request_timeout: Duration) -> Duration {
    let margin = (request_timeout / 10).min(Duration::from_secs(1));
    request_timeout.saturating_sub(margin)
}

/// `503 outcome-unknown`: the event was sent but JetStream's answer did not come in time,
/// so it may or may not be stored. A retry with the same source and id is safe: it is
/// stored at most once, and its answer says `"duplicate": true` if the first one was.
pub fn outcome_unknown(why: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        OUTCOME_UNKNOWN,
        format!(
            "outcome unknown: retry with the same id, it is safe (a retry is de-duplicated): {why}"
        ),
    )
    .retry_after(1)
}

/// The problem type slug of [`outcome_unknown`].
pub const OUTCOME_UNKNOWN: &str = "outcome-unknown";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::publish_deadline;

    #[test]
    fn the_publish_deadline_leaves_room_for_the_answer() {
        assert_eq!(
            publish_deadline(Duration::from_secs(30)),
            Duration::from_secs(29)
        );
        assert_eq!(
            publish_deadline(Duration::from_secs(2)),
            Duration::from_millis(1800)
        );
    }
}
