//! How a member fetches: its pulls never go quiet on a backlog, deliveries it fetched
//! ahead of its handler slots are not redelivered while they wait, and pulls a restarted
//! server forgot are asked for again.
//!
//! async-nats' `messages()` stream lost count of its pulls under load and then sat on a
//! backlog for `expires` + 5 s (bus-sdk re-opened it after two missed heartbeats, 8 s).
//! The member now sends its own pull requests and counts them before they are sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_sdk::{HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};

const BACKLOG: u64 = 20_000;
/// Far above the gap between two deliveries of a healthy drain (well under a
/// millisecond), below the member's own recovery from silent pulls (two 2 s heartbeats)
/// and far below the 8-15 s the lost count cost.
const LONGEST_QUIET: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_backlog_when_a_member_with_4_slots_drains_it_should_never_go_quiet()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let events: Vec<_> = (0..BACKLOG)
        .map(|n| bus.event(&order(n)).map(|b| b.build()))
        .collect::<Result<_, _>>()?;
    for r in bus.publish_batch(&events).await {
        r?;
    }
    // Three groups, one after the other: each drains the whole backlog on its own consumer.
    for group in ["drain-a", "drain-b", "drain-c"] {
        let handled: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let seen = handled.clone();
        let member = bus
            .group(group)
            .concurrency(4)
            .on(move |_: Received<OrderCreated>| {
                let seen = seen.clone();
                async move {
                    if let Ok(mut s) = seen.lock() {
                        s.push(Instant::now());
                    }
                    Ok::<(), HandlerError>(())
                }
            })
            .start()
            .await?;
        wait_until("the backlog drained", Duration::from_secs(120), || {
            handled.lock().map(|h| h.len() as u64).unwrap_or(0) >= BACKLOG
        })
        .await?;
        wait_group_idle(&bus, group, Duration::from_secs(30)).await?;
        member.shutdown().await;
        let mut times = handled.lock().map(|h| h.clone()).unwrap_or_default();
        times.sort();
        assert_eq!(
            times.len() as u64,
            BACKLOG,
            "{group}: each event handled once"
        );
        let quiet = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        assert!(
            quiet < LONGEST_QUIET,
            "{group}: no delivery for {quiet:?} with {BACKLOG} events pending"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_slow_handlers_when_fetched_deliveries_wait_past_the_ack_deadline_should_not_be_redelivered()
-> anyhow::Result<()> {
    const EVENTS: u64 = 3;
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let attempts: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let seen = attempts.clone();
    // One slot, a handler longer than the ack deadline: the member fetches one delivery
    // ahead, which waits 2.5 s for the slot, past the 2 s deadline.
    let member = bus
        .group("slow")
        .concurrency(1)
        .ack_wait(Duration::from_secs(2))
        .on(move |ev: Received<OrderCreated>| {
            let seen = seen.clone();
            async move {
                if let Ok(mut s) = seen.lock() {
                    s.push((ev.meta.id().to_owned(), ev.meta.attempt));
                }
                tokio::time::sleep(Duration::from_millis(2500)).await;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;
    for n in 0..EVENTS {
        bus.publish(&order(n)).await?;
    }
    wait_until("every event handled", Duration::from_secs(60), || {
        attempts.lock().map(|a| a.len() as u64).unwrap_or(0) >= EVENTS
    })
    .await?;
    wait_group_idle(&bus, "slow", Duration::from_secs(30)).await?;
    member.shutdown().await;
    let attempts = attempts.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(
        attempts.len() as u64,
        EVENTS,
        "handled once each: {attempts:?}"
    );
    assert!(
        attempts.iter().all(|(_, attempt)| *attempt == 1),
        "a fetched delivery was redelivered while it waited: {attempts:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_waiting_member_when_its_server_is_killed_and_restarted_should_ask_again_and_handle_new_events()
-> anyhow::Result<()> {
    const EVENTS: u64 = 50;
    let mut cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let recorder = Recorder::default();
    let member = recording_member(&bus, "survivor", &recorder, 0).await?;
    bus.publish(&order(0)).await?;
    wait_until("the first event handled", Duration::from_secs(30), || {
        recorder.distinct() >= 1
    })
    .await?;
    // The member's pulls now wait on the server; a restart forgets them, and no heartbeat
    // or 408 will ever say so: the member must notice the silence and ask again.
    cluster.kill(0)?;
    cluster.restart(0).await?;
    for n in 1..=EVENTS {
        // Retried by the SDK until the restarted server's stream is back.
        bus.publish(&order(n)).await?;
    }
    wait_until(
        "every event published after the restart handled",
        Duration::from_secs(60),
        || recorder.distinct() as u64 > EVENTS,
    )
    .await?;
    member.shutdown().await;
    assert_eq!(recorder.distinct() as u64, EVENTS + 1);
    Ok(())
}
