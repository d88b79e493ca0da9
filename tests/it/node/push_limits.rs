//! Push under pressure: a client that stops reading is cut off by its buffer's policy
//! (and can see why) while the others get every event, with the node's memory bounded
//! meanwhile; `push.max_clients` refuses past the bound; a node that stops ends every
//! stream with the reason instead of holding its shutdown on them.

use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, Probe, try_poll_until};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::push_fixtures::*;

/// The node's resident memory, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Whether the node's metrics count `n` clients cut off for being slow.
async fn slow_drops(
    client: &reqwest::Client,
    node: &bus_tests::BusNode,
    n: u32,
) -> anyhow::Result<bool> {
    let text = metrics_text(client, node).await?;
    Ok(text.contains(&format!("bus_push_drops_total{{reason=\"slow\"}} {n}")))
}

async fn publish_blob(
    bus: &bus_sdk::Bus,
    event_type: &str,
    n: u64,
    blob: &str,
) -> anyhow::Result<()> {
    let event =
        bus_sdk::bus_core::Event::builder(bus_sdk::EventType::new(event_type)?, "/tests/push")
            .data_json(&serde_json::json!({"n": n, "blob": blob}))?
            .build();
    bus.publish_event(&event).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_while_the_others_get_everything_and_memory_stays_bounded()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = NatsCluster::start(1).await?;
    let env = push_env(&cluster, dir.path(), &[("BUS__PUSH__CLIENT_BUFFER", "16")])?;
    let node = start("push-slow", &env).await?;
    let pid = node.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let client = http()?;

    // Two clients that stop reading, on types of their own: `never` never reads again;
    // `back` reads again once it has been cut off, and must find the reason at the end.
    let mut never = stalled_client(&node, "shop.first").await?;
    let mut back = stalled_client(&node, "shop.blob").await?;
    let readers = [
        sse(&node, "types=shop.%3E", &[("x-api-key", ALL)]).await?,
        sse(&node, "types=shop.%3E", &[("x-api-key", ALL)]).await?,
    ];
    for r in &readers {
        r.hello().await?;
    }
    try_poll_until("four push clients", Duration::from_secs(10), || async {
        let text = metrics_text(&client, &node).await?;
        Ok(if text.contains("bus_push_clients{transport=\"sse\"} 4") {
            Probe::Ready(())
        } else {
            Probe::NotYet(text)
        })
    })
    .await?;

    let before = rss_kib(pid)?;
    let mut peak = before;
    let bus = publisher(&cluster).await?;
    let blob = "x".repeat(32 * 1024);
    // `never`'s type until it is cut off.
    let mut first = 0;
    while !slow_drops(&client, &node, 1).await? {
        anyhow::ensure!(
            first < 2000,
            "`never` was not cut off after {first} events of 32 KiB"
        );
        publish_blob(&bus, "shop.first", first, &blob).await?;
        first += 1;
    }
    // Then `back`'s, 1500 of 32 KiB (47 MiB in all).
    const EVENTS: u64 = 1500;
    let mut back_read = None;
    for n in 0..EVENTS {
        publish_blob(&bus, "shop.blob", n, &blob).await?;
        if n % 50 == 0 {
            peak = peak.max(rss_kib(pid)?);
            if back_read.is_none() && slow_drops(&client, &node, 2).await? {
                // Cut off: it reads again, as fast as it can.
                let mut stream = back;
                back = tokio::net::TcpStream::connect(node.url().trim_start_matches("http://"))
                    .await?;
                back_read = Some(tokio::spawn(async move {
                    let mut seen = Vec::new();
                    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut seen))
                        .await??;
                    anyhow::Ok(String::from_utf8_lossy(&seen).into_owned())
                }));
            }
        }
    }
    drop(back);
    for r in &readers {
        r.wait_events((first + EVENTS) as usize, Duration::from_secs(120))
            .await?;
        let events = r.inbox.events();
        let of = |t: &str| {
            numbers(
                &events
                    .iter()
                    .filter(|g| g.name == t)
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(of("shop.first"), (0..first).collect::<Vec<_>>());
        assert_eq!(of("shop.blob"), (0..EVENTS).collect::<Vec<_>>());
        assert!(
            !r.inbox.has_ended(),
            "a reader that keeps up is not cut off"
        );
    }
    peak = peak.max(rss_kib(pid)?);
    // A node that buffered the events for the clients that do not read would have grown
    // by all of them.
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 24,
        "the node grew by {growth_mib} MiB ({before} KiB before, {peak} KiB at most)"
    );

    let Some(back_read) = back_read else {
        anyhow::bail!("`back` was never cut off");
    };
    let seen = back_read.await??;
    // (The raw response: chunked, so the reason is followed by the last chunk.)
    let reason = seen.rfind(": bus.push.closed slow");
    assert!(
        reason.is_some() && reason > seen.rfind("data: "),
        "the reason after the last event it got: {}",
        &seen[seen.len().saturating_sub(300)..]
    );
    // `never` had its connection closed (after the kill grace): it reads to the end of
    // what the sockets held.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), never.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the node closed the connection of the client that never reads: {read:?}"
    );
    Ok(())
}

/// A raw connection that asks for `types` and reads nothing, with a small receive
/// buffer.
async fn stalled_client(
    node: &bus_tests::BusNode,
    types: &str,
) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let host = node.url().trim_start_matches("http://").to_owned();
    let mut stream = socket.connect(host.parse()?).await?;
    let request = format!(
        "GET /v1/events/stream?types={types} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {ALL}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_clients_a_client_is_refused_with_503_until_one_leaves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = NatsCluster::start(1).await?;
    let env = push_env(&cluster, dir.path(), &[("BUS__PUSH__MAX_CLIENTS", "2")])?;
    let node = start("push-max", &env).await?;
    let one = sse(&node, "", &[("x-api-key", ALL)]).await?;
    let (two, _tx) = websocket(&node, "", &[("x-api-key", ALL)]).await?;
    one.hello().await?;
    two.hello().await?;
    let third = sse_response(&node, "", &[("x-api-key", ALL)]).await?;
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    drop(one);
    try_poll_until("a slot again", Duration::from_secs(10), || async {
        let r = sse_response(&node, "", &[("x-api-key", ALL)]).await?;
        Ok(if r.status() == 200 {
            Probe::Ready(())
        } else {
            Probe::NotYet(r.status().to_string())
        })
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_ends_its_streams_with_the_reason_and_exits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = NatsCluster::start(1).await?;
    let env = push_env(&cluster, dir.path(), &[])?;
    let mut node = start("push-stop", &env).await?;
    let response = sse_response(&node, "", &[("x-api-key", ALL)]).await?;
    assert_eq!(response.status(), 200);
    let (ws, _tx) = websocket(&node, "", &[("x-api-key", ALL)]).await?;
    ws.hello().await?;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    // The hello first, so the stream is open before the node is told to stop.
    while !text.contains("bus.push.hello") {
        match tokio::time::timeout(Duration::from_secs(10), body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => anyhow::bail!("no hello: {other:?} after {text:?}"),
        }
    }
    node.terminate()?;
    let status = node.wait_exit(Duration::from_secs(15)).await?;
    assert!(status.success(), "{status:?}\n{}", node.log());
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(5), body.next()).await
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.trim_end().ends_with(": bus.push.closed shutdown"),
        "{text}"
    );
    let close = ws.inbox.notices("bus.push.close");
    assert_eq!(
        close.first().map(|c| c.data["code"].clone()),
        Some(serde_json::json!(1001)),
        "{close:?}"
    );
    Ok(())
}
