//! The node as a process: configuration errors, `dev`, `check-config`, shutdown, admin.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus_sdk::{HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{BusNode, NatsCluster, Probe, poll_until, wait_until};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `bus-node serve` with `env` exits 64 and names `named` on stderr.
fn assert_refused(env: &[(&str, &str)], named: &str) -> anyhow::Result<()> {
    let out = bus_node(env, &["serve"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{env:?}: {stderr}");
    assert!(
        stderr.contains(named),
        "{env:?} should name {named}: {stderr}"
    );
    Ok(())
}

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
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ("OTEL_PROPAGATORS", "tracecontxt"),
        ("BUS_LOG_FORMAT", "xml"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "0"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "5s"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "ftp://collector:4318/v1/traces",
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
    // `dev` finds nats-server through NATS_SERVER_BIN, which the harness sets to its own.
    let mut node = BusNode::start_with_args("dev", &[], &["dev"]).await?;
    let client = http()?;
    let r = post_event(
        &client,
        &node.url(),
        &ce("hello-1", "demo.hello", json!({"hi": 1})),
    )
    .await?;
    assert_eq!(r.status(), 202);
    let shown = wait_until("dev to print the event", Duration::from_secs(10), || {
        node.log().contains("event #1 demo.hello id=hello-1")
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

/// A POST of one structured event whose body is held back: the head goes out with
/// `Expect: 100-continue`, and the node's `100 Continue` shows that it has read the head
/// and its handler is reading the body, so the request is in flight until `finish`.
struct HeldRequest {
    id: String,
    stream: TcpStream,
    body: Vec<u8>,
}

impl HeldRequest {
    async fn open(addr: &str, id: &str) -> anyhow::Result<Self> {
        let body = ce(id, "shop.a", json!({"held": id}))
            .to_string()
            .into_bytes();
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/cloudevents+json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        let interim = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream))
            .await
            .map_err(|_| anyhow::anyhow!("{id}: no 100 Continue within 10 s"))??;
        anyhow::ensure!(
            interim.head.starts_with("HTTP/1.1 100 ") && interim.rest.is_empty(),
            "{id}: wanted 100 Continue, got {interim:?}"
        );
        Ok(Self {
            id: id.to_owned(),
            stream,
            body,
        })
    }

    /// Sends the body and reads the whole answer: its status and JSON body. An error if
    /// the connection ends (or is reset) before the answer is whole: a cut-off request.
    async fn finish(mut self) -> anyhow::Result<(u16, Value)> {
        let id = self.id.clone();
        let exchange = async {
            self.stream.write_all(&self.body).await?;
            let answer = read_head(&mut self.stream).await?;
            let status: u16 = answer
                .head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no status in {:?}", answer.head))?;
            let length: usize = answer
                .head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| anyhow::anyhow!("no Content-Length in {:?}", answer.head))?;
            let mut body = answer.rest;
            while body.len() < length {
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).await?;
                anyhow::ensure!(n > 0, "the connection ended inside the answer's body");
                body.extend_from_slice(&buf[..n]);
            }
            anyhow::Ok((status, serde_json::from_slice(&body[..length])?))
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| anyhow::anyhow!("{id}: no answer within 10 s"))?
            .map_err(|e| e.context(format!("{id} was cut off")))
    }
}

/// An HTTP/1.1 message head, and what came after it in the same reads.
#[derive(Debug)]
struct Head {
    head: String,
    rest: Vec<u8>,
}

async fn read_head(stream: &mut TcpStream) -> anyhow::Result<Head> {
    let mut got = Vec::new();
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Head {
                head: String::from_utf8_lossy(&got[..end]).into_owned(),
                rest: got[end + 4..].to_vec(),
            });
        }
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(
            n > 0,
            "the connection ended before a whole head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_sigterm_during_requests_should_fail_readiness_finish_them_and_exit_0()
-> anyhow::Result<()> {
    const HELD: usize = 3;
    const GRACE: Duration = Duration::from_secs(10);
    let cluster = NatsCluster::start(1).await?;
    let mut env = node_env(&cluster);
    env.push(("BUS__AUTH__ENABLED".into(), "false".into()));
    env.push(("BUS__HTTP__SHUTDOWN_GRACE".into(), "10s".into()));
    let mut node = start("draining", &env).await?;
    let addr = node.url().trim_start_matches("http://").to_owned();
    // Requests in flight when the signal comes: each handler is reading its body.
    let mut held = Vec::new();
    for i in 0..HELD {
        held.push(HeldRequest::open(&addr, &format!("held-{i}")).await?);
    }

    node.terminate()?;
    let signalled = tokio::time::Instant::now();
    // Readiness goes: `/readyz` stops answering 200. The node closes its listener as it
    // starts draining, so a probe is refused, or answered 503 if it got in before.
    bus_core::tls::install_crypto_provider();
    let probes = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()?;
    let readyz = format!("{}/readyz", node.url());
    let not_ready = poll_until(
        "readiness to fail after SIGTERM",
        // Well within the grace, after which the node would close anyway.
        GRACE / 2,
        || {
            let (probes, readyz) = (probes.clone(), readyz.clone());
            async move {
                Ok(match probes.get(&readyz).send().await {
                    Ok(r) if r.status() == 200 => Probe::NotYet("200".into()),
                    Ok(r) => Probe::Ready(format!("answered {}", r.status())),
                    Err(e) => Probe::Ready(format!("refused ({e})")),
                })
            }
        },
    )
    .await?;
    eprintln!("after SIGTERM, /readyz: {not_ready}");
    // Draining: the requests in flight finish, each stored (202, with its PubAck).
    let mut acks = Vec::new();
    for request in held {
        let id = request.id.clone();
        let (status, ack) = request.finish().await?;
        assert_eq!(
            status, 202,
            "{id}, finished after readiness {not_ready}: {ack}"
        );
        assert_eq!(ack["id"], id.as_str(), "{ack}");
        assert_eq!(ack["stream"], "BUS_EVENTS", "{ack}");
        assert_eq!(ack["duplicate"], false, "{ack}");
        let seq = ack["seq"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no seq: {ack}"))?;
        acks.push((id, seq));
    }
    // Then the process ends by itself, with 0, within the grace.
    let status = node.wait_exit(GRACE).await?;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{status}: {}", node.log());
    assert!(took < GRACE, "exited {took:?} after SIGTERM");
    let log = node.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains("cutting them off"),
        "requests were cut off: {log}"
    );
    // What the answers said was stored is there.
    let bus = bus_for(&cluster).await?;
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, HELD as u64);
    let stream = bus.jetstream().get_stream("BUS_EVENTS").await?;
    for (id, seq) in acks {
        let m = stream.get_raw_message(seq).await?;
        assert_eq!(
            m.headers.get("ce-id").map(|v| v.as_str()),
            Some(id.as_str())
        );
    }
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
    let listed = poll_until(
        "the dead letter to be listed",
        Duration::from_secs(20),
        || {
            let (client, url) = (client.clone(), dlq_url.clone());
            async move {
                let listed = match client.get(&url).send().await {
                    Ok(r) => r.json::<Value>().await,
                    Err(e) => Err(e),
                };
                Ok(match listed {
                    Ok(l) if l["dead_letters"].as_array().is_some_and(|a| !a.is_empty()) => {
                        Probe::Ready(l)
                    }
                    Ok(l) => Probe::NotYet(l.to_string()),
                    Err(e) => Probe::NotYet(e.to_string()),
                })
            }
        },
    )
    .await?;
    assert_eq!(
        listed["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
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
    // As the NATS Services API tells it: what it handles, where it runs.
    let seen = &billing["members"][0];
    assert_eq!(seen["group"], "billing", "{seen}");
    assert_eq!(seen["types"], json!(["shop.order.created"]), "{seen}");
    assert_eq!(seen["pid"], std::process::id(), "{seen}");

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
    // HTTP by the semantic conventions' name and attributes.
    assert!(
        metrics.contains(
            "http_server_request_duration_seconds_count{http_request_method=\"GET\",http_route=\"/v1/dlq\",http_response_status_code=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("bus_group_pending_events{group=\"billing\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("bus_nats_connected 1"), "{metrics}");
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_json_logs_each_line_the_node_writes_should_be_one_json_object() -> anyhow::Result<()>
{
    let cluster = NatsCluster::start(1).await?;
    let mut env = node_env(&cluster);
    env.extend([
        ("BUS__AUTH__ENABLED".into(), "false".into()),
        ("BUS_LOG_FORMAT".into(), "json".into()),
        ("RUST_LOG".into(), "info".into()),
    ]);
    let mut node = start("json-logs", &env).await?;
    node.stop().await?;
    let log = node.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(!lines.is_empty(), "the node logged nothing");
    for line in lines {
        let v: Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not JSON ({e}): {line}"))?;
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    Ok(())
}
