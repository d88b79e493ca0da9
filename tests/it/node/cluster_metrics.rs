//! The cluster-wide numbers on `/metrics` (a group's pending events, ...) come from one
//! node at a time, so that summing a series over nodes counts each group once.

use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, Probe, try_poll_until};

fn reporting(metrics: &str) -> bool {
    metrics.lines().any(|l| l == "bus_cluster_reporter 1")
}

fn shows_the_group(metrics: &str) -> bool {
    metrics.contains("bus_group_pending_events{group=\"billing\"}")
}

/// Polls until `node` exports the cluster-wide numbers, the group's among them.
async fn wait_reporting(
    client: &reqwest::Client,
    node: &bus_tests::BusNode,
    deadline: Duration,
) -> anyhow::Result<()> {
    try_poll_until("the other node to report", deadline, || async move {
        let text = metrics_text(client, node).await?;
        Ok(if reporting(&text) && shows_the_group(&text) {
            Probe::Ready(())
        } else {
            Probe::NotYet("not reporting yet".to_owned())
        })
    })
    .await
}

/// Two nodes on `cluster`, a member of the group `billing` (the SDK's), and an HTTP client.
async fn two_nodes_and_a_group(
    cluster: &NatsCluster,
) -> anyhow::Result<(
    bus_tests::BusNode,
    bus_tests::BusNode,
    bus_sdk::Group,
    reqwest::Client,
)> {
    let a = open_node(cluster, "node-a").await?;
    let b = open_node(cluster, "node-b").await?;
    let bus = bus_for(cluster).await?;
    let handled = Recorder::default();
    let group = recording_member(&bus, "billing", &handled, 0).await?;
    Ok((a, b, group, http()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_nodes_one_should_export_the_group_numbers_and_the_other_take_over_when_it_stops()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let (a, b, group, client) = two_nodes_and_a_group(&cluster).await?;

    // One node reports (a first round that timed out on a loaded box may leave none for a
    // round), and then the other does not.
    reporter_metrics(&client, &[&a, &b]).await?;
    let (text_a, text_b) = (
        metrics_text(&client, &a).await?,
        metrics_text(&client, &b).await?,
    );
    assert_ne!(
        reporting(&text_a),
        reporting(&text_b),
        "exactly one node reports:\n{text_a}\n---\n{text_b}"
    );
    let (mut reporter, other, other_text, reporter_text) = if reporting(&text_a) {
        (a, b, text_b, text_a)
    } else {
        (b, a, text_a, text_b)
    };
    assert!(shows_the_group(&reporter_text), "{reporter_text}");
    assert!(!shows_the_group(&other_text), "{other_text}");
    assert!(
        other_text.lines().any(|l| l == "bus_cluster_reporter 0"),
        "{other_text}"
    );

    // The reporter stops (and gives the lease up): the other takes over at its next round.
    reporter.stop().await?;
    // Well before the lease would run out (15 s): the lease was given up.
    wait_reporting(&client, &other, Duration::from_secs(10)).await?;
    group.shutdown().await;
    Ok(())
}

/// A reporter killed with -9 gives nothing up: its lease runs out (15 s without renewal)
/// and the other node takes it at its next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_reporting_node_killed_the_other_should_take_over_once_its_lease_runs_out()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let (a, b, group, client) = two_nodes_and_a_group(&cluster).await?;
    reporter_metrics(&client, &[&a, &b]).await?;
    let (mut reporter, other) = if reporting(&metrics_text(&client, &a).await?) {
        (a, b)
    } else {
        (b, a)
    };
    reporter.kill()?;
    // The lease (15 s) and a round (5 s), with room for a loaded box.
    wait_reporting(&client, &other, Duration::from_secs(40)).await?;
    group.shutdown().await;
    Ok(())
}
