//! Admin endpoints (admin API keys only): consumer groups, dead letters, redrive.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use bus_core::GroupName;
use bus_sdk::Bus;
use bus_sdk::admin::AdminError;
use bus_sdk::dead_letter::MAX_DEAD_LETTER_PAGE;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::read_bounded;
use super::problem::{Problem, parsed_query};
use super::server::{ClientAddr, client_ip};
use crate::app::App;

/// Dead letters per page unless `limit` says otherwise.
pub const DEFAULT_DLQ_PAGE: usize = 100;

fn admin_bus<'a>(
    app: &'a App,
    headers: &HeaderMap,
    client: &Option<Extension<ClientAddr>>,
) -> Result<&'a Bus, Problem> {
    let principal = app.auth.authenticate(headers, client_ip(client))?;
    principal.check_admin()?;
    app.bus()
        .ok_or_else(|| Problem::unavailable("NATS is not reachable from this node", 1))
}

fn admin_problem(e: AdminError) -> Problem {
    Problem::unavailable(e.to_string(), 1)
}

/// A group name from a request: 400 `invalid-group` naming what is wrong.
fn group_name(name: String) -> Result<GroupName, Problem> {
    GroupName::new(name).map_err(|e| Problem::bad_request("invalid-group", e.to_string()))
}

pub async fn list_groups(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let bus = admin_bus(&app, &headers, &client)?;
    let groups = bus.groups().await.map_err(admin_problem)?;
    // One Services API query for every group's members; a group whose members cannot be
    // asked is still listed, without them.
    let members = match bus.members(None).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask for group members");
            Vec::new()
        }
    };
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|g| {
            let of_group: Vec<&bus_sdk::Member> =
                members.iter().filter(|m| m.group == g.name).collect();
            let mut v = serde_json::to_value(&g).unwrap_or(Value::Null);
            // An ordered group's partitions name the member that serves each.
            if let (Some(partitions), Some(listed)) = (
                &g.partitions,
                v.get_mut("partitions").and_then(Value::as_array_mut),
            ) {
                let members: Vec<bus_sdk::Member> = of_group.iter().map(|m| (*m).clone()).collect();
                let count = u32::try_from(partitions.len()).unwrap_or(u32::MAX);
                for (info, entry) in partitions.iter().zip(listed.iter_mut()) {
                    entry["owner"] =
                        bus_sdk::presence::partition_owner(&members, info.partition, count)
                            .map_or(Value::Null, |m| Value::String(m.id.clone()));
                }
            }
            v["members"] = serde_json::to_value(of_group).unwrap_or(Value::Null);
            v
        })
        .collect();
    Ok(Json(json!({ "groups": groups })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqQuery {
    group: Option<String>,
    /// Dead-letter sequence to continue after (`next_after` of the previous page).
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

pub async fn list_dead_letters(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    query: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    // The key first: a caller without one learns nothing about the query's shape.
    let bus = admin_bus(&app, &headers, &client)?;
    let q = parsed_query(query, "group, after and limit")?;
    let limit = q
        .limit
        .unwrap_or(DEFAULT_DLQ_PAGE)
        .clamp(1, MAX_DEAD_LETTER_PAGE);
    let group = q.group.map(group_name).transpose()?;
    let page = bus
        .dead_letters(group.as_ref(), q.after, limit)
        .await
        .map_err(admin_problem)?;
    let next_after = page.next_after;
    let items: Vec<Value> = page
        .letters
        .iter()
        .map(|l| {
            let h = |k: &str| {
                bus_core::headers::get_ignore_case(&l.letter.headers, k).map(str::to_owned)
            };
            json!({
                "seq": l.seq,
                "group": l.letter.group,
                "reason": l.letter.reason,
                "attempts": l.letter.attempts,
                "event_id": l.letter.event_id,
                "type": h("ce-type"),
                "stream": l.letter.stream,
                "stream_seq": l.letter.stream_seq,
                "subject": l.letter.subject,
                "dead_lettered_at": h(bus_core::headers::DLQ_TIME),
            })
        })
        .collect();
    Ok(Json(
        json!({ "dead_letters": items, "next_after": next_after }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    group: String,
    /// Event ids to redrive; omit and set `all` to redrive every dead letter of the group.
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

pub async fn redrive(
    State(app): State<Arc<App>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let bus = admin_bus(&app, &headers, &client)?;
    let body = read_bounded(&headers, body, &app.config.http).await?;
    let req: RedriveRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "malformed-json",
            format!("expected {{\"group\", \"ids\" | \"all\"}}: {e}"),
        )
    })?;
    let ids = match (req.ids, req.all) {
        (Some(ids), false) if !ids.is_empty() => Some(ids),
        (None, true) => None,
        _ => {
            return Err(Problem::bad_request(
                "invalid-redrive",
                "give either a non-empty \"ids\" list or \"all\": true",
            ));
        }
    };
    let group = group_name(req.group)?;
    let n = bus
        .redrive_group(&group, ids.as_deref())
        .await
        .map_err(admin_problem)?;
    Ok((
        StatusCode::OK,
        Json(json!({ "group": group, "redriven": n })),
    ))
}
