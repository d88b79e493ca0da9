//! Broadcast subscriptions: every instance gets every event.

use std::time::Duration;

use bus_sdk::{HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_instances_should_each_get_every_event() -> anyhow::Result<()> {
    const EVENTS: u64 = 200;
    let cluster = NatsCluster::start(3).await?;
    let mut subs = Vec::new();
    let mut recorders = Vec::new();
    for _ in 0..2 {
        let bus = bus_for(&cluster).await?;
        let rec = Recorder::default();
        let r = rec.clone();
        let sub = bus
            .broadcast()
            .on(move |ev: Received<OrderCreated>| {
                let r = r.clone();
                async move {
                    r.record(0, ev.meta.id());
                    Ok::<(), HandlerError>(())
                }
            })
            .start()
            .await?;
        subs.push((bus, sub));
        recorders.push(rec);
    }
    let bus = bus_for(&cluster).await?;
    let events: Vec<_> = (0..EVENTS)
        .map(|n| bus.event(&order(n)).map(|b| b.build()))
        .collect::<Result<_, _>>()?;
    for r in bus.publish_batch(&events).await {
        r?;
    }
    for (i, rec) in recorders.iter().enumerate() {
        wait_until(
            &format!("instance {i} got every event"),
            Duration::from_secs(30),
            || rec.distinct() as u64 == EVENTS,
        )
        .await?;
        assert_eq!(rec.total(), EVENTS, "instance {i} got an event twice");
    }
    for (_, sub) in subs {
        sub.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_overlapping_patterns_and_a_backlog_should_start_and_deliver_each_event_once()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    for n in 0..5 {
        bus.publish(&order(n)).await?;
    }
    let rec = Recorder::default();
    let (a, b) = (rec.clone(), rec.clone());
    let sub = bus
        .broadcast()
        .on_any(
            bus_core::EventPattern::new("shop.>")?,
            move |m: bus_sdk::EventMeta| {
                let a = a.clone();
                async move {
                    a.record(0, &m.event.id);
                    Ok::<(), HandlerError>(())
                }
            },
        )
        .on_any(
            bus_core::EventPattern::new("shop.order.*")?,
            move |m: bus_sdk::EventMeta| {
                let b = b.clone();
                async move {
                    b.record(1, &m.event.id);
                    Ok::<(), HandlerError>(())
                }
            },
        )
        .start_at(bus_sdk::StartAt::All)
        .start()
        .await?;
    for n in 5..10 {
        bus.publish(&order(n)).await?;
    }
    wait_until("backlog and new events", Duration::from_secs(10), || {
        rec.distinct() == 10
    })
    .await?;
    assert_eq!(rec.total(), 10, "each event once");
    sub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_hung_handler_should_skip_its_event_after_the_timeout_and_handle_the_next()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let rec = Recorder::default();
    let sub = bus
        .broadcast()
        .handler_timeout(Duration::from_millis(300))
        .on(hangs_on_order_1(rec.clone()))
        .start()
        .await?;
    bus.publish(&order(1)).await?;
    bus.publish(&order(2)).await?;
    wait_until(
        "the event after the hung one handled",
        Duration::from_secs(10),
        || rec.distinct() == 1,
    )
    .await?;
    assert_eq!(rec.total(), 1, "only the second event finished");
    sub.shutdown().await;

    // A zero timeout is refused, naming the option.
    let refused = bus
        .broadcast()
        .handler_timeout(Duration::ZERO)
        .on(|_ev: Received<OrderCreated>| async { Ok::<(), HandlerError>(()) })
        .start()
        .await;
    assert!(
        matches!(
            refused,
            Err(bus_sdk::SubscribeError::InvalidOption {
                option: "handler_timeout",
                ..
            })
        ),
        "{refused:?}"
    );
    Ok(())
}
