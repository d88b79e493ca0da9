//! The node as a process: configuration errors, `dev`, `check-config`, shutdown, admin.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus_sdk::{HandlerError, Received};
use bus_tests::{BusNode, NatsCluster};
use serde_json::{Value, json};

use crate::node_support::*;
use crate::support::{OrderCreated, Recorder, bus_for, order, wait_until};

#[test]
fn given_bad_config_should_exit_64_naming_the_key_before_binding_any_port() -> anyhow::Result<()> {
    // Hold the port: a node that tried to bind before validating would fail differently.
    let held = TcpListener::bind("127.0.0.1:0")?;
    let listen = held.local_addr()?.to_string();
    let cases = [
        ("BUS__HTTP__LISTN", "127.0.0.1:1", "http.listn"),
        ("BUS__STREAMS__REPLICAS", "three", "streams.replicas"),
        (
            "BUS__NATS__SERVERS",
            "nats://ok:4222,http://bad url",
            "nats.servers[1]",
        ),
        ("BUS__STREAMS__MAX_AGE", "forever", "streams.max_age"),
        ("BUS__AUTH__ENABLED", "true", "auth.api_keys"),
    ];
    for (key, value, named) in cases {
        let env = [
            ("BUS__HTTP__LISTEN", listen.as_str()),
            ("BUS__AUTH__ENABLED", "false"),
            (key, value),
        ];
        assert_refused(&env, named)?;
    }
    drop(held);
    Ok(())
}

#[test]
fn given_bad_otel_variables_should_exit_64_naming_the_variable_before_binding_any_port()
-> anyhow::Result<()> {
    let held = TcpListener::bind("127.0.0.1:0")?;
    let listen = held.local_addr()?.to_string();
    let cases = [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=%zz"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "5s"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://collector:4318/v1/traces",
        ),
    ];
    for (key, value) in cases {
        let mut env = vec![
            ("BUS__HTTP__LISTEN", listen.as_str()),
            ("BUS__AUTH__ENABLED", "false"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            (key, value),
        ];
        if key == "OTEL_TRACES_SAMPLER_ARG" {
            env.push(("OTEL_TRACES_SAMPLER", "traceidratio"));
        }
        assert_refused(&env, key)?;
    }
    drop(held);
    Ok(())
}

#[test]
fn given_a_config_file_check_config_should_print_the_effective_config_with_secrets_redacted()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bus.toml");
    std::fs::write(
        &file,
        r#"
[nats]
servers = ["nats://a:4222", "nats://b:4222"]
user = "bus"
password = "hunter2-secret"
[[auth.api_keys]]
name = "shop"
key = "shop-key-0123456789"
publish = ["shop.>"]
"#,
    )?;
    let path = file.to_string_lossy().into_owned();
    let out = bus_node(
        &[("BUS__STREAMS__REPLICAS", "3")],
        &["check-config", "--config", &path],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("replicas = 3"), "{stdout}");
    assert!(stdout.contains("nats://b:4222"), "{stdout}");
    assert!(
        !stdout.contains("hunter2-secret") && !stdout.contains("shop-key-0123456789"),
        "{stdout}"
    );
    assert!(stdout.contains("<redacted>"), "{stdout}");
    std::fs::write(&file, "[nats]\nservers = 5\n")?;
    let out = bus_node(&[], &["check-config", "--config", &path])?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nats.servers"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_dev_mode_should_run_its_own_nats_show_a_posted_event_and_stop_cleanly()
-> anyhow::Result<()> {
    // `dev` finds nats-server through NATS_SERVER_BIN (set by scripts/test.sh) or PATH.
    let mut node = BusNode::start_with_args("dev", &[], &["dev"]).await?;
    let client = http()?;
    let r = post_event(
        &client,
        &node.url(),
        &ce("hello-1", "demo.hello", json!({"hi": 1})),
    )
    .await?;
    assert_eq!(r.status(), 202);
    let shown = tokio::time::timeout(Duration::from_secs(10), async {
        while !node.log().contains("event #1 demo.hello id=hello-1") {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(
        shown.is_ok(),
        "dev did not print the event:\n{}",
        node.log()
    );
    assert!(node.log().contains("authentication is OFF"));
    let status = node.stop().await?;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", node.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_sigterm_during_requests_should_fail_readiness_finish_them_and_exit_0()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let mut node = open_node(&cluster, "draining").await?;
    let client = http()?;
    let base = node.url();
    // Keep requests flowing while the node is told to stop.
    let poster = tokio::spawn({
        let client = client.clone();
        async move {
            let mut statuses = Vec::new();
            for i in 0..200 {
                match post_event(&client, &base, &ce(&format!("d-{i}"), "shop.a", json!(i))).await {
                    Ok(r) => statuses.push(r.status().as_u16()),
                    Err(_) => break, // the listener closed
                }
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = node.stop().await?;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", node.log());
    let statuses = poster.await?;
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 202),
        "every answered request completed: {statuses:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_dead_letters_the_admin_api_should_list_groups_and_dead_letters_and_redrive()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "admin").await?;
    let bus = bus_for(&cluster).await?;
    let healthy = Arc::new(AtomicBool::new(false));
    let handled = Recorder::default();
    let (h, rec) = (healthy.clone(), handled.clone());
    let member = bus
        .group("billing")
        .max_deliver(1)
        .on(move |ev: Received<OrderCreated>| {
            let (h, rec) = (h.clone(), rec.clone());
            async move {
                if !h.load(Ordering::SeqCst) {
                    return Err(HandlerError::msg("ledger offline"));
                }
                rec.record(0, ev.meta.id());
                Ok(())
            }
        })
        .start()
        .await?;
    let receipt = bus.publish(&order(1)).await?;
    let client = http()?;
    let dlq_url = format!("{}/v1/dlq?group=billing", node.url());
    let mut listed = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        listed = client.get(&dlq_url).send().await?.json().await?;
        if listed["dead_letters"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letter = &listed["dead_letters"][0];
    assert_eq!(letter["event_id"], receipt.id.as_str(), "{listed}");
    assert_eq!(letter["group"], "billing");
    assert_eq!(letter["attempts"], 1);
    assert_eq!(letter["type"], "shop.order.created");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ledger offline")),
        "{letter}"
    );

    let groups: Value = client
        .get(format!("{}/v1/groups", node.url()))
        .send()
        .await?
        .json()
        .await?;
    let billing = groups["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "billing"))
        .cloned();
    let billing = billing.ok_or_else(|| anyhow::anyhow!("billing missing: {groups}"))?;
    for field in ["pending", "in_flight", "redelivered", "waiting"] {
        assert!(billing[field].is_u64(), "{field}: {billing}");
    }
    let members = billing["members"].as_array().map(Vec::len);
    assert_eq!(
        members,
        Some(1),
        "the one running member is seen: {billing}"
    );

    healthy.store(true, Ordering::SeqCst);
    let r = client
        .post(format!("{}/v1/dlq/redrive", node.url()))
        .json(&json!({"group": "billing", "ids": [receipt.id]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await?["redriven"], 1);
    wait_until(
        "the redriven event is handled",
        Duration::from_secs(10),
        || handled.distinct() == 1,
    )
    .await?;
    let after: Value = client.get(&dlq_url).send().await?.json().await?;
    assert_eq!(after["dead_letters"].as_array().map(Vec::len), Some(0));

    let metrics = metrics_text(&client, &node).await?;
    assert!(metrics.contains("bus_http_requests_total{"), "{metrics}");
    assert!(
        metrics.contains("bus_group_pending_events{group=\"billing\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("bus_nats_connected 1"), "{metrics}");
    member.shutdown().await;
    Ok(())
}
