//! A rolling deploy: members of one group that handle different event types. The
//! group's filter is the union of the members' types and never narrows; an event that
//! reaches a member without its handler is handed back for one that has it, without
//! spending its attempts; and one that no member takes is dead-lettered as "no handler"
//! after the group's grace, not before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::GroupName;
use bus_sdk::{Bus, HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, Probe, try_poll_until, wait_until};

const GROUP: &str = "rolling";

fn group() -> GroupName {
    GroupName::new(GROUP).unwrap_or_else(|e| panic!("{e}"))
}

/// The filters of the group's consumer.
async fn group_filters(bus: &Bus) -> anyhow::Result<Vec<String>> {
    let groups = bus.groups().await?;
    let mut filters = groups
        .into_iter()
        .find(|g| g.name == GROUP)
        .map(|g| g.filters)
        .unwrap_or_default();
    filters.sort();
    Ok(filters)
}

/// An event as published: its id and stream sequence.
type Published = Vec<(String, u64)>;

/// Publishes `shop.order.created` and `shop.payment.failed` events in turn until stopped
/// (at most 1 000 of each); returns each kind as published.
fn publish_both_kinds(
    bus: Bus,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<(Published, Published)>> {
    tokio::spawn(async move {
        let (mut orders, mut payments) = (Vec::new(), Vec::new());
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && n < 1000 {
            let r = bus.publish(&order(n)).await?;
            orders.push((r.id, r.seq));
            let r = bus.publish(&PaymentFailed { order_id: n }).await?;
            payments.push((r.id, r.seq));
            n += 1;
            // Paced, so that both versions see events of both kinds while they run.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok((orders, payments))
    })
}

/// Deliveries the group's consumer has made, redeliveries included.
async fn deliveries(bus: &Bus) -> anyhow::Result<u64> {
    let stream = bus
        .jetstream()
        .get_stream(&bus.config().streams.events_name)
        .await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(GROUP)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(consumer.info().await?.delivered.consumer_sequence)
}

/// The events stream's last sequence.
async fn last_seq(bus: &Bus) -> anyhow::Result<u64> {
    let mut stream = bus
        .jetstream()
        .get_stream(&bus.config().streams.events_name)
        .await?;
    Ok(stream.info().await?.state.last_sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_members_with_different_types_when_events_of_both_flow_should_hand_off_and_dead_letter_nothing()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let old_bus = bus_for(&cluster).await?;
    let new_bus = bus_for(&cluster).await?;
    let publisher = bus_for(&cluster).await?;
    let orders = Recorder::default();
    let payments = Recorder::default();
    let payment_attempts: Arc<Mutex<Vec<u32>>> = Arc::default();

    // The old version: orders only.
    let old = start_recording(old_bus.group(GROUP), &orders, 0).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let flow = publish_both_kinds(publisher.clone(), stop.clone());
    wait_until(
        "the old member handles orders",
        Duration::from_secs(30),
        || orders.distinct() >= 20,
    )
    .await?;

    // The new version: orders and payments. One attempt only: had a hand-back counted as
    // an attempt, a handed-off payment would be dead-lettered as exhausted.
    let (orders_new, payments_new, attempts) =
        (orders.clone(), payments.clone(), payment_attempts.clone());
    let new = new_bus
        .group(GROUP)
        .max_deliver(1)
        .on(move |ev: Received<OrderCreated>| {
            let rec = orders_new.clone();
            async move {
                rec.record(1, ev.meta.id());
                Ok::<(), HandlerError>(())
            }
        })
        .on(move |ev: Received<PaymentFailed>| {
            let (rec, attempts) = (payments_new.clone(), attempts.clone());
            async move {
                rec.record(1, ev.meta.id());
                if let Ok(mut a) = attempts.lock() {
                    a.push(ev.meta.attempt);
                }
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    let both = vec![
        "bus.evt.shop.order.created".to_owned(),
        "bus.evt.shop.payment.failed".to_owned(),
        "bus.redrive.rolling.>".to_owned(),
    ];
    assert_eq!(
        group_filters(&publisher).await?,
        both,
        "the filter is the union"
    );
    // Every payment stored after this is the group's (before it, none was).
    let widened_at = last_seq(&publisher).await?;
    let first_payment_seen = payments.distinct();

    // Both versions run side by side for a while, then the old one leaves. It leaves
    // once the flow has stopped and the group is idle: a delivery the server sends to a
    // member at the moment it unsubscribes is lost in flight, comes back after the ack
    // wait and counts as an attempt, as if the member had died (ARCHITECTURE.md,
    // "Known limits"); `given_a_member_stopping_with_fetched_deliveries_...` covers what
    // a leaving member returns.
    wait_until(
        "payments handled beside the old member",
        Duration::from_secs(30),
        || payments.distinct() >= first_payment_seen + 100,
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    let (published_orders, published_payments) = flow.await??;
    wait_group_idle(&publisher, GROUP, Duration::from_secs(60)).await?;
    assert!(old.shutdown().await);
    // A re-open of the new member (or a restart of an old one) never narrows the filter.
    assert_eq!(group_filters(&publisher).await?, both);
    let handled_orders = orders.counts();
    let lost: Vec<_> = published_orders
        .iter()
        .filter(|(id, _)| !handled_orders.contains_key(id))
        .collect();
    assert!(lost.is_empty(), "orders never handled: {lost:?}");
    let handled_payments = payments.counts();
    let lost: Vec<_> = published_payments
        .iter()
        .filter(|(id, seq)| *seq > widened_at && !handled_payments.contains_key(id))
        .collect();
    assert!(lost.is_empty(), "payments never handled: {lost:?}");
    // Handlers never fail here: every delivery beyond one per handling was a hand-off by
    // the old member, which has no handler for payments.
    let handled = orders.total() + payments.total();
    let handoffs = deliveries(&publisher).await?.saturating_sub(handled);
    assert!(handoffs > 0, "the old member handed payments back");
    let letters = publisher.dead_letters(Some(&group()), 0, 100).await?;
    let reasons: Vec<_> = letters
        .letters
        .iter()
        .map(|l| l.letter.reason.clone())
        .collect();
    assert!(reasons.is_empty(), "dead-lettered: {reasons:?}");
    let attempts = payment_attempts
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .clone();
    assert!(
        attempts.iter().all(|a| *a == 1),
        "a hand-off is no attempt: {attempts:?}"
    );
    assert!(new.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_type_no_live_member_handles_should_dead_letter_it_as_no_handler_after_the_grace()
-> anyhow::Result<()> {
    const GRACE: Duration = Duration::from_secs(2);
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let payments = Recorder::default();
    // A newer member came and went: the filter still takes its payments.
    let newer = bus
        .group(GROUP)
        .on(|_: Received<OrderCreated>| async { Ok::<(), HandlerError>(()) })
        .on({
            let rec = payments.clone();
            move |ev: Received<PaymentFailed>| {
                let rec = rec.clone();
                async move {
                    rec.record(1, ev.meta.id());
                    Ok::<(), HandlerError>(())
                }
            }
        })
        .start()
        .await?;
    assert!(newer.shutdown().await);
    let orders = Recorder::default();
    let older = start_recording(bus.group(GROUP).no_handler_grace(GRACE), &orders, 0).await?;
    assert_eq!(
        group_filters(&bus).await?,
        [
            "bus.evt.shop.order.created",
            "bus.evt.shop.payment.failed",
            "bus.redrive.rolling.>"
        ],
        "a member that starts later widens the filter, never narrows it"
    );

    let published = tokio::time::Instant::now();
    let receipt = bus.publish(&PaymentFailed { order_id: 7 }).await?;
    let bus_ref = &bus;
    let letter = try_poll_until("a dead letter", Duration::from_secs(30), || async move {
        let page = bus_ref.dead_letters(Some(&group()), 0, 10).await?;
        Ok(match page.letters.into_iter().next() {
            Some(l) => Probe::Ready(l.letter),
            None => Probe::NotYet(format!("none, {} messages examined", page.examined)),
        })
    })
    .await?;
    let waited = published.elapsed();
    assert_eq!(letter.event_id.as_deref(), Some(receipt.id.as_str()));
    assert!(
        letter
            .reason
            .starts_with("no handler for event type shop.payment.failed"),
        "{}",
        letter.reason
    );
    assert!(
        waited >= GRACE,
        "dead-lettered after {waited:?}, before the grace of {GRACE:?}"
    );
    assert_eq!(payments.total(), 0);
    // Orders still flow meanwhile.
    publish_orders_until_handled(&bus, 5, &orders).await?;
    assert!(older.shutdown().await);
    Ok(())
}

/// Event types of their own for the members that start at once, one type each.
macro_rules! one_type_each {
    ($($name:ident = $ty:literal),*) => {
        $(
            #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
            struct $name {}
            impl bus_sdk::EventPayload for $name {
                const EVENT_TYPE: &'static str = $ty;
            }
        )*
    };
}
one_type_each!(
    A = "roll.a",
    B = "roll.b",
    C = "roll.c",
    D = "roll.d",
    E = "roll.e",
    F = "roll.f"
);

/// Starts a member of `GROUP` on `bus` that handles `T` only.
async fn start_for<T: bus_sdk::EventPayload + serde::de::DeserializeOwned + Send + 'static>(
    bus: &Bus,
) -> anyhow::Result<bus_sdk::Group> {
    Ok(bus
        .group(GROUP)
        .on(|_: Received<T>| async { Ok::<(), HandlerError>(()) })
        .start()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_members_with_different_types_starting_at_once_should_leave_every_type_in_the_filter()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    // The consumer exists already, so that every start below is a read-and-widen.
    let first = bus_for(&cluster).await?;
    let seed = start_recording(first.group(GROUP), &Recorder::default(), 0).await?;
    let mut buses = Vec::new();
    for _ in 0..6 {
        // One connection each, as if each member were its own process.
        buses.push(bus_for(&cluster).await?);
    }
    let (a, b, c, d, e, f) = tokio::join!(
        start_for::<A>(&buses[0]),
        start_for::<B>(&buses[1]),
        start_for::<C>(&buses[2]),
        start_for::<D>(&buses[3]),
        start_for::<E>(&buses[4]),
        start_for::<F>(&buses[5]),
    );
    let members = [a?, b?, c?, d?, e?, f?];
    // Read at once: a member repairs a filter that lost its types after a while, but the
    // events of those types stored meanwhile would have been passed by for good.
    let filters = group_filters(&first).await?;
    for t in ["a", "b", "c", "d", "e", "f"] {
        let subject = format!("bus.evt.roll.{t}");
        assert!(
            filters.contains(&subject),
            "{subject} missing from {filters:?}"
        );
    }
    assert!(filters.contains(&"bus.evt.shop.order.created".to_owned()));
    for m in members {
        assert!(m.shutdown().await);
    }
    assert!(seed.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_member_stopping_with_fetched_deliveries_should_return_them_without_spending_attempts()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    // One slot: the first event holds it until released, the second waits fetched.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let stopping = bus
        .group(GROUP)
        .concurrency(1)
        .on(move |ev: Received<OrderCreated>| {
            let held = held.clone();
            async move {
                if ev.data.order_id == 1 {
                    let _ = held.acquire().await;
                }
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    bus.publish(&order(1)).await?;
    let second = bus.publish(&order(2)).await?;
    let bus_ref = &bus;
    try_poll_until(
        "both events delivered to the first member",
        Duration::from_secs(10),
        || async move {
            let g = bus_ref.groups().await?;
            let g = g.iter().find(|g| g.name == GROUP);
            Ok(match g {
                Some(g) if g.in_flight == 2 && g.pending == 0 => Probe::Ready(()),
                other => Probe::NotYet(format!("{other:?}")),
            })
        },
    )
    .await?;

    // The member that takes over allows one attempt: had the returned delivery counted
    // as one, the event would be dead-lettered as exhausted, never handled.
    let other_bus = bus_for(&cluster).await?;
    let attempts: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let seen = attempts.clone();
    let taking_over = other_bus
        .group(GROUP)
        .max_deliver(1)
        .on(move |ev: Received<OrderCreated>| {
            let seen = seen.clone();
            async move {
                if let Ok(mut s) = seen.lock() {
                    s.push((ev.meta.id().to_owned(), ev.meta.attempt));
                }
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    let shutdown = tokio::spawn(async move { stopping.shutdown().await });
    // Well within the ack wait (30 s): only a returned delivery comes back this soon.
    wait_until(
        "the second event handled by the member that took over",
        Duration::from_secs(10),
        || attempts.lock().is_ok_and(|a| !a.is_empty()),
    )
    .await?;
    gate.add_permits(1);
    assert!(shutdown.await?, "the first member finished its handler");
    let attempts = attempts.lock().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
    assert_eq!(attempts, vec![(second.id, 1)]);
    wait_group_idle(&bus, GROUP, Duration::from_secs(10)).await?;
    let letters = bus.dead_letters(Some(&group()), 0, 10).await?;
    assert!(
        letters.letters.is_empty(),
        "dead-lettered: {:?}",
        letters.letters
    );
    assert!(taking_over.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_filter_lock_left_by_a_member_that_died_should_take_it_over_once_stale()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let bucket = bus_core::topology::handoff_bucket(&bus.config().streams.events_name);
    let store = bus.jetstream().get_key_value(bucket).await?;
    // A member took the lock and died holding it.
    store
        .create(format!("{GROUP}.filter"), "died holding it".into())
        .await?;
    let started = tokio::time::Instant::now();
    let member = start_for::<A>(&bus).await?;
    let waited = started.elapsed();
    // The tests' request timeout is 1 s: a holder keeps the lock for at most 2 s, and a
    // waiter takes it over 2 s after that.
    assert!(
        waited >= Duration::from_secs(4),
        "the lock was not honoured: started after {waited:?}"
    );
    assert!(
        group_filters(&bus)
            .await?
            .contains(&"bus.evt.roll.a".to_owned())
    );
    // Released after use: the next member starts at once.
    let started = tokio::time::Instant::now();
    let next = start_for::<B>(&bus).await?;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the lock was left held: the next start took {:?}",
        started.elapsed()
    );
    assert!(member.shutdown().await);
    assert!(next.shutdown().await);
    Ok(())
}
