//! Webhooks at scale and through a broker restart: 1,000 subscriptions on one node, one
//! of them an endpoint that answers after 5 s at the soonest, whose slowness delays none
//! of the others; and the whole NATS cluster stopped and started again under load,
//! after which deliveries resume by themselves with nothing lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};
use futures::StreamExt;
use serde_json::json;

use super::webhook_fixtures::*;

/// Subscriptions in the scale test.
const SUBSCRIPTIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_1000_subscriptions_one_slow_endpoint_should_delay_none_of_the_others()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = NatsCluster::start(1).await?;
    let env = hook_env(&cluster, dir.path(), &[])?;
    let node = start("scale", &env).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;

    let made = Instant::now();
    let created: Vec<anyhow::Result<(String, String)>> = futures::stream::iter(0..SUBSCRIPTIONS)
        .map(|i| {
            let url = if i == 0 {
                format!("{base}/gate")
            } else {
                format!("{base}/hooks/{i}")
            };
            let node = &node;
            async move { subscribe(node, &url, &["shop.>"]).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for c in &created {
        if let Err(e) = c {
            anyhow::bail!("creating a subscription: {e}");
        }
    }
    println!("{SUBSCRIPTIONS} subscriptions made in {:?}", made.elapsed());

    let events = ["scale-1", "scale-2"];
    let published = Instant::now();
    for e in events {
        publish(&node, e).await?;
    }
    // Every fast endpoint gets both events while the slow one still holds its first.
    let fast = SUBSCRIPTIONS - 1;
    let waited = wait_until(
        "every fast endpoint got both events",
        Duration::from_secs(120),
        || r.at("/hooks").len() >= fast * events.len(),
    )
    .await;
    if let Err(e) = waited {
        let got = r.at("/hooks");
        let paths: HashSet<&str> = got.iter().map(|g| g.path.as_str()).collect();
        let log = node.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        anyhow::bail!(
            "{e}: {} deliveries to {} of {fast} fast endpoints; node log (newest first):\n{}",
            got.len(),
            paths.len(),
            tail.join("\n")
        );
    }
    let took = published.elapsed();
    let got = r.at("/hooks");
    let per_path: HashSet<(String, String)> = got
        .iter()
        .map(|g| (g.path.clone(), g.header("webhook-id").to_owned()))
        .collect();
    assert_eq!(
        per_path.len(),
        fast * events.len(),
        "each fast endpoint, each event"
    );
    assert_eq!(
        r.gate_answered.load(Ordering::SeqCst),
        0,
        "the slow endpoint had not answered when all the others were served"
    );
    assert!(
        !r.at("/gate").is_empty(),
        "the slow endpoint was being delivered to"
    );
    let mut latencies: Vec<Duration> = got.iter().map(|g| g.at - published).collect();
    latencies.sort();
    println!(
        "{} deliveries to {fast} fast endpoints in {took:?}; p50 {:?}, p99 {:?}",
        got.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
    r.open_gate();
    wait_until(
        "the slow endpoint served too",
        Duration::from_secs(60),
        || r.ids("/gate").len() == events.len(),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_whole_cluster_restarted_under_load_deliveries_should_resume_with_nothing_lost()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = NatsCluster::start(3).await?;
    let env = hook_env(
        &cluster,
        dir.path(),
        &[("BUS__WEBHOOKS__RETRY_SCHEDULE", "1s,2s,5s,10s,30s")],
    )?;
    let a = start("restart-a", &env).await?;
    let b = start("restart-b", &env).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;
    let (id, _) = subscribe(&a, &format!("{base}/ok"), &["shop.>"]).await?;
    wait_members(&a, &id, 2, Duration::from_secs(20)).await?;

    // Publishers on both nodes, each event posted once; those answered 202 must arrive.
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for (p, node) in [a.url(), b.url()].into_iter().enumerate() {
        let stop = stop.clone();
        publishers.push(tokio::spawn(async move {
            let client = http()?;
            let mut accepted = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) && n < 5000 {
                n += 1;
                let event = format!("restart-{p}-{n}");
                let sent = client
                    .post(format!("{node}/v1/events"))
                    .header("x-api-key", ADMIN)
                    .header("content-type", "application/cloudevents+json")
                    .timeout(Duration::from_secs(5))
                    .body(ce(&event, "shop.order.created", json!({"n": n})).to_string())
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status() == 202 => accepted.push(event),
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(accepted)
        }));
    }
    wait_until("deliveries under way", Duration::from_secs(30), || {
        r.ids("/ok").len() >= 100
    })
    .await?;
    for i in 0..cluster.len() {
        cluster.stop(i).await?;
    }
    for i in 0..cluster.len() {
        cluster.restart(i).await?;
    }
    let after_restart = r.ids("/ok").len();
    wait_until("deliveries resumed", Duration::from_secs(60), || {
        r.ids("/ok").len() >= after_restart + 100
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    let mut accepted = Vec::new();
    for p in publishers {
        accepted.extend(p.await??);
    }
    wait_until(
        "every accepted event delivered",
        Duration::from_secs(120),
        || {
            let got = r.ids("/ok");
            accepted.iter().all(|e| got.contains(e))
        },
    )
    .await?;
    let requests = r.at("/ok").len();
    println!(
        "{} events accepted, {requests} deliveries ({} duplicates)",
        accepted.len(),
        requests - r.ids("/ok").len()
    );
    Ok(())
}
