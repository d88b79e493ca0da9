//! Retries with backoff and dead letters, on a real 3-node cluster with R3 streams.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_sdk::{DeadLetter, HandlerError, Received};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, Probe, try_poll_until, wait_until};

/// A group name the test knows to be valid.
fn group_name(name: &str) -> bus_core::GroupName {
    bus_core::GroupName::new(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Reads the dead letters of `group`, waiting until at least `n` are there; an error
/// naming what was there if they are not within 30 s.
async fn dead_letters(
    bus: &bus_sdk::Bus,
    group: &str,
    n: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let subject = &bus.subjects().dead_letter(&group_name(group));
    let what = format!("{n} dead letters of {group}");
    try_poll_until(what, Duration::from_secs(30), || async move {
        // On a cluster that has just started, a JetStream request can time out while the
        // stream's leader is elected: that is "not read yet", not "no dead letters".
        let scanned: anyhow::Result<Vec<_>> = async {
            let stream = bus
                .jetstream()
                .get_stream(&bus.config().streams.dlq_name)
                .await?;
            let mut messages = Vec::new();
            let mut seq = 1;
            loop {
                let m = match stream.get_first_raw_message_by_subject(subject, seq).await {
                    Ok(m) => m,
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                    Err(e) => return Err(e.into()),
                };
                seq = m.sequence + 1;
                messages.push(m);
            }
            Ok(messages)
        }
        .await;
        // A message there that is not a dead letter is wrong at once, not "not yet".
        let scanned = match scanned {
            Ok(messages) => Ok(messages
                .into_iter()
                .map(|m| {
                    DeadLetter::parse(&m.headers, m.payload.clone()).ok_or_else(|| {
                        anyhow::anyhow!("message {} lacks dead-letter headers", m.sequence)
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?),
            Err(e) => Err(e),
        };
        Ok(match scanned {
            Ok(letters) if letters.len() >= n => Probe::Ready(letters),
            Ok(letters) => {
                let brief: Vec<_> = letters
                    .iter()
                    .map(|l| (l.event_id.as_deref(), l.attempts, l.reason.as_str()))
                    .collect();
                Probe::NotYet(format!(
                    "{} dead letters (id, attempts, reason): {brief:?}",
                    letters.len()
                ))
            }
            Err(e) => Probe::NotYet(format!("dead letters not readable: {e:#}")),
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_failing_handler_should_retry_with_backoff_then_dead_letter_with_reason_and_attempts()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let bus = bus_for(&cluster).await?;
    let attempts: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let seen = attempts.clone();
    let backoff = [Duration::from_millis(300), Duration::from_millis(600)];
    let member = bus
        .group("payments")
        .max_deliver(3)
        .backoff(backoff)
        .on(move |ev: Received<OrderCreated>| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((ev.meta.attempt, Instant::now()));
                Err::<(), _>(HandlerError::msg("card declined"))
            }
        })
        .start()
        .await?;
    let receipt = bus.publish(&order(1)).await?;

    let letters = dead_letters(&bus, "payments", 1).await?;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.group.as_str(), "payments");
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.stream_seq, receipt.seq);
    assert_eq!(letter.event_id.as_deref(), Some(receipt.id.as_str()));
    assert!(
        letter.reason.contains("failed 3 times"),
        "{}",
        letter.reason
    );
    assert!(letter.reason.contains("card declined"), "{}", letter.reason);
    // The payload and headers are kept as they were.
    let back: OrderCreated = serde_json::from_slice(&letter.payload)?;
    assert_eq!(back, order(1));
    assert_eq!(
        letter.headers.get("ce-type").map(|v| v.as_str()),
        Some("shop.order.created")
    );

    let attempts = attempts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.0).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    for (i, wanted) in backoff.iter().enumerate() {
        let gap = attempts[i + 1].1 - attempts[i].1;
        assert!(
            gap >= *wanted,
            "retry {} came after {gap:?}, before the {wanted:?} backoff",
            i + 1
        );
    }
    wait_group_idle(&bus, "payments", Duration::from_secs(10)).await?;
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_undecodable_events_should_dead_letter_them_at_once() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let bus = bus_for(&cluster).await?;
    let handled = Recorder::default();
    let member = start_recording(bus.group("strict").max_deliver(5), &handled, 0).await?;
    let js = async_nats::jetstream::new(cluster.client().await?);
    // 1. A valid envelope whose data is not an OrderCreated.
    let h = nats_headers(&[
        ("ce-id", "bad-data"),
        ("ce-source", "/plain"),
        ("ce-type", "shop.order.created"),
        ("ce-specversion", "1.0"),
        ("content-type", "application/json"),
        ("Nats-Msg-Id", "bad-data"),
    ]);
    plain_publish(
        &js,
        "bus.evt.shop.order.created",
        Some(h),
        "{\"order_id\": \"x\"}".into(),
    )
    .await?;
    // 2. No CloudEvents headers at all.
    plain_publish(&js, "bus.evt.shop.order.created", None, "hello".into()).await?;
    // 3. A good one, which must still be handled.
    bus.publish(&order(3)).await?;

    let letters = dead_letters(&bus, "strict", 2).await?;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters.iter().all(|l| l.attempts == 1),
        "dead-lettered at once: {letters:?}"
    );
    let bad_data = letters
        .iter()
        .find(|l| l.event_id.as_deref() == Some("bad-data"));
    let bad_data = bad_data.ok_or_else(|| anyhow::anyhow!("no dead letter for bad-data"))?;
    assert!(
        bad_data.reason.contains("data is not a valid"),
        "{}",
        bad_data.reason
    );
    let no_envelope = letters.iter().find(|l| l.event_id.is_none());
    let no_envelope =
        no_envelope.ok_or_else(|| anyhow::anyhow!("no dead letter for the bare message"))?;
    assert!(
        no_envelope.reason.contains("not a bus event"),
        "{}",
        no_envelope.reason
    );
    assert_eq!(&no_envelope.payload[..], b"hello");

    wait_until("the good event", Duration::from_secs(10), || {
        handled.distinct() == 1
    })
    .await?;
    wait_group_idle(&bus, "strict", Duration::from_secs(10)).await?;
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_permanent_error_should_dead_letter_without_retries() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let member = bus
        .group("once")
        .max_deliver(5)
        .on(|_ev: Received<OrderCreated>| async {
            Err::<(), _>(HandlerError::permanent("order is for a closed shop"))
        })
        .start()
        .await?;
    bus.publish(&order(1)).await?;
    let letters = dead_letters(&bus, "once", 1).await?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    assert!(
        letters[0].reason.contains("closed shop"),
        "{}",
        letters[0].reason
    );
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_dead_letters_when_redriven_should_be_handled_again_by_their_group_only()
-> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let healthy = Arc::new(AtomicBool::new(false));
    let handled = Recorder::default();
    let (h, rec) = (healthy.clone(), handled.clone());
    let member = bus
        .group("fragile")
        .max_deliver(1)
        .on(move |ev: Received<OrderCreated>| {
            let (h, rec) = (h.clone(), rec.clone());
            async move {
                if !h.load(Ordering::SeqCst) {
                    return Err(HandlerError::msg("downstream is down"));
                }
                rec.record(0, ev.meta.id());
                Ok(())
            }
        })
        .start()
        .await?;
    let bystander = Recorder::default();
    let other = recording_member(&bus, "bystander", &bystander, 0).await?;
    let first = bus.publish(&order(1)).await?;
    // The second carries trace context, which must survive dead-lettering and redrive.
    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut traced = bus.event(&order(2))?.build();
    traced.traceparent = Some(TRACEPARENT.into());
    traced.tracestate = Some("vendor=1".into());
    let second = bus.publish_event(&traced).await?;
    let listed = dead_letters(&bus, "fragile", 2).await?;
    assert_eq!(listed.len(), 2);
    let stored = bus
        .dead_letters(Some(&group_name("fragile")), 0, 10)
        .await?
        .letters;
    assert_eq!(stored.len(), 2);
    assert!(
        bus.dead_letters(Some(&group_name("bystander")), 0, 10)
            .await?
            .letters
            .is_empty()
    );
    wait_until("bystander saw both", Duration::from_secs(10), || {
        bystander.distinct() == 2
    })
    .await?;

    healthy.store(true, Ordering::SeqCst);
    let only_second = [second.id.clone()];
    let letter = stored
        .iter()
        .find(|l| l.letter.event_id.as_deref() == Some(second.id.as_str()));
    let letter = letter.ok_or_else(|| anyhow::anyhow!("no dead letter for the traced event"))?;
    assert_eq!(
        letter.letter.headers.get("traceparent").map(|v| v.as_str()),
        Some(TRACEPARENT)
    );
    assert_eq!(
        letter.letter.headers.get("tracestate").map(|v| v.as_str()),
        Some("vendor=1")
    );
    assert_eq!(
        bus.redrive_group(&group_name("fragile"), Some(&only_second))
            .await?,
        1
    );
    let stream = bus.jetstream().get_stream("BUS_EVENTS").await?;
    let redriven = stream
        .get_last_raw_message_by_subject("bus.redrive.fragile.shop.order.created")
        .await?;
    assert_eq!(
        redriven.headers.get("traceparent").map(|v| v.as_str()),
        Some(TRACEPARENT),
        "redrive keeps the trace"
    );
    wait_until("the redriven event", Duration::from_secs(10), || {
        handled.distinct() == 1
    })
    .await?;
    assert_eq!(handled.counts().get(&second.id), Some(&1));
    let left = bus
        .dead_letters(Some(&group_name("fragile")), 0, 10)
        .await?
        .letters;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].letter.event_id.as_deref(), Some(first.id.as_str()));

    assert_eq!(bus.redrive_group(&group_name("fragile"), None).await?, 1);
    wait_until("both handled", Duration::from_secs(10), || {
        handled.distinct() == 2
    })
    .await?;
    assert!(
        bus.dead_letters(Some(&group_name("fragile")), 0, 10)
            .await?
            .letters
            .is_empty()
    );
    // The other group did not get the redriven copies.
    wait_group_idle(&bus, "bystander", Duration::from_secs(5)).await?;
    assert_eq!(bystander.total(), 2);
    member.shutdown().await;
    other.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_hung_handler_should_abandon_it_after_the_timeout_free_its_slot_and_dead_letter_the_event()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let handled = Recorder::default();
    // One slot: the second event can only be handled once the hung handling lets go.
    let member = bus
        .group("patient")
        .concurrency(1)
        .max_deliver(2)
        .backoff([Duration::from_millis(50)])
        .handler_timeout(Duration::from_millis(300))
        .on(hangs_on_order_1(handled.clone()))
        .start()
        .await?;
    let hung = bus.publish(&order(1)).await?;
    bus.publish(&order(2)).await?;

    wait_until(
        "the event behind the hung one",
        Duration::from_secs(10),
        || handled.distinct() == 1,
    )
    .await?;
    let letters = dead_letters(&bus, "patient", 1).await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event_id.as_deref(), Some(hung.id.as_str()));
    assert_eq!(letters[0].attempts, 2, "timed out on each of its attempts");
    assert!(
        letters[0].reason.contains("did not finish within 300ms"),
        "{}",
        letters[0].reason
    );
    wait_group_idle(&bus, "patient", Duration::from_secs(10)).await?;
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_zero_handler_timeout_start_should_refuse_it_naming_the_option()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let err = bus
        .group("impatient")
        .handler_timeout(Duration::ZERO)
        .on(|_ev: Received<OrderCreated>| async { Ok::<(), HandlerError>(()) })
        .start()
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a zero timeout was accepted"))?;
    assert!(
        matches!(
            err,
            bus_sdk::SubscribeError::InvalidOption {
                option: "handler_timeout",
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_messages_that_are_not_dead_letters_the_listing_should_skip_them_page_by_page()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let bus = bus_for(&cluster).await?;
    let subject = bus.subjects().dead_letter(&group_name("junky"));
    let js = bus.jetstream();
    for i in 0..10 {
        js.publish(subject.clone(), format!("junk {i}").into())
            .await?
            .await?;
    }
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("bus-dlq-group", "junky"),
        ("bus-dlq-reason", "failed 1 times; last error: test"),
        ("bus-dlq-attempts", "1"),
        ("bus-dlq-stream", "BUS_EVENTS"),
        ("bus-dlq-stream-seq", "7"),
        ("bus-dlq-subject", "bus.evt.shop.order.created"),
        ("ce-id", "e-1"),
    ] {
        headers.insert(name, value);
    }
    js.publish_with_headers(subject, headers, "{}".into())
        .await?
        .await?;

    // Two letters per page: at most eight messages looked at, all junk here.
    let first = bus.dead_letters(Some(&group_name("junky")), 0, 2).await?;
    assert!(first.letters.is_empty());
    assert_eq!(
        first.examined,
        2 * bus_sdk::dead_letter::DEAD_LETTER_SCAN_PER_LETTER
    );
    assert_eq!(
        first.next_after,
        Some(8),
        "a short page must say where to go on"
    );
    let second = bus.dead_letters(Some(&group_name("junky")), 8, 2).await?;
    let ids: Vec<(u64, Option<&str>)> = second
        .letters
        .iter()
        .map(|l| (l.seq, l.letter.event_id.as_deref()))
        .collect();
    assert_eq!(ids, [(11, Some("e-1"))]);
    assert_eq!(
        second.examined, 3,
        "two more junk messages, then the letter"
    );
    // The letter was the last message: the page says so, and the page after it is empty
    // and ends the listing.
    assert_eq!(
        second.next_after,
        Some(11),
        "the second page ends at the letter"
    );
    let last = bus.dead_letters(Some(&group_name("junky")), 11, 2).await?;
    assert!(last.letters.is_empty(), "{:?}", last.letters);
    assert_eq!(last.examined, 0);
    assert_eq!(last.next_after, None, "the end of the listing");

    // Paging from the start as a client would, until `next_after` is `None`: the listing
    // ends, after three pages, having shown exactly the one letter.
    let mut after = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        anyhow::ensure!(
            pages <= 10,
            "the listing did not end: {seen:?}, after {after}"
        );
        let page = bus
            .dead_letters(Some(&group_name("junky")), after, 2)
            .await?;
        seen.extend(
            page.letters
                .iter()
                .map(|l| (l.seq, l.letter.event_id.clone())),
        );
        match page.next_after {
            Some(next) => {
                anyhow::ensure!(next > after, "page after {after} went back to {next}");
                after = next;
            }
            None => break,
        }
    }
    assert_eq!(seen, [(11, Some("e-1".to_owned()))]);
    assert_eq!(
        pages, 3,
        "8 junk messages, then 2 and the letter, then the end"
    );
    Ok(())
}
