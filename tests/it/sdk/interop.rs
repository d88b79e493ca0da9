//! Binary mode is the contract: a plain NATS client with nothing but the `ce-*` headers
//! can publish events the SDK handles, and read the events the SDK publishes.

use std::time::Duration;

use bus_sdk::{HandlerError, Received};
use bus_tests::NatsCluster;
use bus_tests::fixtures::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_plain_client_publishing_ce_headers_should_be_handled_by_the_sdk()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let bus = bus_for(&cluster).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let member = bus
        .group("interop")
        .on(move |ev: Received<OrderCreated>| {
            let tx = tx.clone();
            async move {
                tx.send((ev.data, ev.meta.event)).await?;
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;

    let js = async_nats::jetstream::new(cluster.client().await?);
    let h = nats_headers(&[
        ("ce-id", "plain-1"),
        ("ce-source", "/legacy/php"),
        ("ce-type", "shop.order.created"),
        ("ce-specversion", "1.0"),
        ("ce-subject", "order/9"),
        ("ce-time", "2026-11-23T10:00:00Z"),
        ("content-type", "application/json"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ]);
    plain_publish(
        &js,
        "bus.evt.shop.order.created",
        Some(h),
        r#"{"order_id": 9, "customer": "c9"}"#.into(),
    )
    .await?;
    let (data, event) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("handler channel closed"))?;
    assert_eq!(
        data,
        OrderCreated {
            order_id: 9,
            customer: "c9".into()
        }
    );
    assert_eq!(event.id, "plain-1");
    assert_eq!(event.source, "/legacy/php");
    assert_eq!(event.subject.as_deref(), Some("order/9"));
    assert_eq!(
        event.traceparent.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    // The time the plain client gave, to the nanosecond.
    assert_eq!(
        event.time.map(std::time::SystemTime::from),
        rfc3339("2026-11-23T10:00:00Z"),
        "{:?}",
        event.time
    );
    member.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_sdk_publish_should_be_readable_by_a_plain_client() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(3).await?;
    let bus = bus_for(&cluster).await?;
    let before = std::time::SystemTime::now();
    let event = bus.event(&order(5))?.subject("order/5").build();
    let after = std::time::SystemTime::now();
    let receipt = bus.publish_event(&event).await?;

    // Read back with plain async-nats by its stream sequence (a message get: no consumer,
    // whose ordered-consumer stream async-nats sometimes leaves idle for seconds on a
    // fresh 3-node cluster, which made this test time out once in a while).
    let js = async_nats::jetstream::new(cluster.client().await?);
    let stream = js.get_stream("BUS_EVENTS").await?;
    let message = stream.get_raw_message(receipt.seq).await?;
    assert_eq!(message.subject.as_str(), "bus.evt.shop.order.created");
    let h = &message.headers;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(get("ce-id"), Some(event.id.clone()));
    // "ce1-" + hex SHA-256 of source, a 0 byte, id (sdk/intact.rs computes it as the
    // README says; here the bus's own function).
    assert_eq!(
        get("Nats-Msg-Id"),
        Some(bus_core::binary_mode::dedup_id("/tests", &event.id))
    );
    assert_eq!(get("ce-type").as_deref(), Some("shop.order.created"));
    assert_eq!(get("ce-source").as_deref(), Some("/tests"));
    assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(get("ce-subject").as_deref(), Some("order/5"));
    assert_eq!(get("content-type").as_deref(), Some("application/json"));
    // ce-time is RFC 3339 and says when the event was made: the event's own time, which
    // the builder took between `before` and `after`.
    let time = get("ce-time").ok_or_else(|| anyhow::anyhow!("no ce-time header"))?;
    let stored =
        rfc3339(&time).ok_or_else(|| anyhow::anyhow!("ce-time {time:?} is not RFC 3339"))?;
    assert_eq!(
        Some(stored),
        event.time.map(std::time::SystemTime::from),
        "ce-time {time:?}"
    );
    assert!(
        before <= stored && stored <= after,
        "ce-time {time:?} is not between {before:?} and {after:?}"
    );
    let data: OrderCreated = serde_json::from_slice(&message.payload)?;
    assert_eq!(data, order(5));
    Ok(())
}

/// The instant an RFC 3339 `date-time` (section 5.6: `2026-11-23T10:00:00.5Z`,
/// `…+02:00`) stands for; `None` for anything else. Written here, not taken from the
/// bus's own decoder, so that a test checks what the bus writes against the RFC.
fn rfc3339(text: &str) -> Option<std::time::SystemTime> {
    fn digits(s: &[u8]) -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    }
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let mut rest = &b[19..];
    let mut nanos = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        // Digits past nanoseconds are below what SystemTime holds.
        let kept = &fraction[..len.min(9)];
        nanos = digits(kept)? * 10_i64.pow(9 - kept.len() as u32);
        rest = &fraction[len..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            (h * 60 + m) * 60 * if *sign == b'-' { -1 } else { 1 }
        }
        _ => return None,
    };
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let since_epoch = Duration::new(u64::try_from(secs).ok()?, u32::try_from(nanos).ok()?);
    std::time::UNIX_EPOCH.checked_add(since_epoch)
}

#[test]
fn rfc3339_reads_date_times_and_refuses_anything_else() {
    let at = |secs: u64, nanos: u32| Some(std::time::UNIX_EPOCH + Duration::new(secs, nanos));
    assert_eq!(rfc3339("1970-01-01T00:00:00Z"), at(0, 0));
    assert_eq!(rfc3339("2026-11-23T10:00:00Z"), at(1_795_428_000, 0));
    assert_eq!(
        rfc3339("2026-11-23t12:30:00.25+02:30"),
        at(1_795_428_000, 250_000_000)
    );
    assert_eq!(
        rfc3339("2000-02-29T23:59:59.123456789z"),
        at(951_868_799, 123_456_789)
    );
    for bad in [
        "",
        "2026-11-23",
        "2026-11-23 10:00:00Z",
        "2026-11-23T10:00:00",
        "2026-11-23T10:00:00.Z",
        "2026-13-01T00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T10:00:00+0200",
        "2026-11-23T10:00:00Z ",
        "yesterday",
    ] {
        assert_eq!(rfc3339(bad), None, "{bad:?}");
    }
}
