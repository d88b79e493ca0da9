//! Ordered groups (`GroupBuilder::ordered_by_key`): per key, handling order is publish
//! order and no two handlings of a key overlap, across members, through a member joining
//! and one leaving; a failing key holds up only itself; a plain NATS client's event with
//! only a `ce-partitionkey` header is ordered with the SDK's.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_sdk::{Bus, EventPayload, Group, HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};
use serde::{Deserialize, Serialize};

/// One step of a key's history; ordered by `key`. The `order_projection` example's
/// `OrderStep` on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    #[serde(rename = "order_id")]
    key: String,
    step: u64,
}

impl EventPayload for Step {
    const EVENT_TYPE: &'static str = "shop.order.step";
    fn partition_key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

/// One handling: which step, by which member, from when to when (Unix ns: members in
/// other processes report theirs).
#[derive(Debug, Clone)]
struct Handling {
    step: u64,
    member: usize,
    start: u128,
    end: u128,
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<HashMap<String, Vec<Handling>>>>);

impl Log {
    fn push(&self, key: &str, h: Handling) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_owned()).or_default().push(h);
    }

    /// A handling of `step` by `member` from `start` (Unix ns) until now.
    fn record(&self, step: &Step, member: usize, start: u128) {
        self.push(
            &step.key,
            Handling {
                step: step.step,
                member,
                start,
                end: unix_ns(),
            },
        );
    }

    /// Distinct (key, step) pairs handled.
    fn distinct(&self) -> usize {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|v| {
                v.iter()
                    .map(|h| h.step)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            })
            .sum()
    }

    fn total(&self) -> usize {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(Vec::len).sum()
    }

    fn handled(&self, key: &str) -> Vec<u64> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .map(|v| v.iter().map(|h| h.step).collect())
            .unwrap_or_default()
    }

    /// Every key's steps handled exactly once, in order `0..steps`, one at a time; the
    /// handlings per member.
    fn check(&self, keys: usize, steps: u64) -> anyhow::Result<HashMap<usize, usize>> {
        self.check_with(keys, steps, false)
            .map(|(per_member, _)| per_member)
    }

    /// As [`Log::check`]; with `redelivered`, a step may be handled again right after
    /// itself (its member died before its ack reached the server: at least once), and
    /// the number of such repeats is returned too.
    fn check_with(
        &self,
        keys: usize,
        steps: u64,
        redelivered: bool,
    ) -> anyhow::Result<(HashMap<usize, usize>, usize)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        anyhow::ensure!(map.len() == keys, "{} keys handled, not {keys}", map.len());
        let mut per_member = HashMap::new();
        let mut repeats = 0;
        for (key, handlings) in map.iter() {
            let mut order: Vec<u64> = handlings.iter().map(|h| h.step).collect();
            if redelivered {
                let before = order.len();
                order.dedup();
                repeats += before - order.len();
            }
            anyhow::ensure!(
                order == (0..steps).collect::<Vec<_>>(),
                "key {key} handled in the order {order:?}"
            );
            for pair in handlings.windows(2) {
                anyhow::ensure!(
                    pair[0].end <= pair[1].start,
                    "key {key}: step {} started before step {} ended",
                    pair[1].step,
                    pair[0].step
                );
            }
            for h in handlings {
                *per_member.entry(h.member).or_insert(0) += 1;
            }
        }
        Ok((per_member, repeats))
    }

    /// That no two handlings of `key` overlapped in time.
    fn no_overlap(&self, key: &str) -> anyhow::Result<()> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for pair in map.get(key).into_iter().flat_map(|h| h.windows(2)) {
            anyhow::ensure!(
                pair[0].end <= pair[1].start,
                "key {key}: step {} started before step {} ended",
                pair[1].step,
                pair[0].step
            );
        }
        Ok(())
    }

    /// How long after `at` (Unix ns) the keys that `member` handled went on with another
    /// member: the longest wait, over the keys that had steps left.
    fn longest_takeover(&self, member: usize, at: u128) -> Option<Duration> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter(|hs| hs.iter().any(|h| h.member == member))
            .filter_map(|hs| hs.iter().filter(|h| h.start >= at).map(|h| h.start).min())
            .map(|first| Duration::from_nanos((first - at) as u64))
            .max()
    }
}

const PARTITIONS: u32 = 16;

/// A member recording every handling; every 7th step takes a millisecond, so that
/// handlings of a key would overlap if anything let them.
async fn member(bus: &Bus, group: &str, log: &Log, id: usize) -> anyhow::Result<Group> {
    member_with(bus, group, log, id, Duration::from_secs(30)).await
}

async fn member_with(
    bus: &Bus,
    group: &str,
    log: &Log,
    id: usize,
    ack_wait: Duration,
) -> anyhow::Result<Group> {
    let log = log.clone();
    Ok(bus
        .group(group)
        .ack_wait(ack_wait)
        .on(move |ev: Received<Step>| {
            let log = log.clone();
            async move {
                let start = unix_ns();
                if ev.data.step.is_multiple_of(7) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                log.record(&ev.data, id, start);
                Ok::<(), HandlerError>(())
            }
        })
        .ordered_by_key(PARTITIONS)
        .start()
        .await?)
}

/// Publishes `steps` steps of `keys` keys, step by step, and checks that each key's
/// steps were stored in step order.
async fn publish_steps(bus: &Bus, keys: usize, steps: u64) -> anyhow::Result<()> {
    let events: Vec<_> = (0..steps)
        .flat_map(|step| (0..keys).map(move |k| (k, step)))
        .map(|(k, step)| {
            bus.event(&Step {
                key: format!("key-{k}"),
                step,
            })
            .map(|b| b.build())
        })
        .collect::<Result<_, _>>()?;
    let receipts = bus.publish_batch(&events).await;
    let mut last: HashMap<String, u64> = HashMap::new();
    for (event, receipt) in events.iter().zip(receipts) {
        let receipt = receipt?;
        let key = event.partitionkey.clone().unwrap_or_default();
        let before = last.insert(key.clone(), receipt.seq).unwrap_or(0);
        anyhow::ensure!(
            before < receipt.seq,
            "key {key} stored out of publish order"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_three_members_and_1000_keys_should_handle_20000_events_in_publish_order_per_key()
-> anyhow::Result<()> {
    const KEYS: usize = 1000;
    const STEPS: u64 = 20;
    let cluster = NatsCluster::start(1).await?;
    let log = Log::default();
    let mut members = Vec::new();
    let mut buses = Vec::new();
    for m in 0..3 {
        let bus = bus_for(&cluster).await?;
        members.push(member(&bus, "projection", &log, m).await?);
        buses.push(bus);
    }
    let publisher = bus_for(&cluster).await?;
    publish_steps(&publisher, KEYS, STEPS).await?;
    wait_until(
        "all 20,000 events handled",
        Duration::from_secs(180),
        || log.total() >= KEYS * STEPS as usize,
    )
    .await?;
    let per_member = log.check(KEYS, STEPS)?;
    for m in 0..3 {
        assert!(
            per_member.get(&m).copied().unwrap_or(0) > 0,
            "member {m} handled nothing: {per_member:?}"
        );
    }
    for member in members {
        assert!(member.shutdown().await);
    }
    Ok(())
}

/// On a 3-node cluster with R3 streams: pinned consumers are raft-replicated there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_member_joining_and_one_leaving_mid_run_on_a_cluster_should_keep_every_key_in_order()
-> anyhow::Result<()> {
    const KEYS: usize = 300;
    const STEPS: u64 = 20;
    let cluster = NatsCluster::start(3).await?;
    let log = Log::default();
    let first = bus_for(&cluster).await?;
    let second = bus_for(&cluster).await?;
    let leaving = member(&first, "moving", &log, 0).await?;
    let staying = member(&second, "moving", &log, 1).await?;
    let publisher = bus_for(&cluster).await?;
    let total = KEYS * STEPS as usize;
    let publishing = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            // In rounds, so that the join and the leave fall in the middle of the run.
            for round in 0..4 {
                let events: Vec<_> = (round * 5..round * 5 + 5)
                    .flat_map(|step| (0..KEYS).map(move |k| (k, step)))
                    .map(|(k, step)| {
                        publisher
                            .event(&Step {
                                key: format!("key-{k}"),
                                step,
                            })
                            .map(|b| b.build())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                for r in publisher.publish_batch(&events).await {
                    r?;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            anyhow::Ok(())
        })
    };
    wait_until("a quarter handled", Duration::from_secs(60), || {
        log.total() >= total / 4
    })
    .await?;
    let third_bus = bus_for(&cluster).await?;
    let joined = member(&third_bus, "moving", &log, 2).await?;
    wait_until("half handled", Duration::from_secs(60), || {
        log.total() >= total / 2
    })
    .await?;
    assert!(
        leaving.shutdown().await,
        "the leaving member settled its work"
    );
    publishing.await??;
    wait_until("all events handled", Duration::from_secs(120), || {
        log.total() >= total
    })
    .await?;
    let per_member = log.check(KEYS, STEPS)?;
    assert!(
        per_member.get(&2).copied().unwrap_or(0) > 0,
        "the member that joined handled nothing: {per_member:?}"
    );
    staying.shutdown().await;
    joined.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_failing_key_should_hold_up_only_that_key_in_its_partition() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let log = Log::default();
    let (handler_log, others) = (log.clone(), 10 * 5);
    // One partition: every key shares it. The poison key's first step fails until every
    // other key's events are handled (they could not be if it held the partition up).
    let member = bus
        .group("isolating")
        .on(move |ev: Received<Step>| {
            let log = handler_log.clone();
            async move {
                let start = unix_ns();
                if ev.data.key == "poison" && ev.data.step == 0 && log.total() < others {
                    return Err(HandlerError::msg("not yet"));
                }
                log.record(&ev.data, 0, start);
                Ok::<(), HandlerError>(())
            }
        })
        .backoff([Duration::from_millis(100)])
        .max_deliver(200)
        .ordered_by_key(1)
        .start()
        .await?;
    let mut events = Vec::new();
    for step in 0..3 {
        events.push(
            bus.event(&Step {
                key: "poison".into(),
                step,
            })?
            .build(),
        );
    }
    for step in 0..5 {
        for k in 0..10 {
            events.push(
                bus.event(&Step {
                    key: format!("key-{k}"),
                    step,
                })?
                .build(),
            );
        }
    }
    for r in bus.publish_batch(&events).await {
        r?;
    }
    wait_until("every event handled", Duration::from_secs(60), || {
        log.total() >= others + 3
    })
    .await?;
    assert_eq!(log.handled("poison"), vec![0, 1, 2]);
    for k in 0..10 {
        assert_eq!(log.handled(&format!("key-{k}")), vec![0, 1, 2, 3, 4]);
    }
    let dead = bus.dead_letters(None, 0, 10).await?;
    assert!(dead.letters.is_empty(), "nothing dead-lettered");
    member.shutdown().await;
    Ok(())
}

/// A member of a one-partition group whose handler fails every `poison` event while
/// `failing` is set; every handling is logged.
async fn parking_member(
    bus: &Bus,
    group: &str,
    log: &Log,
    failing: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Group> {
    let log = log.clone();
    Ok(bus
        .group(group)
        .on(move |ev: Received<Step>| {
            let (log, failing) = (log.clone(), failing.clone());
            async move {
                let start = unix_ns();
                if ev.data.key == "poison" && failing.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(HandlerError::msg("not yet"));
                }
                log.record(&ev.data, 0, start);
                Ok::<(), HandlerError>(())
            }
        })
        .backoff([Duration::from_millis(100)])
        .max_deliver(10_000)
        // A window of 8 deliveries: the poison key alone has more events than that.
        .concurrency(4)
        .max_ack_pending(8)
        .ordered_by_key(1)
        .start()
        .await?)
}

/// Steps `from..to` of `key`, one event each.
fn steps(bus: &Bus, key: &str, from: u64, to: u64) -> anyhow::Result<Vec<bus_sdk::Event>> {
    (from..to)
        .map(|step| {
            Ok(bus
                .event(&Step {
                    key: key.into(),
                    step,
                })?
                .build())
        })
        .collect()
}

/// The ordered stream's consumers that hold a parked key (`<group>-p<N>-k<token>`).
async fn parked_consumers(bus: &Bus, group: &str) -> anyhow::Result<Vec<String>> {
    use futures::TryStreamExt;
    let ordered = format!("{}_ORDERED", bus.config().streams.events_name);
    let stream = bus.jetstream().get_stream(ordered).await?;
    let names: Vec<String> = stream.consumer_names().try_collect().await?;
    Ok(names
        .into_iter()
        .filter(|n| n.starts_with(&format!("{group}-p")) && n.contains("-k"))
        .collect())
}

/// Events and keys held aside in `group`'s partition 0, as `Bus::groups` lists them.
async fn parked_events(bus: &Bus, group: &str) -> anyhow::Result<(u64, u64)> {
    let groups = bus.groups().await?;
    let info = groups
        .iter()
        .find(|g| g.name == group)
        .and_then(|g| g.partitions.as_ref())
        .and_then(|p| p.first())
        .ok_or_else(|| anyhow::anyhow!("group {group} has no partition 0 listed"))?;
    Ok((info.parked_events, info.parked_keys))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_failing_key_with_more_events_than_its_partition_window_should_park_them_in_order_through_an_owner_change()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let log = Log::default();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let first = parking_member(&bus, "parking", &log, failing.clone()).await?;
    // 40 events of the failing key, five times the partition's window, then the others.
    let mut events = steps(&bus, "poison", 0, 40)?;
    for step in 0..5 {
        for k in 0..10 {
            events.extend(steps(&bus, &format!("key-{k}"), step, step + 1)?);
        }
    }
    for r in bus.publish_batch(&events).await {
        r?;
    }
    wait_until("every other key handled", Duration::from_secs(60), || {
        log.total() >= 50
    })
    .await?;
    for k in 0..10 {
        assert_eq!(log.handled(&format!("key-{k}")), vec![0, 1, 2, 3, 4]);
    }
    assert!(log.handled("poison").is_empty(), "the failing key waits");
    // All of it held aside, on its parking subject, read by one consumer, and listed.
    let mut parked = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while parked != (40, 1) || parked_consumers(&bus, "parking").await?.len() != 1 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "(events, keys) parked: {parked:?}, not (40, 1)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        parked = parked_events(&bus, "parking").await?;
    }
    // Its owner leaves with the key parked; the next owner's handler succeeds.
    first.shutdown().await;
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let second = parking_member(&bus, "parking", &log, failing.clone()).await?;
    wait_until("the parked key handled", Duration::from_secs(60), || {
        log.handled("poison").len() >= 40
    })
    .await?;
    // Back in its partition's flow once drained: later events follow in order.
    for r in bus.publish_batch(&steps(&bus, "poison", 40, 45)?).await {
        r?;
    }
    wait_until(
        "the key's later events handled",
        Duration::from_secs(30),
        || log.handled("poison").len() >= 45,
    )
    .await?;
    assert_eq!(log.handled("poison"), (0..45).collect::<Vec<_>>());
    log.no_overlap("poison")?;
    assert_eq!(parked_events(&bus, "parking").await?, (0, 0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !parked_consumers(&bus, "parking").await?.is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the drained key's consumer was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_parked_key_waiting_for_its_retry_should_leave_its_handler_slot_to_other_keys()
-> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let log = Log::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let (handler_log, handler_failures) = (log.clone(), failures.clone());
    // One slot; the failing key's second try fails too, and its third waits 60 s.
    let member = bus
        .group("one-slot")
        .on(move |ev: Received<Step>| {
            let (log, failures) = (handler_log.clone(), handler_failures.clone());
            async move {
                let start = unix_ns();
                if ev.data.key == "poison" {
                    failures.fetch_add(1, Ordering::SeqCst);
                    return Err(HandlerError::msg("never"));
                }
                log.record(&ev.data, 0, start);
                Ok::<(), HandlerError>(())
            }
        })
        .concurrency(1)
        .backoff([Duration::from_millis(50), Duration::from_secs(60)])
        .max_deliver(100)
        .ordered_by_key(4)
        .start()
        .await?;
    for r in bus.publish_batch(&steps(&bus, "poison", 0, 1)?).await {
        r?;
    }
    wait_until(
        "the key's second try failed",
        Duration::from_secs(20),
        || failures.load(Ordering::SeqCst) >= 2,
    )
    .await?;
    let mut others = Vec::new();
    for k in 0..10 {
        others.extend(steps(&bus, &format!("key-{k}"), 0, 3)?);
    }
    for r in bus.publish_batch(&others).await {
        r?;
    }
    wait_until("every other key handled", Duration::from_secs(20), || {
        log.total() >= 30
    })
    .await?;
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_parked_event_dead_lettered_its_key_should_move_on_to_its_later_events_in_order()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let log = Log::default();
    let handler_log = log.clone();
    let member = bus
        .group("dead-end")
        .on(move |ev: Received<Step>| {
            let log = handler_log.clone();
            async move {
                let start = unix_ns();
                if ev.data.key == "poison" && ev.data.step == 0 {
                    return Err(HandlerError::msg("never"));
                }
                log.record(&ev.data, 0, start);
                Ok::<(), HandlerError>(())
            }
        })
        .backoff([Duration::from_millis(50)])
        .max_deliver(3)
        .concurrency(4)
        .max_ack_pending(4)
        .ordered_by_key(1)
        .start()
        .await?;
    let poison = steps(&bus, "poison", 0, 20)?;
    let mut receipts = Vec::new();
    for r in bus.publish_batch(&poison).await {
        receipts.push(r?);
    }
    for r in bus.publish_batch(&steps(&bus, "other", 0, 20)?).await {
        r?;
    }
    wait_until("every handled event", Duration::from_secs(60), || {
        log.total() >= 19 + 20
    })
    .await?;
    assert_eq!(log.handled("poison"), (1..20).collect::<Vec<_>>());
    assert_eq!(log.handled("other"), (0..20).collect::<Vec<_>>());
    let dead = bus.dead_letters(None, 0, 10).await?;
    assert_eq!(dead.letters.len(), 1, "{:?}", dead.letters);
    let letter = &dead.letters[0];
    assert_eq!(
        letter.letter.stream_seq, receipts[0].seq,
        "the failing step's event"
    );
    assert_eq!(letter.letter.attempts, 3);
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_plain_client_event_with_only_a_partition_key_header_should_be_ordered_with_the_sdks()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let log = Log::default();
    let m = member(&bus, "mixed", &log, 0).await?;
    let js = async_nats::jetstream::new(cluster.client().await?);
    const STEPS: u64 = 40;
    for step in 0..STEPS {
        if step.is_multiple_of(2) {
            bus.publish(&Step {
                key: "order-7".into(),
                step,
            })
            .await?;
        } else {
            let id = format!("plain-{step}");
            let h = nats_headers(&[
                ("ce-id", &id),
                ("ce-source", "/legacy/php"),
                ("ce-type", "shop.order.step"),
                ("ce-specversion", "1.0"),
                ("ce-partitionkey", "order-7"),
                ("content-type", "application/json"),
            ]);
            let body = format!(r#"{{"order_id":"order-7","step":{step}}}"#);
            plain_publish(&js, "bus.evt.shop.order.step", Some(h), body.into()).await?;
        }
    }
    wait_until("all steps handled", Duration::from_secs(30), || {
        log.total() >= STEPS as usize
    })
    .await?;
    log.check(1, STEPS)?;
    m.shutdown().await;
    Ok(())
}

/// A child process, killed and reaped when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_member_process_killed_mid_run_should_keep_order_and_move_its_partitions_within_the_bound()
-> anyhow::Result<()> {
    const KEYS: usize = 200;
    const STEPS: u64 = 30;
    const WORKER: usize = 2;
    // The stated bound: a dead member's partitions go on within the ack deadline plus
    // about 3 s; 5 s of margin for a loaded 2-core box.
    let ack_wait = Duration::from_secs(5);
    let bound = ack_wait + Duration::from_secs(5);
    let cluster = NatsCluster::start(1).await?;
    let log = Log::default();
    let (a, b) = (bus_for(&cluster).await?, bus_for(&cluster).await?);
    let first = member_with(&a, "order-projection", &log, 0, ack_wait).await?;
    let second = member_with(&b, "order-projection", &log, 1, ack_wait).await?;

    // A third member in a process of its own: the order_projection example.
    let mut child = Command::new(bus_tests::example_binary("order_projection")?)
        .env("NATS_URL", cluster.client_urls().join(","))
        .env("ACK_WAIT_SECS", ack_wait.as_secs().to_string())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout from the worker"))?;
    let mut worker = Reaped(child);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (worker_log, worker_ready) = (log.clone(), ready.clone());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["handled", key, step, start, end] => {
                    if let (Ok(step), Ok(start), Ok(end)) =
                        (step.parse(), start.parse(), end.parse())
                    {
                        worker_log.push(
                            key,
                            Handling {
                                step,
                                member: WORKER,
                                start,
                                end,
                            },
                        );
                    }
                }
                ["projection:", "ready"] => {
                    worker_ready.store(true, std::sync::atomic::Ordering::SeqCst)
                }
                _ => {}
            }
        }
    });
    wait_until("the worker to start", Duration::from_secs(30), || {
        ready.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await?;
    let group = bus_sdk::GroupName::new("order-projection")?;
    let (a_ref, group_ref) = (&a, &group);
    bus_tests::try_poll_until("three members", Duration::from_secs(20), || async move {
        let n = a_ref.members(Some(group_ref)).await?.len();
        Ok(if n == 3 {
            bus_tests::Probe::Ready(())
        } else {
            bus_tests::Probe::NotYet(format!("{n} members"))
        })
    })
    .await?;
    // Partitions settle on their owners (one assignment round) before the events come.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let publisher = bus_for(&cluster).await?;
    publish_steps(&publisher, KEYS, STEPS).await?;
    let total = KEYS * STEPS as usize;
    let log_ref = &log;
    bus_tests::poll_until("the worker to be mid-run", Duration::from_secs(60), || {
        let (mine, all) = (worker_handled(log_ref), log_ref.total());
        std::future::ready(Ok(if mine >= 300 {
            bus_tests::Probe::Ready(())
        } else {
            bus_tests::Probe::NotYet(format!("the worker handled {mine}, all {all}"))
        }))
    })
    .await?;
    worker.0.kill()?;
    worker.0.wait()?;
    let killed_at = unix_ns();
    let handled_then = log.total();
    assert!(
        handled_then < total,
        "killed mid-run: {handled_then} of {total} handled"
    );
    wait_until("every event handled", Duration::from_secs(120), || {
        log.distinct() >= total
    })
    .await?;
    let (per_member, repeats) = log.check_with(KEYS, STEPS, true)?;
    eprintln!("handlings per member: {per_member:?}; repeated after the kill: {repeats}");
    let takeover = log
        .longest_takeover(WORKER, killed_at)
        .ok_or_else(|| anyhow::anyhow!("no key of the worker went on after the kill"))?;
    assert!(
        takeover <= bound,
        "the killed member's keys went on after {takeover:?}, more than {bound:?}"
    );
    first.shutdown().await;
    second.shutdown().await;
    Ok(())
}

fn worker_handled(log: &Log) -> usize {
    let map = log.0.lock().unwrap_or_else(|p| p.into_inner());
    map.values().flatten().filter(|h| h.member == 2).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_ordered_group_listings_and_metrics_should_show_each_partition_its_owner_lag_and_oldest_age()
-> anyhow::Result<()> {
    const PARTS: u32 = 4;
    let cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "ordered-admin").await?;
    let bus = bus_for(&cluster).await?;
    // Handlings wait for the gate: the key's first is running, its next two wait.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (g, s) = (gate.clone(), started.clone());
    let member = bus
        .group("visible")
        .on(move |_ev: Received<Step>| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                g.acquire().await?.forget();
                Ok::<(), HandlerError>(())
            }
        })
        .ordered_by_key(PARTS)
        .start()
        .await?;
    for step in 0..3 {
        bus.publish(&Step {
            key: "held".into(),
            step,
        })
        .await?;
    }
    wait_until(
        "the key's first handling to start",
        Duration::from_secs(20),
        || started.load(std::sync::atomic::Ordering::SeqCst) == 1,
    )
    .await?;
    let held = bus_sdk::bus_core::partition::partition_of("held", PARTS);

    let (bus_ref, held_ref) = (&bus, &held);
    let partitions = bus_tests::try_poll_until(
        "the key's three events in flight in its pinned partition",
        Duration::from_secs(20),
        || async move {
            let groups = bus_ref.groups().await?;
            let group = groups.iter().find(|g| g.name == "visible");
            let parts = group.and_then(|g| g.partitions.clone()).unwrap_or_default();
            let ready = parts.len() == PARTS as usize
                && parts
                    .iter()
                    .any(|p| p.partition == *held_ref && p.in_flight == 3 && p.pinned);
            Ok(if ready {
                bus_tests::Probe::Ready(parts)
            } else {
                bus_tests::Probe::NotYet(format!("{parts:?}"))
            })
        },
    )
    .await?;
    for p in &partitions {
        let age = p.oldest_unacked_age_seconds;
        if p.partition == held {
            assert!(age.is_some_and(|a| a > 0.0), "{p:?}");
        } else {
            assert_eq!((p.in_flight, p.pending, age), (0, 0, Some(0.0)), "{p:?}");
        }
    }

    // The node names each partition's owner, and exports each partition's numbers.
    let groups: serde_json::Value = http()?
        .get(format!("{}/v1/groups", node.url()))
        .send()
        .await?
        .json()
        .await?;
    let visible = groups["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "visible"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("visible missing: {groups}"))?;
    let member_id = visible["members"][0]["id"].clone();
    assert!(member_id.is_string(), "{visible}");
    let listed = visible["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed.len(), PARTS as usize, "{visible}");
    for p in &listed {
        assert_eq!(p["owner"], member_id, "{p}");
    }
    let metrics = http()?
        .get(format!("{}/metrics", node.url()))
        .send()
        .await?
        .text()
        .await?;
    let line = format!(
        "bus_ordered_partition_in_flight_events{{group=\"visible\",partition=\"{held}\"}} 3"
    );
    assert!(
        metrics.lines().any(|l| l == line),
        "{line} not in {metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("bus_ordered_partition_oldest_unacked_age_seconds{group=\"visible\"")),
        "{metrics}"
    );
    let parked =
        format!("bus_ordered_partition_parked_events{{group=\"visible\",partition=\"{held}\"}} 0");
    assert!(
        metrics.lines().any(|l| l == parked),
        "{parked} not in {metrics}"
    );

    gate.add_permits(3);
    wait_until(
        "the key's events all handled",
        Duration::from_secs(20),
        || started.load(std::sync::atomic::Ordering::SeqCst) == 3,
    )
    .await?;
    member.shutdown().await;
    Ok(())
}
