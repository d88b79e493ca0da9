//! Members announce themselves: every [`PRESENCE_INTERVAL`] a running member publishes a
//! small core-NATS message on `_BUS_PRESENCE.<events stream>.<group>`, so that operators
//! can see which members a group has (`GET /v1/groups`). Not stored, not acknowledged.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::send_deadline;

/// How often a member announces itself.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(5);
/// Prefix of presence subjects (outside every stream's subjects).
pub const PRESENCE_PREFIX: &str = "_BUS_PRESENCE";

/// What a member says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    pub member: String,
    pub group: String,
    pub host: String,
    pub pid: u32,
}

pub(crate) fn subject(bus: &Bus, group: &str) -> String {
    format!(
        "{PRESENCE_PREFIX}.{}.{group}",
        bus.config().streams.events_name
    )
}

/// Every presence subject of this bus.
pub(crate) fn all_subjects(bus: &Bus) -> String {
    format!("{PRESENCE_PREFIX}.{}.*", bus.config().streams.events_name)
}

pub(crate) async fn announce(bus: Bus, group: String, member: String, cancel: CancellationToken) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let me = Announcement {
        member,
        group: group.clone(),
        host,
        pid: std::process::id(),
    };
    let Ok(payload) = serde_json::to_vec(&me) else {
        return;
    };
    let subject = subject(&bus, &group);
    let mut tick = tokio::time::interval(PRESENCE_INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let send = bus.client().publish(subject.clone(), payload.clone().into());
                if let Err(e) = send_deadline::within(send).await {
                    tracing::debug!(error = %e, "presence announcement failed");
                }
            }
        }
    }
}
