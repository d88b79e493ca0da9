//! Secrets from mounted files: a node whose API keys and NATS user and password are
//! files (as Kubernetes mounts Secrets) authenticates with them, and a bad file stops it
//! before it binds, naming the key and the path but never the content.

use std::net::TcpListener;
use std::path::Path;

use bus_tests::NatsCluster;
use bus_tests::fixtures::*;
use serde_json::json;

const API_KEY: &str = "key-from-a-mounted-file-0123";
const NATS_PASSWORD: &str = "natsPasswordFromFile42";

fn write(dir: &Path, name: &str, content: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_secret_files_the_node_should_use_them_for_nats_and_its_api_keys()
-> anyhow::Result<()> {
    // A server that only lets user "bus" in with the password that is only in a file.
    let cluster = NatsCluster::builder()
        .nodes(1)
        .extra_config(format!(
            "authorization {{\n  user: bus\n  password: {NATS_PASSWORD}\n}}\n"
        ))
        .start()
        .await?;
    let dir = tempfile::tempdir()?;
    // Kubernetes Secrets often end in a line break: it is not part of the value.
    let keys = json!([{"name": "shop", "key": API_KEY, "publish": ["shop.>"]}]);
    let env = [
        ("BUS__NATS__SERVERS", cluster.client_urls().join(",")),
        ("BUS__STREAMS__REPLICAS", "1".to_owned()),
        (
            "BUS__AUTH__API_KEYS_FILE",
            write(dir.path(), "api-keys.json", &format!("{keys}\n"))?,
        ),
        ("BUS__NATS__USER_FILE", write(dir.path(), "user", "bus\n")?),
        (
            "BUS__NATS__PASSWORD_FILE",
            write(dir.path(), "password", &format!("{NATS_PASSWORD}\n"))?,
        ),
    ];
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.into(), v)).collect();
    // Ready means connected to NATS (with the user and password from the files) and the
    // streams in place.
    let node = start("secret-files", &env).await?;

    let client = http()?;
    let event = ce("from-file-1", "shop.order.created", json!({"n": 1}));
    let without = post_event(&client, &node.url(), &event).await?;
    assert_eq!(without.status(), 401, "no key: {}", without.text().await?);
    let with = client
        .post(format!("{}/v1/events", node.url()))
        .header("content-type", "application/cloudevents+json")
        .header("authorization", format!("Bearer {API_KEY}"))
        .body(event.to_string())
        .send()
        .await?;
    assert_eq!(with.status(), 202, "the file's key: {}", with.text().await?);
    assert!(
        !node.log().contains(API_KEY) && !node.log().contains(NATS_PASSWORD),
        "the node logged a secret"
    );
    Ok(())
}

#[test]
fn given_a_bad_api_keys_file_the_node_should_exit_64_naming_the_key_and_the_path()
-> anyhow::Result<()> {
    // Hold the port: a node that bound before validating would fail differently.
    let held = TcpListener::bind("127.0.0.1:0")?;
    let listen = held.local_addr()?.to_string();
    let dir = tempfile::tempdir()?;
    let malformed = format!("[{{\"name\": \"shop\", \"key\": {API_KEY}}}]\n");
    let files = [
        dir.path()
            .join("missing.json")
            .to_string_lossy()
            .into_owned(),
        write(dir.path(), "empty.json", "\n")?,
        write(dir.path(), "malformed.json", &malformed)?,
    ];
    for file in &files {
        let env = [
            ("BUS__HTTP__LISTEN", listen.as_str()),
            ("BUS__AUTH__API_KEYS_FILE", file.as_str()),
        ];
        let out = bus_node(&env, &["serve"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{file}: {stderr}");
        assert!(
            stderr.contains("auth.api_keys_file") && stderr.contains(file.as_str()),
            "{file}: should name the key and the path: {stderr}"
        );
        assert!(
            !stderr.contains(API_KEY),
            "{file}: quoted the content: {stderr}"
        );
    }
    drop(held);
    Ok(())
}
