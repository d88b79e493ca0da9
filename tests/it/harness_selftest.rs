//! The harness tested on real servers: clusters form, streams replicate, a killed
//! leader is replaced without losing or doubling messages, a restarted node rejoins
//! its own cluster and catches up, and parallel clusters never share a port.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream::{self, context::Context, message::PublishMessage, stream};
use bus_tests::{HarnessError, NatsCluster, NatsServer, Probe, poll_until, try_poll_until};
use bytes::Bytes;

/// How long one message may take to be acked while leaders change.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for the test's own polls.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------
// Cluster formation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_three_nodes_when_started_should_elect_a_meta_leader_with_all_healthy()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;

    assert_eq!(cluster.len(), 3);
    let urls = cluster.client_urls();
    assert_eq!(urls.len(), 3);
    let mut leaders = HashSet::new();
    for (i, url) in urls.iter().enumerate() {
        let node = cluster.node(i);
        assert_eq!(node.name(), format!("n{i}"));
        assert_eq!(*url, node.client_url());
        assert!(node.is_running());
        assert!(node.store_dir().is_dir());
        let health = node.monitor_json("/healthz?js-enabled-only=true").await?;
        assert_eq!(health["status"], "ok", "{}: {health}", node.name());
        let jsz = node.monitor_json("/jsz").await?;
        assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");
        leaders.insert(
            jsz["meta_cluster"]["leader"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
        assert!(node.log().contains("Server is ready"), "{}", node.log());
    }
    assert_eq!(
        leaders.len(),
        1,
        "nodes disagree on the meta leader: {leaders:?}"
    );
    assert!(!leaders.contains(""), "no meta leader");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_one_node_when_started_should_serve_jetstream_without_a_cluster() -> anyhow::Result<()>
{
    let cluster = NatsCluster::start(1).await?;
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster.node(0).route_url(), None);
    let varz = cluster.node(0).monitor_json("/varz").await?;
    assert!(
        varz["jetstream"]["config"].is_object(),
        "JetStream off: {varz}"
    );

    let js = jetstream_for(&cluster).await?;
    create_stream(&js, "SOLO", "solo.>", 1).await?;
    publish_range(&js, "solo.x", 0..10).await?;
    assert_eq!(stream_messages(&js, "SOLO").await?, 10);
    assert_eq!(cluster.leader_of("SOLO").await?, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Replication and failover

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_r3_stream_when_publishing_100_should_ack_all_and_store_100() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let js = jetstream_for(&cluster).await?;
    create_stream(&js, "ORDERS", "orders.>", 3).await?;

    publish_range(&js, "orders.created", 0..100).await?;

    assert_eq!(stream_messages(&js, "ORDERS").await?, 100);
    let leader = cluster.leader_of("ORDERS").await?;
    for i in (0..3).filter(|&i| i != leader) {
        cluster.wait_caught_up(i, "ORDERS").await?;
    }
    for i in 0..3 {
        wait_local_messages(cluster.node(i), "ORDERS", 100).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_r3_stream_when_leader_killed_should_elect_another_and_keep_exact_count()
-> anyhow::Result<()> {
    let mut cluster = NatsCluster::start(3).await?;
    let js = jetstream_for(&cluster).await?;
    create_stream(&js, "KILL", "kill.>", 3).await?;
    publish_range(&js, "kill.x", 0..50).await?;
    let old = cluster.leader_of("KILL").await?;

    cluster.kill(old)?;
    assert!(!cluster.node(old).is_running());
    // No wait for the election: these publishes retry through it.
    publish_range(&js, "kill.x", 50..100).await?;
    let new = cluster
        .wait_for_stream_leader_other_than("KILL", old)
        .await?;

    assert_ne!(new, old);
    assert_eq!(stream_messages(&js, "KILL").await?, 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_killed_node_when_restarted_should_rejoin_its_cluster_and_catch_up()
-> anyhow::Result<()> {
    let mut cluster = NatsCluster::start(3).await?;
    let js = jetstream_for(&cluster).await?;
    create_stream(&js, "REJOIN", "rejoin.>", 3).await?;
    publish_range(&js, "rejoin.x", 0..50).await?;
    let old = cluster.leader_of("REJOIN").await?;
    cluster.kill(old)?;
    // Written while the node is down: it can only have them by catching up.
    publish_range(&js, "rejoin.x", 50..100).await?;
    let cluster_name =
        cluster.node((old + 1) % 3).monitor_json("/varz").await?["cluster"]["name"].clone();

    cluster.restart(old).await?;

    assert!(cluster.node(old).is_running());
    let varz = cluster.node(old).monitor_json("/varz").await?;
    assert_eq!(
        varz["cluster"]["name"], cluster_name,
        "joined another cluster"
    );
    wait_meta_peer_current(&cluster, old).await?;
    cluster.wait_caught_up(old, "REJOIN").await?;
    wait_local_messages(cluster.node(old), "REJOIN", 100).await?;
    assert_eq!(stream_messages(&js, "REJOIN").await?, 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_follower_when_stopped_then_restarted_should_catch_up_each_time() -> anyhow::Result<()>
{
    let mut cluster = NatsCluster::start(3).await?;
    let js = jetstream_for(&cluster).await?;
    create_stream(&js, "STOP", "stop.>", 3).await?;
    publish_range(&js, "stop.x", 0..20).await?;
    let follower = (cluster.leader_of("STOP").await? + 1) % 3;

    cluster.stop(follower).await?;
    assert!(!cluster.node(follower).is_running());
    publish_range(&js, "stop.x", 20..40).await?;
    cluster.restart(follower).await?;
    cluster.wait_caught_up(follower, "STOP").await?;
    wait_local_messages(cluster.node(follower), "STOP", 40).await?;

    // Restarting a running node stops it gracefully first.
    cluster.restart(follower).await?;
    publish_range(&js, "stop.x", 40..60).await?;
    cluster.wait_caught_up(follower, "STOP").await?;
    wait_local_messages(cluster.node(follower), "STOP", 60).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_paused_follower_when_resumed_should_catch_up() -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start(3).await?;
    create_stream(&jetstream_for(&cluster).await?, "PAUSE", "pause.>", 3).await?;
    let leader = cluster.leader_of("PAUSE").await?;
    let follower = (leader + 1) % 3;
    // A client on the paused node would stall until its ping timeout: keep it off.
    let others: Vec<String> = (0..3)
        .filter(|&i| i != follower)
        .map(|i| cluster.node(i).client_url())
        .collect();
    let js = jetstream_with_timeout(async_nats::connect(others).await?);

    cluster.pause(follower)?;
    assert!(
        cluster.node(follower).is_running(),
        "a paused process still runs"
    );
    // The two others are a quorum.
    publish_range(&js, "pause.x", 0..30).await?;
    assert_eq!(cluster.leader_of("PAUSE").await?, leader);
    cluster.resume(follower)?;

    cluster.wait_caught_up(follower, "PAUSE").await?;
    wait_local_messages(cluster.node(follower), "PAUSE", 30).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Isolation and configuration errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_clusters_started_together_should_use_disjoint_ports_and_both_work()
-> anyhow::Result<()> {
    let (a, b) = tokio::join!(NatsCluster::start(3), NatsCluster::start(3));
    let (a, b) = (a?, b?);

    let mut ports = HashSet::new();
    for cluster in [&a, &b] {
        for i in 0..cluster.len() {
            let node = cluster.node(i);
            let route = node
                .route_url()
                .context("clustered node without a route URL")?;
            for url in [node.client_url(), node.monitor_url(), route] {
                ensure!(
                    ports.insert(port_of(&url)?),
                    "port of {url} handed out twice"
                );
            }
        }
    }
    assert_eq!(ports.len(), 18);

    let name_a = a.node(0).monitor_json("/varz").await?["cluster"]["name"].clone();
    let name_b = b.node(0).monitor_json("/varz").await?["cluster"]["name"].clone();
    assert_ne!(name_a, name_b);
    for cluster in [&a, &b] {
        let jsz = cluster.node(0).monitor_json("/jsz").await?;
        assert_eq!(
            jsz["meta_cluster"]["cluster_size"], 3,
            "clusters merged: {jsz}"
        );
        let js = jetstream_for(cluster).await?;
        // The same stream name in both: they must not see each other's.
        create_stream(&js, "PAR", "par.>", 3).await?;
        publish_range(&js, "par.x", 0..10).await?;
        assert_eq!(stream_messages(&js, "PAR").await?, 10);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_missing_binary_when_starting_should_fail_with_binary_not_found() {
    let result = NatsCluster::builder()
        .binary("/nonexistent/bus-tests/nats-server")
        .nodes(3)
        .start()
        .await;

    match result {
        Err(err @ HarnessError::BinaryNotFound { .. }) => {
            let text = err.to_string();
            assert!(!text.contains('\n'), "not one line: {text}");
            assert!(text.contains("scripts/ensure-nats-server.sh"), "{text}");
            assert!(text.contains("NATS_SERVER_BIN"), "{text}");
        }
        other => panic!("expected BinaryNotFound, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_non_executable_binary_when_starting_should_fail_with_binary_not_found()
-> anyhow::Result<()> {
    let file = tempfile::NamedTempFile::new()?; // mode 0600: not executable
    let result = NatsCluster::builder().binary(file.path()).start().await;
    assert!(
        matches!(result, Err(HarnessError::BinaryNotFound { .. })),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zero_nodes_when_starting_should_fail_with_invalid_node_count() {
    let result = NatsCluster::start(0).await;
    assert!(
        matches!(result, Err(HarnessError::InvalidNodeCount(0))),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------
// Helpers

/// A JetStream context whose publishes give up after 1 s, so retries (with the same
/// message id) drive progress during an election instead of a 5 s stall.
async fn jetstream_for(cluster: &NatsCluster) -> anyhow::Result<Context> {
    Ok(jetstream_with_timeout(cluster.client().await?))
}

fn jetstream_with_timeout(client: async_nats::Client) -> Context {
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(1));
    js
}

async fn create_stream(
    js: &Context,
    name: &str,
    subject: &str,
    replicas: usize,
) -> anyhow::Result<()> {
    let config = stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        num_replicas: replicas,
        ..Default::default()
    };
    // Creating with an identical config is idempotent, so a retry after a timeout is safe.
    let config = &config;
    eventually(&format!("stream {name} created"), WAIT, || async move {
        js.get_or_create_stream(config.clone()).await?;
        Ok(())
    })
    .await
}

/// Publishes message `i` for each `i` with `Nats-Msg-Id: <subject>-<i>`, waiting for
/// each ack and retrying failures with the same id (the server drops duplicates).
async fn publish_range(
    js: &Context,
    subject: &str,
    ids: std::ops::Range<u32>,
) -> anyhow::Result<()> {
    for i in ids {
        let id = format!("{subject}-{i}");
        let id = &id;
        eventually(&format!("ack of {id}"), PUBLISH_DEADLINE, || async move {
            let message = PublishMessage::build()
                .payload(Bytes::from(id.clone()))
                .message_id(id);
            js.send_publish(subject.to_owned(), message).await?.await?;
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Message count from the stream leader (via the JetStream API).
async fn stream_messages(js: &Context, name: &str) -> anyhow::Result<u64> {
    eventually(&format!("info of stream {name}"), WAIT, || async move {
        let mut stream = js.get_stream(name).await?;
        Ok(stream.info().await?.state.messages)
    })
    .await
}

/// Retries `attempt` until it succeeds or `deadline` passes; the timeout says the last
/// failure.
async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    try_poll_until(what, deadline, || {
        let attempt = attempt();
        async move {
            Ok(match attempt.await {
                Ok(value) => Probe::Ready(value),
                Err(e) => Probe::NotYet(format!("{e:#}")),
            })
        }
    })
    .await
}

/// Polls `node`'s own copy of `stream` (its `/jsz`) until it holds `expected` messages.
async fn wait_local_messages(node: &NatsServer, stream: &str, expected: u64) -> anyhow::Result<()> {
    let what = format!("{} to hold {expected} messages of {stream}", node.name());
    poll_until(what, WAIT, || async move {
        let jsz = match node.monitor_json("/jsz?streams=true").await {
            Ok(jsz) => jsz,
            Err(e) => return Ok(Probe::NotYet(e.to_string())),
        };
        let messages = jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|account| account["stream_detail"].as_array())
            .flatten()
            .find(|detail| detail["name"] == stream)
            .and_then(|detail| detail["state"]["messages"].as_u64());
        Ok(if messages == Some(expected) {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("holds {messages:?}"))
        })
    })
    .await?;
    Ok(())
}

/// Polls until the meta leader counts 3 peers and lists node `i` as a current one (or is `i`).
async fn wait_meta_peer_current(cluster: &NatsCluster, i: usize) -> anyhow::Result<()> {
    let name = cluster.node(i).name();
    poll_until(
        format!("{name} to be a current meta peer"),
        WAIT,
        || async move {
            let jsz = match cluster.node(i).monitor_json("/jsz").await {
                Ok(jsz) => jsz,
                Err(e) => return Ok(Probe::NotYet(e.to_string())),
            };
            let Some(leader) = jsz["meta_cluster"]["leader"]
                .as_str()
                .filter(|l| !l.is_empty())
            else {
                return Ok(Probe::NotYet(format!("{name} knows no meta leader")));
            };
            if leader == name {
                return Ok(Probe::Ready(()));
            }
            let Some(index) = (0..cluster.len()).find(|&j| cluster.node(j).name() == leader) else {
                return Ok(Probe::NotYet(format!("unknown meta leader {leader}")));
            };
            let view = match cluster.node(index).monitor_json("/jsz").await {
                Ok(view) => view,
                Err(e) => return Ok(Probe::NotYet(format!("meta leader {leader}: {e}"))),
            };
            let meta = &view["meta_cluster"];
            let current = meta["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["name"] == name && r["current"] == true && r["offline"] != true);
            Ok(if meta["cluster_size"] == 3 && current {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("meta leader {leader} reports {meta}"))
            })
        },
    )
    .await?;
    Ok(())
}

fn port_of(url: &str) -> anyhow::Result<u16> {
    let Some((_, port)) = url.rsplit_once(':') else {
        bail!("no port in {url}");
    };
    Ok(port.parse()?)
}
