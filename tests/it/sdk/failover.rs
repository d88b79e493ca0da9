//! Failures on a real 3-node cluster: a member dies, the stream leader dies. No event that
//! was acknowledged to its publisher may be lost, and none may be stored twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use bus_sdk::{Group, HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};

/// Handler slots of each [`CrashableMember`].
const SLOTS: usize = 8;

/// A member running on its own runtime, so that it can die like a crashed process:
/// `kill` drops its tasks and its connection mid-handling, with nothing settled.
struct CrashableMember {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for CrashableMember {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl CrashableMember {
    async fn start(
        cluster: &NatsCluster,
        member: usize,
        recorder: Recorder,
        budget: Arc<Semaphore>,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let config = config_for(cluster);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        runtime.spawn(async move {
            let started: anyhow::Result<(bus_sdk::Bus, Group)> = async {
                let bus = bus_sdk::Bus::connect(config).await?;
                let group = bus
                    .group("workers")
                    .ack_wait(Duration::from_secs(2))
                    .concurrency(SLOTS)
                    .on(move |ev: Received<OrderCreated>| {
                        let recorder = recorder.clone();
                        let budget = budget.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            // Completes only within the run's budget of completions.
                            if let Ok(permit) = budget.acquire().await {
                                permit.forget();
                            }
                            recorder.record(member, ev.meta.id());
                            Ok::<(), HandlerError>(())
                        }
                    })
                    .start()
                    .await?;
                Ok((bus, group))
            }
            .await;
            match started {
                Ok(keep) => {
                    let _ = ready_tx.send(Ok(()));
                    // Live until the runtime is torn down.
                    std::future::pending::<()>().await;
                    drop(keep);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        let member = Self {
            runtime: Some(runtime),
        };
        // On failure `member` is dropped here, shutting its runtime down without blocking.
        ready_rx.await??;
        Ok(member)
    }

    /// Dies at once: running handlers vanish unsettled, the connection drops.
    fn kill(self) {
        drop(self);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_three_members_when_one_is_killed_mid_run_should_still_handle_every_event()
-> anyhow::Result<()> {
    const EVENTS: u64 = 600;
    /// Completions allowed before the kill: the run is at most this far along when a
    /// member dies, whichever members were quick to get work.
    const BEFORE_KILL: u64 = 90;
    let cluster = NatsCluster::start(3).await?;
    let recorder = Recorder::default();
    let budget = Arc::new(Semaphore::new(BEFORE_KILL as usize));
    let mut members = Vec::new();
    for m in 0..3 {
        let member = CrashableMember::start(&cluster, m, recorder.clone(), budget.clone()).await?;
        members.push(Some(member));
    }
    let bus = bus_for(&cluster).await?;
    let events: Vec<_> = (0..EVENTS)
        .map(|n| bus.event(&order(n)).map(|b| b.build()))
        .collect::<Result<_, _>>()?;
    let ids: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    for r in bus.publish_batch(&events).await {
        r?;
    }
    // Kill the busiest member once the budget is spent: its other handlers are waiting
    // for budget with their events unacknowledged. Every completion spends one permit, so
    // `total` (not `distinct`, which a redelivery would hold back) reaches the budget.
    wait_until(
        "the pre-kill budget is spent",
        Duration::from_secs(30),
        || recorder.total() == BEFORE_KILL,
    )
    .await?;
    let before = recorder.per_member();
    let (victim, killed_after) = before
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(m, n)| (*m, *n))
        .ok_or_else(|| anyhow::anyhow!("no member handled anything: {before:?}"))?;
    if let Some(member) = members.get_mut(victim).and_then(Option::take) {
        member.kill();
    }
    budget.add_permits(10 * EVENTS as usize);

    wait_until("every event handled", Duration::from_secs(120), || {
        recorder.distinct() as u64 == EVENTS
    })
    .await?;
    let handled: HashSet<String> = recorder.counts().into_keys().collect();
    assert_eq!(handled, ids);
    // The victim stopped when killed: a handler it was polling as it died may still have
    // recorded one event (one per handler slot at most); the rest was the survivors'.
    let per_member = recorder.per_member();
    let victim_total = per_member.get(&victim).copied().unwrap_or(0);
    assert!(
        victim_total <= killed_after + SLOTS as u64,
        "the victim stopped handling: {per_member:?} (before the kill: {before:?})"
    );
    wait_group_idle(&bus, "workers", Duration::from_secs(30)).await?;
    for member in members.into_iter().flatten() {
        member.kill();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_continuous_publishing_when_the_stream_leader_is_killed_and_restarted_should_lose_and_duplicate_nothing()
-> anyhow::Result<()> {
    let mut cluster = NatsCluster::start(3).await?;
    let bus = bus_for(&cluster).await?;
    let recorder = Recorder::default();
    let member = start_recording(
        bus.group("ledger").ack_wait(Duration::from_secs(2)),
        &recorder,
        0,
    )
    .await?;

    // Publish continuously from 4 concurrent publishers until told to stop: two one
    // event at a time, two in batches (whose window retries each event on its own).
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..4u64 {
        let bus = bus.clone();
        let stop = stop.clone();
        let published = published.clone();
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = Vec::new();
            let mut n = p * 1_000_000;
            let batch = if p % 2 == 0 { 1 } else { 32 };
            while !stop.load(Ordering::SeqCst) {
                let events = (n..n + batch)
                    .map(|k| bus.event(&order(k)).map(|b| b.build()))
                    .collect::<Result<Vec<_>, _>>()?;
                let results = if batch == 1 {
                    vec![bus.publish_event(&events[0]).await]
                } else {
                    bus.publish_batch(&events).await
                };
                for (event, result) in events.iter().zip(results) {
                    match result {
                        Ok(r) => {
                            acked.push((event.id.clone(), r.seq));
                            published.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failed.push((event.id.clone(), e.to_string())),
                    }
                }
                n += batch;
            }
            anyhow::Ok((acked, failed))
        }));
    }
    wait_until("publishing under way", Duration::from_secs(30), || {
        published.load(Ordering::SeqCst) >= 200
    })
    .await?;
    let leader = cluster.leader_of("BUS_EVENTS").await?;
    cluster.kill(leader)?;
    let before_new_leader = published.load(Ordering::SeqCst);
    cluster
        .wait_for_stream_leader_other_than("BUS_EVENTS", leader)
        .await?;
    wait_until(
        "publishing resumed on the new leader",
        Duration::from_secs(60),
        || published.load(Ordering::SeqCst) >= before_new_leader + 200,
    )
    .await?;
    cluster.restart(leader).await?;
    cluster.wait_caught_up(leader, "BUS_EVENTS").await?;
    let after_restart = published.load(Ordering::SeqCst);
    wait_until(
        "publishing after the restart",
        Duration::from_secs(60),
        || published.load(Ordering::SeqCst) >= after_restart + 100,
    )
    .await?;
    stop.store(true, Ordering::SeqCst);

    let mut acked = Vec::new();
    for p in publishers {
        let (ok, failed) = p.await??;
        assert!(
            failed.is_empty(),
            "publishes failed past the deadline: {failed:?}"
        );
        acked.extend(ok);
    }
    let ids: HashSet<&str> = acked.iter().map(|(id, _)| id.as_str()).collect();
    let seqs: HashSet<u64> = acked.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(ids.len(), acked.len());
    assert_eq!(
        seqs.len(),
        acked.len(),
        "two events share a stream sequence"
    );
    // Nothing stored twice: the stream holds exactly the acknowledged events.
    assert_eq!(
        stream_messages(&bus, "BUS_EVENTS").await?,
        acked.len() as u64
    );

    wait_until(
        "every acknowledged event handled",
        Duration::from_secs(120),
        || recorder.distinct() >= acked.len(),
    )
    .await?;
    let handled: HashSet<String> = recorder.counts().into_keys().collect();
    let missing: Vec<_> = ids.iter().filter(|id| !handled.contains(**id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never handled: {missing:?}"
    );
    member.shutdown().await;
    Ok(())
}
