//! Webhooks end to end: subscriptions made over the API on one node, events posted to
//! another, deliveries signed as Standard Webhooks say to a real receiver on loopback,
//! retried after a 503 with its `Retry-After`, a `410 Gone` disabling the subscription,
//! and addresses the SSRF guard refuses refused at creation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use bus_tests::fixtures::*;
use bus_tests::{BusNode, NatsCluster, wait_until};
use serde_json::{Value, json};

use super::webhook_fixtures::*;

async fn nodes(dir: &std::path::Path) -> anyhow::Result<(NatsCluster, BusNode, BusNode)> {
    nodes_with(dir, &[]).await
}

/// Whether `headers` carry a valid Standard Webhooks signature of `body` under `secret`.
fn signed(headers: &HeaderMap, body: &[u8], secret: &str) -> anyhow::Result<bool> {
    Ok(verify(headers, body, secret, unix_now()).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_subscription_each_event_should_be_delivered_signed_and_retried_after_a_503()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, a, b) = nodes(dir.path()).await?;
    let r = Arc::new(Receiver::default());
    set(&r.flaky_left, 2);
    let base = receiver(r.clone()).await?;

    let (status, sub) = create(
        &a,
        json!({"url": format!("{base}/flaky"), "types": ["shop.>"]}),
    )
    .await?;
    assert_eq!(status, 201, "{sub}");
    let secret = sub["secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("whsec_"), "{sub}");
    let id = sub["id"].as_str().unwrap_or_default().to_owned();
    // The secret is shown once: never in a read.
    let read: Value = http()?
        .get(format!("{}/v1/webhooks/{id}", b.url()))
        .header("x-api-key", ADMIN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(read["url"], sub["url"]);
    assert!(read.get("secret").is_none(), "{read}");

    let ids: Vec<String> = (0..10).map(|i| format!("hook-{i}")).collect();
    for (i, event) in ids.iter().enumerate() {
        publish(if i % 2 == 0 { &a } else { &b }, event).await?;
    }
    wait_until("every event answered 200", Duration::from_secs(30), || {
        let delivered: std::collections::HashSet<String> = r
            .got()
            .iter()
            .map(|g| g.header("webhook-id").to_owned())
            .collect();
        delivered.len() == ids.len() && r.got().len() >= ids.len() + 2
    })
    .await?;
    let got = r.got();
    let mut per_id: HashMap<String, u32> = HashMap::new();
    for Got { headers, body, .. } in &got {
        assert!(
            signed(headers, body, &secret)?,
            "a valid signature: {headers:?}"
        );
        let event: Value = serde_json::from_slice(body)?;
        let wid = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(event["id"], wid, "webhook-id is the event id");
        assert_eq!(event["type"], "shop.order.created");
        assert_eq!(event["data"], json!({"n": wid}));
        *per_id.entry(wid.to_owned()).or_default() += 1;
    }
    assert_eq!(per_id.len(), ids.len());
    // The two 503s were retried: 12 requests for 10 events.
    assert_eq!(got.len(), ids.len() + 2, "{per_id:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_410_gone_the_subscription_should_be_disabled_and_refused_addresses_never_made()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, a, _b) = nodes(dir.path()).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;
    let (status, sub) = create(
        &a,
        json!({"url": format!("{base}/gone"), "types": ["shop.>"]}),
    )
    .await?;
    assert_eq!(status, 201, "{sub}");
    let id = sub["id"].as_str().unwrap_or_default().to_owned();
    publish(&a, "gone-1").await?;
    let url = format!("{}/v1/webhooks/{id}", a.url());
    let client = http()?;
    let mut last = Value::Null;
    for _ in 0..100 {
        last = client
            .get(&url)
            .header("x-api-key", ADMIN)
            .send()
            .await?
            .json()
            .await?;
        if last["enabled"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["enabled"], false, "{last}");
    assert!(
        last["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{last}"
    );
    // Addresses the guard refuses are refused when the subscription is made.
    for url in [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/",
        "ftp://example.com/",
    ] {
        let (status, body) = create(&a, json!({"url": url, "types": ["shop.>"]})).await?;
        assert_eq!(status, 400, "{url}: {body}");
    }
    let (status, _) = create(
        &a,
        json!({"url": format!("{base}/ok"), "types": ["Not A Type"]}),
    )
    .await?;
    assert_eq!(status, 400);
    // Deleted: gone from the list, its consumer too.
    let r_del = client
        .delete(&url)
        .header("x-api-key", ADMIN)
        .send()
        .await?;
    assert_eq!(r_del.status(), 204);
    let list: Value = client
        .get(format!("{}/v1/webhooks", a.url()))
        .header("x-api-key", ADMIN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list["webhooks"], json!([]), "{list}");
    // 410 is final: the event was not retried.
    let paths: Vec<String> = r.got().into_iter().map(|g| g.path).collect();
    assert_eq!(paths, vec!["/gone".to_owned()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_node_killed_mid_delivery_every_event_should_still_be_delivered()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, mut a, b) =
        nodes_with(dir.path(), &[("BUS__WEBHOOKS__CONCURRENCY", "32")]).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;
    let (id, _) = subscribe(&b, &format!("{base}/slow"), &["shop.>"]).await?;
    // Both nodes deliver: wait until a's member is there too.
    wait_members(&b, &id, 2, Duration::from_secs(10)).await?;
    let ids: Vec<String> = (0..2000).map(|i| format!("kill-{i}")).collect();
    publish_batches(&b, &ids).await?;
    wait_until("some deliveries under way", Duration::from_secs(30), || {
        r.ids("/slow").len() >= 300
    })
    .await?;
    a.kill()?;
    // What a had in flight comes back after the ack deadline (timeout 2 s + 15 s).
    wait_until("every event delivered", Duration::from_secs(90), || {
        r.ids("/slow").len() == ids.len()
    })
    .await?;
    let delivered = r.ids("/slow");
    let missing: Vec<_> = ids.iter().filter(|i| !delivered.contains(*i)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    let requests = r.at("/slow").len();
    println!(
        "{} events, {requests} deliveries: {} duplicates (at least once; receivers de-duplicate on webhook-id)",
        ids.len(),
        requests - ids.len()
    );
    Ok(())
}
