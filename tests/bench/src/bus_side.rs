//! The bus side: the SDK's public API only, with default options except the publish
//! window and the group's concurrency.

use std::sync::Arc;

use anyhow::Result;
use bus_sdk::{Bus, Group, HandlerError, Received};

use crate::cli::PUBLISH_WINDOW;
use crate::env::{Env, GROUP};
use crate::payload::{BenchEvent, SOURCE};
use crate::recorder::Recorder;
use crate::side::Work;

pub async fn connect(env: &Env) -> Result<Bus> {
    Ok(Bus::builder(env.config())
        .source(SOURCE)
        .publish_window(PUBLISH_WINDOW)
        .connect()
        .await?)
}

/// `Bus::publish` of a typed event: serialize, envelope, encode, publish, await the PubAck.
pub async fn publish_one(bus: &Bus, seq: u64) -> Result<()> {
    bus.publish(&BenchEvent::new(seq)).await?;
    Ok(())
}

/// Typed events built with `Bus::event`, published with `Bus::publish_batch`.
pub async fn publish_window(bus: &Bus, first: u64, n: u64) -> Result<()> {
    let events = (first..first + n)
        .map(|seq| Ok(bus.event(&BenchEvent::new(seq))?.build()))
        .collect::<Result<Vec<_>>>()?;
    for result in bus.publish_batch(&events).await {
        result?;
    }
    Ok(())
}

/// Running members of the bus's group.
#[derive(Debug)]
pub struct BusMembers(Vec<Group>);

pub async fn start_members(
    bus: &Bus,
    members: usize,
    concurrency: usize,
    work: Work,
    recorder: &Arc<Recorder>,
) -> Result<BusMembers> {
    let mut groups = Vec::with_capacity(members);
    for _ in 0..members {
        let recorder = recorder.clone();
        let group = bus
            .group(GROUP)
            .concurrency(concurrency)
            .on(move |event: Received<BenchEvent>| {
                let recorder = recorder.clone();
                async move {
                    work.run().await;
                    recorder.record(event.data.seq);
                    Ok::<(), HandlerError>(())
                }
            })
            .start()
            .await?;
        groups.push(group);
    }
    Ok(BusMembers(groups))
}

impl BusMembers {
    pub async fn stop(self) {
        for group in self.0 {
            group.shutdown().await;
        }
    }
}
