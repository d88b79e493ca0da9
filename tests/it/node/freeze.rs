//! Honest answers while nats-server is frozen (SIGSTOP: its sockets stay open, it answers
//! nothing), under load: a 202 is an event stored once and never a false "duplicate"; a
//! 5xx says "outcome unknown" or stored nothing; `/readyz` fails during the freeze and
//! new requests are refused at once, and all of it recovers by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, Probe, try_poll_until};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The node's request deadline in this test: longer than the short freeze, shorter
/// than the long one.
const REQUEST_TIMEOUT: &str = "6s";
const SHORT_FREEZE: Duration = Duration::from_secs(3);
const LONG_FREEZE: Duration = Duration::from_secs(8);
/// Within how long `/readyz` must notice (the node probes every second, 2 s timeout).
const NOTICE: Duration = Duration::from_secs(5);
/// Posting loops at once, and the most events each posts.
const LOOPS: usize = 4;
const MAX_PER_LOOP: usize = 4_000;

/// One answer: status, problem type (or "" for a 202), the receipt's `duplicate`, and
/// how long it took.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    problem: String,
    duplicate: bool,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_nats_frozen_under_load_every_answer_should_be_honest_and_readiness_should_follow()
-> anyhow::Result<()> {
    let mut cluster = NatsCluster::start(1).await?;
    let mut env = node_env(&cluster);
    env.push(("BUS__AUTH__ENABLED".into(), "false".into()));
    env.push(("BUS__HTTP__REQUEST_TIMEOUT".into(), REQUEST_TIMEOUT.into()));
    let node = start("freeze", &env).await?;
    let base = node.url();
    let client = http()?;

    let answers: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for l in 0..LOOPS {
        let (client, base, answers, stop) =
            (client.clone(), base.clone(), answers.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            for i in 0..MAX_PER_LOOP {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("freeze-{l}-{i}");
                let began = Instant::now();
                let answer = match post_event(
                    &client,
                    &base,
                    &ce(&id, "shop.order.created", json!({"i": i})),
                )
                .await
                {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        Answer {
                            status,
                            problem: body["type"].as_str().unwrap_or("").to_owned(),
                            duplicate: body["duplicate"].as_bool().unwrap_or(false),
                            took: began.elapsed(),
                        }
                    }
                    Err(e) => Answer {
                        status: 0,
                        problem: e.to_string(),
                        duplicate: false,
                        took: began.elapsed(),
                    },
                };
                answers.lock().await.insert(id, answer);
                // A light, steady load (~200 requests/s in all), not a flood.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let readyz = |client: reqwest::Client, base: String, want: u16| async move {
        try_poll_until(format!("/readyz {want}"), NOTICE + LONG_FREEZE, || {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let status = client
                    .get(format!("{base}/readyz"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                Ok(if status == want {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(status.to_string())
                })
            }
        })
        .await
    };
    readyz(client.clone(), base.clone(), 200).await?;
    let settle = tokio::time::sleep(Duration::from_millis(500));
    settle.await; // some events stored before the first freeze

    for freeze in [SHORT_FREEZE, LONG_FREEZE] {
        cluster.pause(0)?;
        let frozen = Instant::now();
        readyz(client.clone(), base.clone(), 503).await?;
        assert!(
            frozen.elapsed() <= NOTICE,
            "/readyz noticed after {:?}",
            frozen.elapsed()
        );
        // The fault lasts its stated time (not a wait for readiness).
        tokio::time::sleep(freeze.saturating_sub(frozen.elapsed())).await;
        cluster.resume(0)?;
        readyz(client.clone(), base.clone(), 200).await?;
        tokio::time::sleep(Duration::from_millis(500)).await; // events after the freeze
    }
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await?;
    }

    // Every stored event, by id, read back with a plain ordered consumer.
    let nats = cluster.client().await?;
    let js = async_nats::jetstream::new(nats);
    let mut stream = js.get_stream("BUS_EVENTS").await?;
    let last = stream.info().await?.state.last_sequence;
    let consumer = stream.create_consumer(OrderedConfig::default()).await?;
    let mut messages = consumer.messages().await?;
    let mut stored: HashMap<String, u32> = HashMap::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await? {
        let m = m?;
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("ce-id"))
            .map(|v| v.as_str().to_owned());
        *stored.entry(id.unwrap_or_default()).or_default() += 1;
        if m.info().map_err(|e| anyhow::anyhow!(e))?.stream_sequence >= last {
            break;
        }
    }

    let answers = answers.lock().await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (id, a) in answers.iter() {
        let kind = match (a.status, a.problem.as_str()) {
            (202, _) => {
                assert!(
                    !a.duplicate,
                    "{id}: a first-time event answered as a duplicate ({a:?})"
                );
                assert_eq!(
                    stored.get(id),
                    Some(&1),
                    "{id}: 202 but stored {:?} times",
                    stored.get(id)
                );
                if a.took > Duration::from_secs(1) {
                    "202 held"
                } else {
                    "202"
                }
            }
            (503, "urn:bus:problem:outcome-unknown") => {
                assert!(
                    stored.get(id).copied().unwrap_or(0) <= 1,
                    "{id}: stored twice"
                );
                "outcome unknown"
            }
            (503, _) => {
                assert_eq!(stored.get(id), None, "{id}: refused ({a:?}) but stored");
                assert!(
                    a.took < Duration::from_secs(1),
                    "{id}: refusal took {:?}",
                    a.took
                );
                "refused fast"
            }
            _ => panic!("{id}: unexpected answer {a:?}\n{}", node.log()),
        };
        *counts.entry(kind.to_owned()).or_default() += 1;
    }
    println!("answers: {counts:?}");
    // The test exercised what it names: requests held through the short freeze and
    // answered afterwards, requests outlived by the long one, requests refused at once.
    for kind in ["202 held", "outcome unknown", "refused fast"] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind:?} answer: {counts:?}"
        );
    }
    Ok(())
}
