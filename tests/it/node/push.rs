//! Push end to end: SSE and WebSocket clients on two nodes get every matching event
//! published through the SDK, in stream order, once; a client that comes back with its
//! last id gets exactly what it missed; a resume point the stream no longer holds (or of
//! another epoch) is announced with `bus.push.gap` before the rest.

use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{BusNode, NatsCluster};

use super::push_fixtures::*;

async fn two_nodes(
    dir: &std::path::Path,
    more: &[(&str, &str)],
) -> anyhow::Result<(NatsCluster, BusNode, BusNode)> {
    let cluster = NatsCluster::start(1).await?;
    let env = push_env(&cluster, dir, more)?;
    let a = start("push-a", &env).await?;
    let b = start("push-b", &env).await?;
    Ok((cluster, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sse_clients_on_two_nodes_and_a_websocket_get_every_event_in_order_once()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cluster, a, b) = two_nodes(dir.path(), &[]).await?;
    let mut clients = Vec::new();
    for i in 0..200 {
        let node = if i % 2 == 0 { &a } else { &b };
        clients.push(sse(node, "types=shop.%3E", &[("x-api-key", ALL)]).await?);
    }
    let (ws, _ws_tx) = websocket(&b, "types=shop.%3E", &[("x-api-key", ALL)]).await?;
    for c in &clients {
        c.hello().await?;
    }
    ws.hello().await?;

    let bus = publisher(&cluster).await?;
    let mut published = Vec::new();
    for n in 0..1000u64 {
        published.push(publish(&bus, "shop.order.created", n).await?);
        if n % 10 == 0 {
            // Not matching: never pushed to these clients.
            publish(&bus, "billing.invoice.paid", n).await?;
        }
    }
    let expected: Vec<u64> = (0..1000).collect();
    for (i, c) in clients.iter().chain(std::iter::once(&ws)).enumerate() {
        c.wait_events(1000, Duration::from_secs(90)).await?;
        let events = c.inbox.events();
        assert_eq!(events.len(), 1000, "client {i}: none twice");
        assert_eq!(numbers(&events), expected, "client {i}: publish order");
        assert_eq!(c.seqs(), published, "client {i}: stream sequences");
        assert!(
            events.iter().all(|g| g.name == "shop.order.created"),
            "client {i}"
        );
    }
    // Each node told its clients who it is.
    let hello = clients[0].inbox.notices("bus.push.hello");
    assert_eq!(hello[0].data["node"], "push-a", "{:?}", hello);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_with_its_last_id_gets_exactly_what_it_missed_over_sse_and_websocket()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cluster, a, b) = two_nodes(dir.path(), &[]).await?;
    let bus = publisher(&cluster).await?;
    let first = sse(&a, "types=shop.%3E", &[("x-api-key", ALL)]).await?;
    first.hello().await?;
    for n in 0..10 {
        publish(&bus, "shop.order.created", n).await?;
    }
    first.wait_events(10, Duration::from_secs(20)).await?;
    let last_id = first.last_id().unwrap_or_default();
    let last_seq = first.seqs().last().copied().unwrap_or_default();
    drop(first);
    // Missed while away, some of them of a type the client does not read.
    for n in 10..30 {
        publish(&bus, "shop.order.created", n).await?;
        publish(&bus, "billing.invoice.paid", n).await?;
    }
    // Back on the other node, with the header a browser sends.
    let back = sse(
        &b,
        "types=shop.%3E",
        &[("x-api-key", ALL), ("last-event-id", &last_id)],
    )
    .await?;
    back.wait_events(20, Duration::from_secs(20)).await?;
    for n in 30..35 {
        publish(&bus, "shop.order.created", n).await?;
    }
    back.wait_events(25, Duration::from_secs(20)).await?;
    assert_eq!(numbers(&back.inbox.events()), (10..35).collect::<Vec<_>>());
    assert!(back.inbox.notices("bus.push.gap").is_empty());

    // The same with the query (clients that cannot set headers) and over WebSocket.
    let query = format!("types=shop.%3E&last_event_id={last_id}");
    let by_query = sse(&a, &query, &[("x-api-key", ALL)]).await?;
    let (ws, _tx) = websocket(
        &b,
        &format!("types=shop.%3E&since={last_seq}"),
        &[("x-api-key", ALL)],
    )
    .await?;
    for c in [&by_query, &ws] {
        c.wait_events(25, Duration::from_secs(20)).await?;
        assert_eq!(numbers(&c.inbox.events()), (10..35).collect::<Vec<_>>());
    }
    publish(&bus, "shop.order.created", 35).await?;
    for c in [&by_query, &ws] {
        c.wait_events(26, Duration::from_secs(20)).await?;
        assert_eq!(
            numbers(&c.inbox.events()),
            (10..36).collect::<Vec<_>>(),
            "then live, once"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_the_stream_no_longer_holds_is_announced_as_a_gap_first()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cluster, a, _b) = two_nodes(dir.path(), &[]).await?;
    let bus = publisher(&cluster).await?;
    for n in 0..10 {
        publish(&bus, "shop.order.created", n).await?;
    }
    let stream = bus.jetstream().get_stream("BUS_EVENTS").await?;
    stream.purge().await?;
    let mut kept = Vec::new();
    for n in 10..15 {
        kept.push(publish(&bus, "shop.order.created", n).await?);
    }
    let hello = sse(&a, "types=shop.%3E", &[("x-api-key", ALL)]).await?;
    hello.hello().await?;
    let epoch = hello.inbox.notices("bus.push.hello")[0].data["epoch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // From before the first sequence still held: the gap, then everything held.
    let trimmed = sse(
        &a,
        &format!("types=shop.%3E&last_event_id={epoch}:3"),
        &[("x-api-key", ALL)],
    )
    .await?;
    trimmed.wait_events(5, Duration::from_secs(20)).await?;
    let all = trimmed
        .inbox
        .got
        .lock()
        .map(|g| g.clone())
        .unwrap_or_default();
    assert_eq!(all[0].name, "bus.push.hello");
    assert_eq!(all[1].name, "bus.push.gap", "{all:?}");
    assert_eq!(all[1].data["reason"], "trimmed");
    assert_eq!(all[1].data["requested"], 4);
    assert_eq!(all[1].data["first_seq"], kept[0]);
    assert_eq!(trimmed.seqs(), kept);

    // Of another epoch (a stream deleted and made again): announced, then all held.
    let other = sse(
        &a,
        "types=shop.%3E&last_event_id=BUS_EVENTS.1:12",
        &[("x-api-key", ALL)],
    )
    .await?;
    other.wait_events(5, Duration::from_secs(20)).await?;
    let gap = other.inbox.notices("bus.push.gap");
    assert_eq!(gap.len(), 1);
    assert_eq!(gap[0].data["reason"], "epoch");
    assert_eq!(other.seqs(), kept);

    // Over WebSocket, the same notice as a frame.
    let (ws, _tx) = websocket(&a, "types=shop.%3E&since=2", &[("x-api-key", ALL)]).await?;
    ws.wait_events(5, Duration::from_secs(20)).await?;
    assert_eq!(
        ws.inbox.notices("bus.push.gap")[0].data["first_seq"],
        kept[0]
    );

    // A resume point that is not one: 400.
    let bad = sse_response(&a, "last_event_id=nonsense", &[("x-api-key", ALL)]).await?;
    assert_eq!(bad.status(), 400);
    Ok(())
}
