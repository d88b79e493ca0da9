//! Helpers for the node suites: nodes on a cluster, and an HTTP client.

use std::process::Command;
use std::time::Duration;

use bus_tests::{BusNode, NatsCluster, node_binary};
use serde_json::{Value, json};

/// The settings every test node gets for `cluster`.
pub fn node_env(cluster: &NatsCluster) -> Vec<(String, String)> {
    vec![
        ("BUS__NATS__SERVERS".into(), cluster.client_urls().join(",")),
        (
            "BUS__STREAMS__REPLICAS".into(),
            if cluster.len() >= 3 { "3" } else { "1" }.into(),
        ),
        ("BUS__NATS__REQUEST_TIMEOUT".into(), "1s".into()),
    ]
}

/// A node with authentication off.
pub async fn open_node(cluster: &NatsCluster, name: &str) -> anyhow::Result<BusNode> {
    let mut env = node_env(cluster);
    env.push(("BUS__AUTH__ENABLED".into(), "false".into()));
    start(name, &env).await
}

pub async fn start(name: &str, env: &[(String, String)]) -> anyhow::Result<BusNode> {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(BusNode::start(name, &pairs).await?)
}

pub fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(2))
        .build()?)
}

/// A structured-mode event.
pub fn ce(id: &str, event_type: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/tests/http", "type": event_type, "data": data})
}

pub async fn post_event(
    client: &reqwest::Client,
    base: &str,
    event: &Value,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
}

/// The node's `/metrics` text.
pub async fn metrics_text(client: &reqwest::Client, node: &BusNode) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{}/metrics", node.url()))
        .send()
        .await?
        .text()
        .await?)
}

/// `bus-node` with `args` and only the `BUS__*` settings of `env`, run to its exit.
pub fn bus_node(env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new(node_binary()?);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BUS__") {
            cmd.env_remove(k);
        }
    }
    Ok(cmd.envs(env.iter().copied()).output()?)
}

/// `bus-node serve` with `env` exits 64 and names `named` on stderr.
pub fn assert_refused(env: &[(&str, &str)], named: &str) -> anyhow::Result<()> {
    let out = bus_node(env, &["serve"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{env:?}: {stderr}");
    assert!(
        stderr.contains(named),
        "{env:?} should name {named}: {stderr}"
    );
    Ok(())
}
