//! Consumer groups on a real 3-node cluster with R3 streams: sharing, shutdown, recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bus_sdk::{HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};

const TEN_THOUSAND: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_three_members_when_10000_events_are_published_should_handle_each_exactly_once_spread_over_all()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let recorder = Recorder::default();
    let mut members = Vec::new();
    let mut buses = Vec::new();
    for m in 0..3 {
        // One connection per member, as if each were its own process.
        let bus = bus_for(&cluster).await?;
        let member = recording_member(&bus, "billing", &recorder, m).await?;
        members.push(member);
        buses.push(bus);
    }
    let publisher = bus_for(&cluster).await?;
    let events: Vec<_> = (0..TEN_THOUSAND)
        .map(|n| publisher.event(&order(n)).map(|b| b.build()))
        .collect::<Result<_, _>>()?;
    let receipts = publisher.publish_batch(&events).await;
    let stored = receipts
        .iter()
        .filter(|r| matches!(r, Ok(r) if !r.duplicate))
        .count();
    assert_eq!(
        stored as u64, TEN_THOUSAND,
        "every publish got a fresh PubAck"
    );

    wait_until("all events handled", Duration::from_secs(120), || {
        recorder.distinct() as u64 == TEN_THOUSAND
    })
    .await?;
    wait_group_idle(&publisher, "billing", Duration::from_secs(30)).await?;

    let counts = recorder.counts();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "handled more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    assert_eq!(recorder.total(), TEN_THOUSAND);
    let spread = recorder.per_member();
    for m in 0..3 {
        let n = spread.get(&m).copied().unwrap_or(0);
        assert!(
            n >= TEN_THOUSAND / 10,
            "member {m} handled only {n}: {spread:?}"
        );
    }
    for member in members {
        assert!(member.shutdown().await);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_running_handler_when_the_member_shuts_down_should_finish_and_ack_it()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let started = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(AtomicU32::new(0));
    let (s, f) = (started.clone(), finished.clone());
    let member = bus
        .group("slow")
        .on(move |_ev: Received<OrderCreated>| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(500)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    bus.publish(&order(1)).await?;
    wait_until("handler started", Duration::from_secs(10), || {
        started.load(Ordering::SeqCst) == 1
    })
    .await?;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "shutdown must begin mid-handler"
    );
    assert!(
        member.shutdown().await,
        "shutdown finished within the grace"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    // Acked, not left for redelivery.
    wait_group_idle(&bus, "slow", Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_consumer_was_deleted_when_events_arrive_should_recreate_it_and_handle_them()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let recorder = Recorder::default();
    let member = recording_member(&bus, "audit", &recorder, 0).await?;
    bus.publish(&order(1)).await?;
    wait_until("first event", Duration::from_secs(10), || {
        recorder.distinct() == 1
    })
    .await?;

    let stream = bus
        .jetstream()
        .get_stream(&bus.config().streams.events_name)
        .await?;
    stream.delete_consumer("audit").await?;
    for n in 2..=5 {
        bus.publish(&order(n)).await?;
    }
    wait_until("events after the deletion", Duration::from_secs(60), || {
        recorder.distinct() == 5
    })
    .await?;
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_types_in_one_group_should_dispatch_each_to_its_handler_with_metadata()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    // The handlers only report what they got: an assertion failing in a handler would
    // panic there, which the SDK counts as a failed delivery (redelivered, retried), so
    // the test would time out instead of showing the assertion's message.
    let (orders_tx, mut orders) = tokio::sync::mpsc::channel(4);
    let (payments_tx, mut payments) = tokio::sync::mpsc::channel(4);
    let member = bus
        .group("router")
        .on(move |ev: Received<OrderCreated>| {
            let tx = orders_tx.clone();
            async move {
                let m = &ev.meta;
                let seen = (
                    ev.data.order_id,
                    m.id().to_owned(),
                    m.attempt,
                    m.group.clone(),
                    m.event.event_type.as_str().to_owned(),
                    m.event.source.clone(),
                    m.stream_seq,
                );
                tx.send(seen).await?;
                Ok::<(), HandlerError>(())
            }
        })
        .on(move |ev: Received<PaymentFailed>| {
            let tx = payments_tx.clone();
            async move {
                let m = &ev.meta;
                let seen = (
                    ev.data.order_id,
                    m.event.event_type.as_str().to_owned(),
                    m.stream_seq,
                );
                tx.send(seen).await?;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    let receipt = bus.publish(&order(7)).await?;
    assert_eq!(receipt.event_type, "shop.order.created");
    assert_eq!(receipt.stream, "BUS_EVENTS");
    let paid = bus.publish(&PaymentFailed { order_id: 8 }).await?;
    let order_seen = tokio::time::timeout(Duration::from_secs(10), orders.recv())
        .await
        .map_err(|_| anyhow::anyhow!("the order was not handled within 10 s"))?
        .ok_or_else(|| anyhow::anyhow!("order handler channel closed"))?;
    assert_eq!(
        order_seen,
        (
            7,
            receipt.id.clone(),
            1,
            Some("router".to_owned()),
            "shop.order.created".to_owned(),
            "/tests".to_owned(),
            receipt.seq,
        ),
        "(order id, event id, attempt, group, type, source, stream sequence)"
    );
    let payment_seen = tokio::time::timeout(Duration::from_secs(10), payments.recv())
        .await
        .map_err(|_| anyhow::anyhow!("the payment was not handled within 10 s"))?
        .ok_or_else(|| anyhow::anyhow!("payment handler channel closed"))?;
    assert_eq!(
        payment_seen,
        (8, "shop.payment.failed".to_owned(), paid.seq),
        "(order id, type, stream sequence)"
    );
    // Each went to its own handler once: nothing more arrives on either channel.
    wait_group_idle(&bus, "router", Duration::from_secs(10)).await?;
    use tokio::sync::mpsc::error::TryRecvError;
    let again = (orders.try_recv(), payments.try_recv());
    assert!(
        matches!(again, (Err(TryRecvError::Empty), Err(TryRecvError::Empty))),
        "handled again: {again:?}"
    );
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_same_event_id_when_published_twice_should_store_it_once() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let bus = bus_for(&cluster).await?;
    let event = bus.event(&order(1))?.id("order-1-created").build();
    let first = bus.publish_event(&event).await?;
    let second = bus.publish_event(&event).await?;
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.seq, second.seq);
    assert_eq!(stream_messages(&bus, "BUS_EVENTS").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_delivery_its_meta_should_say_what_jetstream_stored() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let _member = bus
        .group("meta")
        .on(move |ev: Received<OrderCreated>| {
            let tx = tx.clone();
            async move {
                let m = &ev.meta;
                tx.send((m.id().to_owned(), m.attempt, m.stream_seq, m.published))
                    .await?;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    // Events of a type the group does not take first: the stream sequence of the order
    // (4) is then not its consumer sequence (1), which the reply subject also carries.
    for n in 0..3 {
        bus.publish(&PaymentFailed { order_id: n }).await?;
    }
    let receipt = bus.publish(&order(3)).await?;
    assert_eq!(receipt.seq, 4);
    let stored = bus
        .jetstream()
        .get_stream(&receipt.stream)
        .await?
        .get_raw_message(receipt.seq)
        .await?;
    let meta = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("handler channel closed"))?;
    assert_eq!(meta, (receipt.id.clone(), 1, receipt.seq, stored.time));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_handlers_that_wait_a_member_should_run_as_many_at_once_as_its_concurrency()
-> anyhow::Result<()> {
    use std::sync::atomic::AtomicUsize;
    const CONCURRENCY: usize = 4;
    const EVENTS: u64 = 3 * CONCURRENCY as u64;
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    // Each handler waits until CONCURRENCY handlers are waiting: if the member ran fewer
    // at once, none would ever finish.
    let barrier = Arc::new(tokio::sync::Barrier::new(CONCURRENCY));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let recorder = Recorder::default();
    let (b, r, m, rec) = (
        barrier.clone(),
        running.clone(),
        most.clone(),
        recorder.clone(),
    );
    let member = bus
        .group("billing")
        .concurrency(CONCURRENCY)
        .on(move |ev: Received<OrderCreated>| {
            let (barrier, running, most, rec) = (b.clone(), r.clone(), m.clone(), rec.clone());
            async move {
                most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                barrier.wait().await;
                running.fetch_sub(1, Ordering::SeqCst);
                rec.record(0, ev.meta.id());
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    publish_orders_until_handled(&bus, EVENTS, &recorder).await?;
    assert_eq!(
        most.load(Ordering::SeqCst),
        CONCURRENCY,
        "never more at once"
    );
    assert!(member.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_handler_that_panics_should_redeliver_its_event_and_keep_handling_the_others()
-> anyhow::Result<()> {
    const EVENTS: u64 = 20;
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let recorder = Recorder::default();
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (rec, seen) = (recorder.clone(), attempts.clone());
    let member = bus
        .group("billing")
        .backoff([Duration::from_millis(50)])
        .on(move |ev: Received<OrderCreated>| {
            let (rec, seen) = (rec.clone(), seen.clone());
            async move {
                // Panics on the first attempt of every even order, before or after waiting.
                if ev.data.order_id.is_multiple_of(2) && ev.meta.attempt == 1 {
                    if ev.data.order_id.is_multiple_of(4) {
                        tokio::task::yield_now().await;
                    }
                    panic!("handler bug for order {}", ev.data.order_id);
                }
                if let Ok(mut seen) = seen.lock() {
                    seen.push((ev.data.order_id, ev.meta.attempt));
                }
                rec.record(0, ev.meta.id());
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    publish_orders_until_handled(&bus, EVENTS, &recorder).await?;
    let mut seen = attempts.lock().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
    seen.sort();
    let expected: Vec<(u64, u32)> = (0..EVENTS)
        .map(|n| (n, if n.is_multiple_of(2) { 2 } else { 1 }))
        .collect();
    assert_eq!(
        seen, expected,
        "each panicked event handled on its second attempt"
    );
    assert!(member.shutdown().await);
    Ok(())
}
