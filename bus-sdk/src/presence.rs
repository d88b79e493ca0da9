//! Who the members of a consumer group are, through the NATS Services API: each running
//! member is an instance of the service `bus-<group>`, so it answers `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS` (`nats micro ls`, `nats micro info bus-billing`) with
//! metadata saying which events stream and group it serves, the event types it handles,
//! its host and its process id. A member that stops leaves at once; one that dies leaves
//! with its connection. Nothing is stored: [`Bus::members`] asks the live ones.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::service::{Info, Service, ServiceExt};
use bus_core::{EventType, GroupName};
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::admin::AdminError;
use crate::bus::Bus;
use crate::send_deadline::{self, SEND_DEADLINE};

/// Prefix of a group's service name: members of `billing` are instances of `bus-billing`
/// ([`service_name`]).
pub const SERVICE_PREFIX: &str = "bus-";
/// Metadata key: the group ([`Member::group`]; see [`Bus::members`]).
pub const META_GROUP: &str = "bus.group";
/// Metadata key: the events stream the group consumes; [`Bus::members`] lists only the
/// members of its own.
pub const META_STREAM: &str = "bus.stream";
/// Metadata key: the event types the member handles, comma-separated ([`Member::types`]).
pub const META_TYPES: &str = "bus.types";
/// Metadata key: the member's host name ([`Member::host`]).
pub const META_HOST: &str = "host";
/// Metadata key: the member's process id ([`Member::pid`]).
pub const META_PID: &str = "pid";

/// How long [`Bus::members`] waits for answers at most.
pub const MEMBERS_WAIT: Duration = Duration::from_secs(1);
/// [`Bus::members`] stops once no new answer came for this long after the last one.
pub const MEMBERS_QUIET: Duration = Duration::from_millis(200);
/// Most members one [`Bus::members`] call returns (example there).
pub const MAX_MEMBERS: usize = 10_000;
/// Largest answer read; larger ones are skipped (anyone who can answer on `$SRV.INFO`
/// could otherwise make a listing hold megabytes per entry). See [`Bus::members`].
pub const MAX_INFO_BYTES: usize = 64 * 1024;

/// The service name of a group's members.
///
/// ```
/// use bus_sdk::{GroupName, presence::service_name};
/// // `nats micro info bus-billing` lists billing's members.
/// assert_eq!(service_name(&GroupName::new("billing")?), "bus-billing");
/// # Ok::<(), bus_sdk::GroupNameError>(())
/// ```
pub fn service_name(group: &GroupName) -> String {
    format!("{SERVICE_PREFIX}{group}")
}

/// A member's registration as a service instance; it leaves when stopped or dropped.
#[derive(Debug)]
pub(crate) struct Presence(Option<Service>);

impl Presence {
    /// This member's service instance id, as [`Bus::members`] lists it.
    pub(crate) async fn id(&self) -> Option<String> {
        match &self.0 {
            Some(service) => Some(service.info().await.id),
            None => None,
        }
    }

    /// Leaves the group's members.
    pub(crate) async fn stop(mut self) {
        if let Some(service) = self.0.take() {
            let _ = service.stop().await;
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some(service) = self.0.take() {
            // `Service::stop` does not wait for anything: it completes on its first poll.
            let _ = service.stop().now_or_never();
        }
    }
}

/// Joins `group`'s members as a service instance handling `types`.
pub(crate) async fn announce(
    bus: &Bus,
    group: &GroupName,
    types: &[EventType],
) -> Result<Presence, String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let types: Vec<&str> = types.iter().map(EventType::as_str).collect();
    let metadata = HashMap::from([
        (META_GROUP.to_owned(), group.to_string()),
        (
            META_STREAM.to_owned(),
            bus.config().streams.events_name.clone(),
        ),
        (META_TYPES.to_owned(), types.join(",")),
        (META_HOST.to_owned(), host),
        (META_PID.to_owned(), std::process::id().to_string()),
    ]);
    let start = bus
        .client()
        .service_builder()
        .description(format!("a member of the bus consumer group {group}"))
        .metadata(metadata)
        .start(service_name(group), env!("CARGO_PKG_VERSION"));
    match tokio::time::timeout(SEND_DEADLINE, start).await {
        Ok(Ok(service)) => Ok(Presence(Some(service))),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {SEND_DEADLINE:?}")),
    }
}

/// A live member of a consumer group, as it answered `$SRV.INFO`; from [`Bus::members`]
/// (example there).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Member {
    /// The group.
    pub group: String,
    /// The member's service instance id, new each time a member starts.
    pub id: String,
    /// Host name of the member's machine (empty when unknown).
    pub host: String,
    /// Process id of the member (0 when unknown).
    pub pid: u32,
    /// The event types it handles.
    pub types: Vec<String>,
    /// The bus-sdk version it runs.
    pub version: String,
}

impl Member {
    /// A member of this bus (events stream `stream`) from a service's INFO, if it is one.
    fn from_info(info: Info, stream: &str) -> Option<Self> {
        if !info.name.starts_with(SERVICE_PREFIX)
            || info.metadata.get(META_STREAM).map(String::as_str) != Some(stream)
        {
            return None;
        }
        let meta = |key: &str| info.metadata.get(key).cloned().unwrap_or_default();
        Some(Self {
            group: info.metadata.get(META_GROUP)?.clone(),
            id: info.id,
            host: meta(META_HOST),
            pid: meta(META_PID).parse().unwrap_or(0),
            types: meta(META_TYPES)
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            version: info.version,
        })
    }
}

/// The member that serves `partition` of an ordered group of `partitions` partitions,
/// by the rule every member follows: partition `p` goes to the `p mod n`-th of the
/// group's `n` live members in id order. `members` are the group's (as
/// [`Bus::members`] lists them); `None` when there are none. While members join or leave,
/// the owner named may not have taken the partition over yet.
///
/// ```
/// # fn f(members: Vec<bus_sdk::Member>) {
/// if let Some(owner) = bus_sdk::presence::partition_owner(&members, 3, 16) {
///     println!("partition 3 is served by {} on {}", owner.id, owner.host);
/// }
/// # }
/// ```
pub fn partition_owner(members: &[Member], partition: u32, partitions: u32) -> Option<&Member> {
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    members.iter().find(|m| {
        crate::ordered::partitions_of(&ids, &m.id, partitions)
            .is_some_and(|mine| mine.contains(&partition))
    })
}

impl Bus {
    /// The live members of `group` (of every group when `None`), sorted by group and id:
    /// every member that answers the Services API's INFO within [`MEMBERS_WAIT`] (the
    /// call ends [`MEMBERS_QUIET`] after the last answer, or at once when no member is
    /// there), at most [`MAX_MEMBERS`].
    ///
    /// ```no_run
    /// # async fn f(bus: bus_sdk::Bus) -> Result<(), Box<dyn std::error::Error>> {
    /// let billing = bus_sdk::bus_core::GroupName::new("billing")?;
    /// for member in bus.members(Some(&billing)).await? {
    ///     println!("{} on {} (pid {})", member.id, member.host, member.pid);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn members(&self, group: Option<&GroupName>) -> Result<Vec<Member>, AdminError> {
        let subject = match group {
            Some(g) => format!("$SRV.INFO.{}", service_name(g)),
            None => "$SRV.INFO".to_owned(),
        };
        let client = self.client();
        let inbox = client.new_inbox();
        let mut answers = send_deadline::within(client.subscribe(inbox.clone()))
            .await
            .map_err(AdminError::JetStream)?;
        send_deadline::within(client.publish_with_reply(subject, inbox, Default::default()))
            .await
            .map_err(AdminError::JetStream)?;
        let stream = &self.config().streams.events_name;
        let wait_until = Instant::now() + MEMBERS_WAIT;
        let mut members = Vec::new();
        while members.len() < MAX_MEMBERS {
            let until = if members.is_empty() {
                wait_until
            } else {
                wait_until.min(Instant::now() + MEMBERS_QUIET)
            };
            let Ok(Some(answer)) = tokio::time::timeout_at(until, answers.next()).await else {
                break;
            };
            if answer.status == Some(StatusCode::NO_RESPONDERS) {
                break;
            }
            if answer.payload.len() > MAX_INFO_BYTES {
                continue;
            }
            let Ok(info) = serde_json::from_slice::<Info>(&answer.payload) else {
                continue;
            };
            if let Some(member) = Member::from_info(info, stream)
                && group.is_none_or(|g| g.as_str() == member.group)
            {
                members.push(member);
            }
        }
        if let Err(e) = send_deadline::within(answers.unsubscribe()).await {
            tracing::debug!(error = %e, "unsubscribing from member answers failed");
        }
        members.sort_by(|a, b| (&a.group, &a.id).cmp(&(&b.group, &b.id)));
        Ok(members)
    }
}
