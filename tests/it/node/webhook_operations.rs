//! Webhook operations end to end, against real receivers on loopback: signatures checked
//! by a verifier written from the Standard Webhooks specification, secret rotation,
//! `PATCH` with `If-Match`, scopes, test deliveries, retries on the schedule and after
//! `Retry-After`, the attempts log, disabling and re-enabling, replay, the operational
//! events, and the SSRF guard with default settings.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};
use reqwest::Method;

use serde_json::{Value, json};

use super::webhook_fixtures::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_rotation_both_secrets_should_verify_during_the_overlap_and_tampering_should_not()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cluster, a, b) =
        nodes_with(dir.path(), &[("BUS__WEBHOOKS__SECRET_OVERLAP", "4s")]).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;
    let (id, old) = subscribe(&a, &format!("{base}/ok"), &["shop.>"]).await?;

    publish(&b, "rot-1").await?;
    wait_until("the first delivery", Duration::from_secs(20), || {
        r.ids("/ok").contains("rot-1")
    })
    .await?;
    let first = r.at("/ok").remove(0);
    let now = unix_now();
    assert_eq!(verify(&first.headers, &first.body, &old, now), Ok(()));
    // The receiver's checks refuse what it should.
    let mut tampered = first.body.to_vec();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        verify(&first.headers, &tampered, &old, now),
        Err(Refusal::BadSignature)
    );
    assert_eq!(
        verify(&first.headers, &first.body, &old, now + TOLERANCE_SECS + 60),
        Err(Refusal::StaleTimestamp)
    );
    let wrong = format!("whsec_{}", base64_of(&[7u8; 32]));
    assert_eq!(
        verify(&first.headers, &first.body, &wrong, now),
        Err(Refusal::BadSignature)
    );

    // Rotated: during the overlap both secrets verify each delivery.
    let (status, _, rotated) = call(
        &b,
        Method::POST,
        &format!("/v1/webhooks/{id}/secret/rotate"),
        HOOKS,
        None,
        None,
    )
    .await?;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap_or_default().to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{rotated}");
    assert!(read(&a, &id).await?.get("secret").is_none());
    // Each node delivers with both once it has seen the rotation; a delivery signed
    // before it carries the old signature only, so look for one with two.
    let mut n = 0;
    let both = loop {
        n += 1;
        let event = format!("rot-2-{n}");
        publish(&a, &event).await?;
        wait_until("the delivery", Duration::from_secs(20), || {
            r.ids("/ok").contains(&event)
        })
        .await?;
        let got = r
            .at("/ok")
            .into_iter()
            .find(|g| g.header("webhook-id") == event)
            .ok_or_else(|| anyhow::anyhow!("no {event}"))?;
        if got.header("webhook-signature").split(' ').count() == 2 {
            break got;
        }
        anyhow::ensure!(n < 50, "no delivery carried two signatures");
    };
    let now = unix_now();
    assert_eq!(verify(&both.headers, &both.body, &old, now), Ok(()));
    assert_eq!(verify(&both.headers, &both.body, &new, now), Ok(()));

    // A plain NATS client reading the bucket sees neither secret, in any form.
    let js = async_nats::jetstream::new(cluster.client().await?);
    let kv = js.get_key_value("BUS_EVENTS_WEBHOOKS").await?;
    let stored = kv
        .get(&id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no {id} in the bucket"))?;
    let stored = String::from_utf8_lossy(&stored).into_owned();
    for secret in [&old, &new] {
        let b64 = secret.trim_start_matches("whsec_");
        assert!(!stored.contains(b64), "a secret in the bucket: {stored}");
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64)?;
        assert!(
            !stored
                .as_bytes()
                .windows(raw.len())
                .any(|w| w == raw.as_slice()),
            "raw key bytes in the bucket"
        );
    }

    // After the overlap, only the new one signs.
    let until = read(&a, &id).await?["previous_secret_until"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let until =
        time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339)?;
    let left = until - time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::try_from(left).unwrap_or_default() + Duration::from_secs(1)).await;
    publish(&a, "rot-3").await?;
    wait_until(
        "the delivery after the overlap",
        Duration::from_secs(20),
        || r.ids("/ok").contains("rot-3"),
    )
    .await?;
    let last = r
        .at("/ok")
        .into_iter()
        .find(|g| g.header("webhook-id") == "rot-3")
        .ok_or_else(|| anyhow::anyhow!("no rot-3"))?;
    let now = unix_now();
    assert_eq!(verify(&last.headers, &last.body, &new, now), Ok(()));
    assert_eq!(
        verify(&last.headers, &last.body, &old, now),
        Err(Refusal::BadSignature)
    );
    Ok(())
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_if_match_a_patch_should_apply_only_to_the_revision_it_read_and_scopes_should_hold()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, a, b) = nodes_with(dir.path(), &[]).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;
    let (id, _) = subscribe(&a, &format!("{base}/ok"), &["shop.>"]).await?;
    let path = format!("/v1/webhooks/{id}");

    let (status, tag, _) = call(&b, Method::GET, &path, HOOKS, None, None).await?;
    assert_eq!(status, 200);
    assert!(tag.starts_with('"'), "an ETag: {tag:?}");
    let (status, tag2, changed) = call(
        &b,
        Method::PATCH,
        &path,
        HOOKS,
        Some(json!({"description": "orders", "rate_limit": 50})),
        Some(&tag),
    )
    .await?;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["description"], "orders");
    assert_eq!(changed["rate_limit"], 50);
    assert_ne!(tag2, tag);
    // A writer that read before that change loses: 412, nothing changed.
    let (status, _, lost) = call(
        &a,
        Method::PATCH,
        &path,
        ADMIN,
        Some(json!({"description": "stale"})),
        Some(&tag),
    )
    .await?;
    assert_eq!(status, 412, "{lost}");
    assert_eq!(read(&a, &id).await?["description"], "orders");
    // Bad input names the field.
    for (body, field) in [
        (json!({"url": "http://user:pw@example.com/"}), "url"),
        (
            json!({"url": format!("http://example.com/{}", "x".repeat(3000))}),
            "url",
        ),
        (json!({"types": ["Not A Type"]}), "types"),
        (json!({"headers": {"Connection": "close"}}), "headers"),
        (json!({"headers": {"webhook-id": "x"}}), "headers"),
        (json!({"rate_limit": 0}), "rate_limit"),
        (json!({"secret": "whsec_x"}), "secret"),
    ] {
        let (status, _, p) =
            call(&a, Method::PATCH, &path, ADMIN, Some(body.clone()), None).await?;
        assert_eq!(status, 400, "{body}: {p}");
        assert!(p.to_string().contains(field), "{body}: {p} names {field}");
    }
    // `null` removes the limit.
    let (status, _, cleared) = call(
        &a,
        Method::PATCH,
        &path,
        ADMIN,
        Some(json!({"rate_limit": null})),
        None,
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(cleared["rate_limit"], Value::Null);

    // A key that may only publish manages no webhooks.
    for (method, p) in [
        (Method::GET, "/v1/webhooks".to_owned()),
        (Method::GET, path.clone()),
        (Method::POST, format!("{path}/test")),
    ] {
        let (status, _, _) = call(&a, method.clone(), &p, PUBLISHER, None, None).await?;
        assert_eq!(status, 403, "{method} {p}");
    }
    // A bad query: the key is checked first, then a problem naming what was expected.
    for p in [
        "/v1/webhooks?limit=many".to_owned(),
        format!("{path}/attempts?after=x"),
    ] {
        let (status, _, _) = call(&a, Method::GET, &p, PUBLISHER, None, None).await?;
        assert_eq!(status, 403, "{p}");
        let (status, _, body) = call(&a, Method::GET, &p, ADMIN, None, None).await?;
        assert_eq!(status, 400, "{p}: {body}");
        assert_eq!(body["type"], "urn:bus:problem:invalid-query", "{p}: {body}");
    }
    // The webhooks scope does not open the other admin endpoints.
    let (status, _, _) = call(&a, Method::GET, "/v1/groups", HOOKS, None, None).await?;
    assert_eq!(status, 403);

    // A test delivery: made now, its outcome in the answer, a `bus.webhook.test` event.
    let (status, _, tested) =
        call(&b, Method::POST, &format!("{path}/test"), HOOKS, None, None).await?;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["result"]["outcome"], "delivered", "{tested}");
    assert_eq!(tested["result"]["status"], 204);
    let got = r.at("/ok");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event()["type"], "bus.webhook.test");

    // Listing is paged in id order.
    let (_, second) = (
        (),
        subscribe(&a, &format!("{base}/ok"), &["shop.>"]).await?.0,
    );
    let (status, _, page) =
        call(&a, Method::GET, "/v1/webhooks?limit=1", ADMIN, None, None).await?;
    assert_eq!(status, 200);
    assert_eq!(page["webhooks"][0]["id"], id.as_str());
    assert_eq!(page["next_after"], id.as_str());
    let (_, _, page) = call(
        &a,
        Method::GET,
        &format!("/v1/webhooks?limit=1&after={id}"),
        ADMIN,
        None,
        None,
    )
    .await?;
    assert_eq!(page["webhooks"][0]["id"], second.as_str());
    assert_eq!(page["next_after"], Value::Null);
    Ok(())
}

/// Seconds between consecutive requests of `got`.
fn gaps(got: &[Got]) -> Vec<f64> {
    got.windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_500_500_200_there_should_be_three_attempts_on_the_schedule_all_in_the_log()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, a, b) =
        nodes_with(dir.path(), &[("BUS__WEBHOOKS__RETRY_SCHEDULE", "1s,2s,2s")]).await?;
    let r = Arc::new(Receiver::default());
    set(&r.fails_left, 2);
    set(&r.limited_left, 1);
    let base = receiver(r.clone()).await?;
    let (fails, _) = subscribe(&a, &format!("{base}/fails"), &["shop.>"]).await?;
    let (limited, _) = subscribe(&a, &format!("{base}/limited"), &["shop.>"]).await?;
    wait_members(&a, &fails, 2, Duration::from_secs(10)).await?;
    publish(&b, "sched-1").await?;
    wait_until(
        "three attempts and a 429 retried",
        Duration::from_secs(30),
        || r.at("/fails").len() >= 3 && r.at("/limited").len() >= 2,
    )
    .await?;
    // Exactly three: once an attempt succeeded, none follows (waiting past the
    // schedule's longest next delay to be sure).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = r.at("/fails");
    assert_eq!(got.len(), 3, "{:?}", gaps(&got));
    let g = gaps(&got);
    // At most 1 s and 2 s (full jitter), with room for the node's own latency.
    assert!(g[0] < 1.6, "{g:?}");
    assert!(g[1] < 2.7, "{g:?}");
    let lim = r.at("/limited");
    assert_eq!(lim.len(), 2);
    let waited = gaps(&lim)[0];
    assert!(waited >= 2.0, "Retry-After: 2 honoured, waited {waited}");

    // The log shows all three, in order, with status and node.
    let mut log = Vec::new();
    for _ in 0..100 {
        log = attempts(&b, &fails).await?;
        if log.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log.len(), 3, "{log:?}");
    let statuses: Vec<_> = log.iter().map(|l| l["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(500), json!(500), json!(200)]);
    let numbers: Vec<_> = log.iter().map(|l| l["attempt"].clone()).collect();
    assert_eq!(numbers, vec![json!(1), json!(2), json!(3)]);
    for l in &log {
        assert_eq!(l["event_id"], "sched-1");
        assert!(l["node"] == "hooks-a" || l["node"] == "hooks-b", "{l}");
        assert!(l["duration_ms"].as_f64().is_some(), "{l}");
    }
    assert_eq!(attempts(&a, &limited).await?.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_disabled_subscription_reenabled_it_should_get_what_it_missed_and_replay_should_resend()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, a, b) = nodes_with(dir.path(), &[]).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;
    let (id, _) = subscribe(&a, &format!("{base}/ok"), &["shop.>"]).await?;
    let path = format!("/v1/webhooks/{id}");
    publish(&a, "before").await?;
    wait_until("the first delivery", Duration::from_secs(20), || {
        r.ids("/ok").contains("before")
    })
    .await?;
    let (status, _, off) = call(
        &a,
        Method::PATCH,
        &path,
        ADMIN,
        Some(json!({"enabled": false})),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{off}");
    // No node delivers it now.
    wait_members(&a, &id, 0, Duration::from_secs(10)).await?;
    let missed: Vec<String> = (0..5).map(|i| format!("missed-{i}")).collect();
    for m in &missed {
        publish(&b, m).await?;
    }
    assert_eq!(r.at("/ok").len(), 1, "nothing delivered while disabled");
    // Its backlog and the age of its oldest undelivered event show in the metrics (of
    // the node that exports the cluster-wide numbers).
    let metrics = reporter_metrics(&http()?, &[&a, &b]).await?;
    let metric = |name: &str| -> Option<f64> {
        let prefix = format!("{name}{{group=\"webhook-{id}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(metric("bus_group_pending_events"), Some(5.0), "{metrics}");
    let age = metric("bus_group_oldest_unacked_age_seconds");
    assert!(age.is_some_and(|a| a > 0.0), "{age:?}");
    let (status, _, on) = call(
        &b,
        Method::PATCH,
        &path,
        ADMIN,
        Some(json!({"enabled": true})),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{on}");
    wait_until("the missed events", Duration::from_secs(20), || {
        let got = r.ids("/ok");
        missed.iter().all(|m| got.contains(m))
    })
    .await?;

    // Replay from the first event's sequence: all six again, to this subscription.
    let (status, _, replayed) = call(
        &a,
        Method::POST,
        &format!("{path}/replay"),
        ADMIN,
        Some(json!({"since_seq": 1})),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"], 6, "{replayed}");
    assert_eq!(replayed["next_since_seq"], Value::Null);
    wait_until("the replayed events", Duration::from_secs(20), || {
        r.at("/ok").len() >= 12
    })
    .await?;
    let before = r
        .at("/ok")
        .iter()
        .filter(|g| g.header("webhook-id") == "before")
        .count();
    assert_eq!(before, 2, "replayed with the same webhook-id");
    // By time: from a moment after everything, nothing.
    let later =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let (status, _, none) = call(
        &a,
        Method::POST,
        &format!("{path}/replay"),
        ADMIN,
        Some(json!({"since": later})),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none["replayed"], 0, "{none}");
    let (status, _, bad) = call(
        &a,
        Method::POST,
        &format!("{path}/replay"),
        ADMIN,
        Some(json!({"since": later, "since_seq": 3})),
        None,
    )
    .await?;
    assert_eq!(status, 400, "{bad}");
    Ok(())
}

/// The events of `event_type` the receiver got on `path`.
fn events_of(r: &Receiver, path: &str, event_type: &str) -> Vec<Value> {
    r.at(path)
        .iter()
        .map(Got::event)
        .filter(|e| e["type"] == event_type)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_endpoint_failing_past_disable_after_it_should_be_disabled_and_the_bus_should_say_so()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, a, b) = nodes_with(
        dir.path(),
        &[
            ("BUS__WEBHOOKS__RETRY_SCHEDULE", "300ms,300ms"),
            ("BUS__WEBHOOKS__DISABLE_AFTER", "2s"),
        ],
    )
    .await?;
    let r = Arc::new(Receiver::default());
    set(&r.fails_left, u32::MAX);
    set(&r.flaky_left, 1);
    let base = receiver(r.clone()).await?;
    // The platform's own group for the bus's operational events: a subscription too.
    let (_ops, _) = subscribe(&a, &format!("{base}/hooks/ops"), &["bus.webhook.>"]).await?;
    let (failing, _) = subscribe(&a, &format!("{base}/fails"), &["shop.>"]).await?;
    let (flaky, _) = subscribe(&a, &format!("{base}/flaky"), &["shop.>"]).await?;
    publish(&b, "fail-1").await?;
    // Three attempts fail (the schedule's two delays): exhausted, a dead letter.
    wait_until("exhausted", Duration::from_secs(30), || {
        !events_of(&r, "/hooks/ops", "bus.webhook.attempt.exhausted").is_empty()
    })
    .await?;
    let ex = events_of(&r, "/hooks/ops", "bus.webhook.attempt.exhausted");
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0]["data"]["webhook"], failing.as_str());
    assert_eq!(ex[0]["data"]["event_id"], "fail-1");
    assert_eq!(ex[0]["data"]["last_status"], 500);
    // The flaky one recovered after its 503.
    wait_until("recovered", Duration::from_secs(30), || {
        !events_of(&r, "/hooks/ops", "bus.webhook.endpoint.recovered").is_empty()
    })
    .await?;
    let rec = events_of(&r, "/hooks/ops", "bus.webhook.endpoint.recovered");
    assert_eq!(rec[0]["data"]["webhook"], flaky.as_str());

    // Still failing 2 s after its first failure: the next failure disables it.
    let sub = read(&a, &failing).await?;
    assert!(sub["failing_since"].is_string(), "{sub}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&b, "fail-2").await?;
    wait_until("disabled", Duration::from_secs(30), || {
        !events_of(&r, "/hooks/ops", "bus.webhook.endpoint.disabled").is_empty()
    })
    .await?;
    let dis = events_of(&r, "/hooks/ops", "bus.webhook.endpoint.disabled");
    assert_eq!(dis.len(), 1, "{dis:?}");
    assert_eq!(dis[0]["data"]["webhook"], failing.as_str());
    let sub = read(&a, &failing).await?;
    assert_eq!(sub["enabled"], false, "{sub}");
    assert!(
        sub["disabled_reason"]
            .as_str()
            .is_some_and(|why| why.contains("every attempt failed")),
        "{sub}"
    );
    // The exhausted event is a dead letter of the subscription's group, with its status.
    let (status, _, dlq) = call(
        &a,
        Method::GET,
        &format!("/v1/dlq?group=webhook-{failing}"),
        ADMIN,
        None,
        None,
    )
    .await?;
    assert_eq!(status, 200, "{dlq}");
    assert!(dlq.to_string().contains("500"), "{dlq}");
    // The endpoint fixed and enabled again, a redrive sends the dead letter back to this
    // subscription, which now delivers it.
    set(&r.fails_left, 0);
    let (status, _, on) = call(
        &a,
        Method::PATCH,
        &format!("/v1/webhooks/{failing}"),
        ADMIN,
        Some(json!({"enabled": true})),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{on}");
    let delivered_before = r.at("/fails").len();
    let (status, _, redriven) = call(
        &a,
        Method::POST,
        "/v1/dlq/redrive",
        ADMIN,
        Some(json!({"group": format!("webhook-{failing}"), "ids": ["fail-1"]})),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{redriven}");
    wait_until(
        "the redriven event delivered",
        Duration::from_secs(20),
        || {
            r.at("/fails")
                .iter()
                .skip(delivered_before)
                .any(|g| g.header("webhook-id") == "fail-1")
        },
    )
    .await?;
    // Only to that subscription: the flaky one got fail-1 once.
    let to_flaky = r
        .at("/flaky")
        .iter()
        .filter(|g| g.header("webhook-id") == "fail-1")
        .count();
    assert_eq!(to_flaky, 2, "its 503 and its delivery, nothing redriven");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_default_settings_no_spelling_of_a_local_address_should_reach_a_listener()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = NatsCluster::start(1).await?;
    let mut env = hook_env(&cluster, dir.path(), &[])?;
    // Default settings: no network allowed past the guard.
    env.retain(|(k, _)| k != "BUS__WEBHOOKS__ALLOWED_NETWORKS");
    let node = start("ssrf", &env).await?;
    // A listener on loopback that counts connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for host in [
        "127.0.0.1".to_owned(),
        "[::1]".to_owned(),
        "[::ffff:127.0.0.1]".to_owned(),
        "2130706433".to_owned(),
        "0x7f.1".to_owned(),
        "0177.0.0.1".to_owned(),
        "169.254.169.254".to_owned(),
        "[fd00:ec2::254]".to_owned(),
        "10.0.0.1".to_owned(),
    ] {
        let url = format!("http://{host}:{port}/hook");
        let (status, body) = create(&node, json!({"url": url, "types": ["shop.>"]})).await?;
        assert_eq!(status, 400, "{url}: {body}");
    }
    // A name is resolved at each connection: `localhost` is refused then.
    let (id, _) = subscribe(&node, &format!("http://localhost:{port}/hook"), &["shop.>"]).await?;
    publish(&node, "ssrf-1").await?;
    let mut log = Vec::new();
    for _ in 0..200 {
        log = attempts(&node, &id).await?;
        if !log.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["error"], "blocked_destination", "{log:?}");
    assert_eq!(log[0]["outcome"], "refused");
    let (status, _, tested) = call(
        &node,
        Method::POST,
        &format!("/v1/webhooks/{id}/test"),
        ADMIN,
        None,
        None,
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(tested["result"]["outcome"], "refused", "{tested}");
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no connection reached the listener"
    );
    Ok(())
}

/// Whether one `v1a,` signature of `headers` verifies `body` under the public key
/// `whpk_...` (Standard Webhooks' asymmetric scheme: Ed25519 over
/// "{id}.{timestamp}.{body}").
fn verify_v1a(headers: &axum::http::HeaderMap, body: &[u8], public: &str) -> anyhow::Result<bool> {
    use base64::Engine;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let b64 = base64::engine::general_purpose::STANDARD;
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let raw: [u8; 32] = b64
        .decode(public.trim_start_matches("whpk_"))?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a public key is 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&raw)?;
    let mut message = format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).into_bytes();
    message.extend_from_slice(body);
    for sig in h("webhook-signature").split(' ') {
        if let Some(s) = sig.strip_prefix("v1a,") {
            let sig = Signature::from_slice(&b64.decode(s)?)?;
            if key.verify(&message, &sig).is_ok() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_ed25519_a_delivery_should_carry_a_v1a_signature_beside_the_hmac_one()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, a, b) = nodes_with(dir.path(), &[]).await?;
    let r = Arc::new(Receiver::default());
    let base = receiver(r.clone()).await?;
    let (status, sub) = create(
        &a,
        json!({"url": format!("{base}/ok"), "types": ["shop.>"], "ed25519": true}),
    )
    .await?;
    assert_eq!(status, 201, "{sub}");
    let public = sub["public_key"].as_str().unwrap_or_default().to_owned();
    let secret = sub["secret"].as_str().unwrap_or_default().to_owned();
    assert!(public.starts_with("whpk_"), "{sub}");
    let id = sub["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(read(&b, &id).await?["public_key"], public.as_str());
    publish(&b, "ed-1").await?;
    wait_until("the delivery", Duration::from_secs(20), || {
        r.ids("/ok").contains("ed-1")
    })
    .await?;
    let got = r.at("/ok").remove(0);
    assert_eq!(verify(&got.headers, &got.body, &secret, unix_now()), Ok(()));
    assert!(verify_v1a(&got.headers, &got.body, &public)?);
    let mut tampered = got.body.to_vec();
    tampered.push(b' ');
    assert!(!verify_v1a(&got.headers, &tampered, &public)?);
    // Off again: HMAC only.
    let (status, _, off) = call(
        &a,
        Method::PATCH,
        &format!("/v1/webhooks/{id}"),
        ADMIN,
        Some(json!({"ed25519": false})),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{off}");
    assert_eq!(off["public_key"], Value::Null);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tracing_each_attempt_should_be_a_client_span_in_the_event_trace_and_its_traceparent_sent()
-> anyhow::Result<()> {
    use bus_tests::{OtlpReceiver, SpanKind};
    let dir = tempfile::tempdir()?;
    let otlp = OtlpReceiver::start().await?;
    let cluster = NatsCluster::start(1).await?;
    let env = hook_env(
        &cluster,
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.grpc_endpoint().as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "bus-node-hooks"),
        ],
    )?;
    let node = start("traced-hooks", &env).await?;
    let r = Arc::new(Receiver::default());
    set(&r.flaky_left, 1);
    let base = receiver(r.clone()).await?;
    let (_id, _) = subscribe(
        &node,
        &format!("{base}/flaky?token=s3cret&x=1"),
        &["shop.>"],
    )
    .await?;
    // W3C baggage on the HTTP request travels with the event to every attempt.
    post_with_baggage(&node, "traced-1", "tenant=acme").await?;
    wait_until("delivered after a 503", Duration::from_secs(20), || {
        r.at("/flaky").len() >= 2
    })
    .await?;
    let spans = otlp
        // Each CLIENT span ends before its CONSUMER parent: wait for the parents too.
        .wait_for(
            "two CLIENT spans and their parents",
            Duration::from_secs(20),
            |s| {
                let clients: Vec<_> = s.iter().filter(|s| s.kind == SpanKind::Client).collect();
                clients.len() >= 2
                    && clients
                        .iter()
                        .all(|c| s.iter().any(|p| p.span_id == c.parent_span_id))
            },
        )
        .await?;
    let clients: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client)
        .collect();
    let producer = spans
        .iter()
        .find(|s| s.kind == SpanKind::Producer)
        .ok_or_else(|| anyhow::anyhow!("no PRODUCER span: {spans:?}"))?;
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.name, "POST");
        assert_eq!(c.trace_id, producer.trace_id, "in the event's trace");
        assert_eq!(c.attr("http.request.method"), Some("POST"));
        assert_eq!(c.attr("messaging.message.id"), Some("traced-1"));
        let url = c.attr("url.full").unwrap_or_default();
        assert!(
            url.contains("token=REDACTED") && !url.contains("s3cret"),
            "no query secret in {url}"
        );
        // Its parent is the handling's CONSUMER span.
        let parent = spans
            .iter()
            .find(|s| s.span_id == c.parent_span_id)
            .ok_or_else(|| anyhow::anyhow!("no parent of {c:?}"))?;
        assert_eq!(parent.kind, SpanKind::Consumer, "{parent:?}");
        // What the receiver got names this span.
        let got = &r.at("/flaky")[i.min(1)];
        let tp = got.header("traceparent");
        assert!(tp.contains(&producer.trace_id), "{tp}");
        assert_eq!(got.header("baggage"), "tenant=acme");
    }
    let statuses: Vec<_> = clients
        .iter()
        .map(|c| c.attr("http.response.status_code").unwrap_or("").to_owned())
        .collect();
    assert!(
        statuses.contains(&"503".to_owned()) && statuses.contains(&"200".to_owned()),
        "{statuses:?}"
    );
    let sent: HashSet<String> = r
        .at("/flaky")
        .iter()
        .map(|g| g.header("traceparent").to_owned())
        .collect();
    let ids: HashSet<String> = clients
        .iter()
        .map(|c| format!("00-{}-{}-01", c.trace_id, c.span_id))
        .collect();
    assert_eq!(
        sent, ids,
        "each attempt sends its own CLIENT span as traceparent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_no_tracing_baggage_on_the_request_should_still_reach_each_attempt()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = NatsCluster::start(1).await?;
    // No OTLP endpoint: the node records no span; baggage is a signal of its own.
    let env = hook_env(&cluster, dir.path(), &[])?;
    let node = start("untraced-hooks", &env).await?;
    let r = Arc::new(Receiver::default());
    set(&r.flaky_left, 1);
    let base = receiver(r.clone()).await?;
    subscribe(&node, &format!("{base}/flaky"), &["shop.>"]).await?;
    post_with_baggage(&node, "untraced-1", "tenant=acme,region=eu%20west").await?;
    wait_until("delivered after a 503", Duration::from_secs(20), || {
        r.at("/flaky").len() >= 2
    })
    .await?;
    for got in r.at("/flaky") {
        let mut entries: Vec<&str> = got.header("baggage").split(',').collect();
        entries.sort_unstable();
        assert_eq!(entries, ["region=eu%20west", "tenant=acme"], "each attempt");
        assert_eq!(
            got.header("traceparent"),
            "",
            "no trace recorded, none sent"
        );
    }
    Ok(())
}

/// Posts a `shop.order.created` event `id` carrying the W3C `baggage` header.
async fn post_with_baggage(
    node: &bus_tests::BusNode,
    id: &str,
    baggage: &str,
) -> anyhow::Result<()> {
    let posted = http()?
        .post(format!("{}/v1/events", node.url()))
        .header("x-api-key", ADMIN)
        .header("content-type", "application/cloudevents+json")
        .header("baggage", baggage)
        .body(ce(id, "shop.order.created", json!({"n": 1})).to_string())
        .send()
        .await?;
    anyhow::ensure!(posted.status() == 202, "{}", posted.status());
    Ok(())
}
