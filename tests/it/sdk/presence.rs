//! Group members through the NATS Services API: a plain client's `$SRV.PING` (what
//! `nats micro ls` sends) lists every live member of a group, one in this process and
//! one in another (the `billing_worker` example); a member killed with SIGKILL
//! disappears, and one that shuts down leaves at once.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bus_core::GroupName;
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, Probe, try_poll_until};
use futures::StreamExt;

/// Kills the child when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The instance ids that answer `$SRV.PING.<service>` within half a second, as a plain
/// NATS client sees them.
async fn ping(client: &async_nats::Client, service: &str) -> anyhow::Result<BTreeSet<String>> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(format!("$SRV.PING.{service}"), inbox, "".into())
        .await?;
    let mut ids = BTreeSet::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(answer)) = tokio::time::timeout_at(until, answers.next()).await {
        if answer.status.is_some() {
            break; // no responders
        }
        let pong: serde_json::Value = serde_json::from_slice(&answer.payload)?;
        assert_eq!(pong["type"], "io.nats.micro.v1.ping_response");
        assert_eq!(pong["name"], service);
        if let Some(id) = pong["id"].as_str() {
            ids.insert(id.to_owned());
        }
    }
    Ok(ids)
}

/// Pings until the answering ids are `want`, for at most 20 s.
async fn wait_for_ids(
    client: &async_nats::Client,
    service: &str,
    want: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let what = format!("the members answering {service} to be {want:?}");
    try_poll_until(what, Duration::from_secs(20), || async move {
        let ids = ping(client, service).await?;
        Ok(if &ids == want {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("members answering {service}: {ids:?}"))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_members_in_two_processes_a_plain_ping_should_list_them_and_drop_a_killed_one()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let billing = GroupName::new("billing")?;
    let recorder = Recorder::default();
    let here = recording_member(&bus, "billing", &recorder, 0).await?;

    let worker = Command::new(bus_tests::example_binary("billing_worker")?)
        .env("NATS_URL", cluster.client_urls().join(","))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut worker = Reaped(worker);
    let pid = worker.0.id();

    // The SDK's own view: both members, with what they handle and where they run.
    let (bus_ref, billing_ref) = (&bus, &billing);
    let members = try_poll_until(
        "two members of billing",
        Duration::from_secs(20),
        || async move {
            let members = bus_ref.members(Some(billing_ref)).await?;
            Ok(if members.len() == 2 {
                Probe::Ready(members)
            } else {
                Probe::NotYet(format!("members of billing: {members:?}"))
            })
        },
    )
    .await?;
    let pids: BTreeSet<u32> = members.iter().map(|m| m.pid).collect();
    assert_eq!(pids, BTreeSet::from([pid, std::process::id()]));
    for m in &members {
        assert_eq!(m.group, "billing");
        assert_eq!(m.types, ["shop.order.created"]);
    }
    // A plain client sees the same instances.
    let plain = cluster.client().await?;
    let service = bus_sdk::presence::service_name(&billing);
    let all: BTreeSet<String> = members.iter().map(|m| m.id.clone()).collect();
    wait_for_ids(&plain, &service, &all).await?;

    // Killed: it never said goodbye, and it is gone all the same.
    worker.0.kill()?;
    worker.0.wait()?;
    let ours: BTreeSet<String> = members
        .iter()
        .filter(|m| m.pid == std::process::id())
        .map(|m| m.id.clone())
        .collect();
    wait_for_ids(&plain, &service, &ours).await?;

    assert!(here.shutdown().await);
    assert!(
        ping(&plain, &service).await?.is_empty(),
        "a member that shut down answers no more"
    );
    assert!(bus.members(Some(&billing)).await?.is_empty());
    Ok(())
}
