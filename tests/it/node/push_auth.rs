//! Who may read what over push: a key scoped to `shop.>` never receives `billing.*`
//! events over SSE or WebSocket (asking for them is 403, subscribing to them an error
//! frame); push tokens carry a key's scope to clients that cannot send headers, and an
//! expired, tampered or foreign token is refused with 401; a browser's WebSocket from a
//! foreign `Origin` is refused.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bus_tests::fixtures::*;
use bus_tests::{BusNode, NatsCluster};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::push_fixtures::*;

async fn node(
    dir: &std::path::Path,
    more: &[(&str, &str)],
) -> anyhow::Result<(NatsCluster, BusNode)> {
    let cluster = NatsCluster::start(1).await?;
    let env = push_env(&cluster, dir, more)?;
    let node = start("push-auth", &env).await?;
    Ok((cluster, node))
}

/// A token as the module docs say one is made: `bpt1.<claims>.<HMAC-SHA256>`, written
/// here from that description, not with the node's code.
fn token_signed_with(key: &[u8], claims: &Value) -> anyhow::Result<String> {
    let signed = format!("bpt1.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut mac = Hmac::<Sha256>::new_from_slice(key)?;
    mac.update(signed.as_bytes());
    Ok(format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    ))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn new_token(node: &BusNode, key: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let r = http()?
        .post(format!("{}/v1/push/tokens", node.url()))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_scoped_to_shop_never_receives_billing_events_over_either_transport()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cluster, node) = node(dir.path(), &[]).await?;
    // No types asked: everything the key may read.
    let sse_client = sse(&node, "", &[("x-api-key", SHOP)]).await?;
    let (ws, ws_tx) = websocket(&node, "", &[("x-api-key", SHOP)]).await?;
    sse_client.hello().await?;
    ws.hello().await?;
    // Asking for more is refused, on both.
    for query in [
        "types=billing.%3E",
        "types=%3E",
        "types=shop.%3E,billing.invoice.paid",
    ] {
        let r = sse_response(&node, query, &[("x-api-key", SHOP)]).await?;
        assert_eq!(r.status(), 403, "{query}");
        assert!(
            websocket(&node, query, &[("x-api-key", SHOP)])
                .await
                .is_err(),
            "{query}"
        );
    }
    ws_tx.send(json!({"subscribe": ["billing.>"]})).await?;
    ws_tx.send(json!({"subscribe": ["shop.order.*"]})).await?;
    let inbox = ws.inbox.clone();
    bus_tests::wait_until("two answers", Duration::from_secs(10), move || {
        inbox.notices("bus.push.error").len() + inbox.notices("bus.push.ack").len() == 2
    })
    .await?;
    assert_eq!(
        ws.inbox.notices("bus.push.error")[0].data["type"],
        "forbidden"
    );

    let bus = publisher(&cluster).await?;
    for n in 0..20 {
        publish(&bus, "billing.invoice.paid", n).await?;
        publish(&bus, "shop.order.created", n).await?;
    }
    for c in [&sse_client, &ws] {
        c.wait_events(20, Duration::from_secs(20)).await?;
        let events = c.inbox.events();
        assert!(
            events.iter().all(|g| g.name == "shop.order.created"),
            "{events:?}"
        );
        assert_eq!(numbers(&events), (0..20).collect::<Vec<_>>());
    }
    // With auth on, no credential is no stream.
    assert_eq!(sse_response(&node, "", &[]).await?.status(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_token_carries_the_keys_scope_and_an_expired_tampered_or_foreign_one_is_refused()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cluster, node) = node(dir.path(), &[]).await?;
    let (status, issued) =
        new_token(&node, SHOP, json!({"types": ["shop.order.*"], "ttl": "2m"})).await?;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["types"], json!(["shop.order.*"]));
    let token = issued["token"].as_str().unwrap_or_default().to_owned();
    // Beyond the key's scope, or longer than push.token_ttl: refused.
    assert_eq!(
        new_token(&node, SHOP, json!({"types": ["billing.>"]}))
            .await?
            .0,
        403
    );
    assert_eq!(new_token(&node, SHOP, json!({"ttl": "2h"})).await?.0, 400);
    assert_eq!(
        new_token(&node, "not-a-key-0123456789", json!({})).await?.0,
        401
    );

    // The token alone opens both transports, within its scope.
    let by_token = sse(&node, &format!("token={token}"), &[]).await?;
    let (ws, _tx) = websocket(&node, &format!("token={token}"), &[]).await?;
    by_token.hello().await?;
    ws.hello().await?;
    let wider = sse_response(&node, &format!("token={token}&types=shop.%3E"), &[]).await?;
    assert_eq!(wider.status(), 403);
    let bus = publisher(&cluster).await?;
    for n in 0..5 {
        publish(&bus, "shop.payment.failed", n).await?;
        publish(&bus, "shop.order.created", n).await?;
    }
    for c in [&by_token, &ws] {
        c.wait_events(5, Duration::from_secs(20)).await?;
        assert!(
            c.inbox
                .events()
                .iter()
                .all(|g| g.name == "shop.order.created")
        );
    }

    // Tampered (a claim changed, the signature kept), expired, signed with another key,
    // or not a token at all: 401.
    let mut parts: Vec<&str> = token.split('.').collect();
    let widened = URL_SAFE_NO_PAD
        .encode(json!({"key": "shop", "types": [">"], "exp": unix_now() + 60}).to_string());
    parts[1] = &widened;
    let tampered = parts.join(".");
    let expired = token_signed_with(
        TOKEN_KEY.as_bytes(),
        &json!({"key": "shop", "types": ["shop.>"], "exp": unix_now() - 1}),
    )?;
    let foreign = token_signed_with(
        b"another-key-0123456789abcdef-0123",
        &json!({"key": "shop", "types": ["shop.>"], "exp": unix_now() + 60}),
    )?;
    let ours = token_signed_with(
        TOKEN_KEY.as_bytes(),
        &json!({"key": "shop", "types": ["shop.>"], "exp": unix_now() + 60}),
    )?;
    for (what, t) in [
        ("tampered", &tampered),
        ("expired", &expired),
        ("foreign", &foreign),
        ("garbage", &"abc".to_owned()),
    ] {
        let r = sse_response(&node, &format!("token={t}"), &[]).await?;
        assert_eq!(r.status(), 401, "{what}");
        assert!(
            websocket(&node, &format!("token={t}"), &[]).await.is_err(),
            "{what}"
        );
    }
    // The check of the refusals above: a token made the same way with the right key
    // is taken.
    assert_eq!(
        sse_response(&node, &format!("token={ours}"), &[])
            .await?
            .status(),
        200
    );
    // Tokens stay out of the node's log.
    assert!(!node.log().contains(&token[token.len() - 20..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_from_a_foreign_origin_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, node) = node(
        dir.path(),
        &[("BUS__PUSH__ALLOWED_ORIGINS", "https://app.example.com")],
    )
    .await?;
    let own = node.url();
    for (origin, allowed) in [
        ("https://evil.example", false),
        ("http://127.0.0.1.evil.example", false),
        ("null", false),
        (own.as_str(), true),
        ("https://app.example.com", true),
    ] {
        let result = websocket(&node, "", &[("x-api-key", ALL), ("origin", origin)]).await;
        assert_eq!(result.is_ok(), allowed, "{origin}: {:?}", result.err());
        if let Err(e) = result {
            assert!(e.to_string().contains("403"), "{origin}: {e}");
        }
    }
    // Without an Origin (not a browser): taken.
    assert!(websocket(&node, "", &[("x-api-key", ALL)]).await.is_ok());
    Ok(())
}
