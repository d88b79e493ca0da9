//! Broadcast subscriptions: every instance gets every event.

use std::time::Duration;

use bus_sdk::{HandlerError, Received};
use bus_tests::NatsCluster;

use crate::support::*;

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
