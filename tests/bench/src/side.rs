//! One connection of either side, with the same operations on both, so that workloads
//! are written once and differ only in which client does the work.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::bus_side::{self, BusMembers};
use crate::cli::{PUBLISH_WINDOW, Side};
use crate::env::Env;
use crate::pacer::{self, Schedule};
use crate::raw_side::{RawConn, RawMembers};
use crate::recorder::Recorder;

/// What a handler does besides reporting the event.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    Noop,
    Sleep(Duration),
}

impl Work {
    pub async fn run(self) {
        if let Work::Sleep(d) = self {
            tokio::time::sleep(d).await;
        }
    }
}

/// A fresh connection of one side.
#[derive(Debug)]
pub enum Conn {
    Raw(Box<RawConn>),
    Bus(bus_sdk::Bus),
}

/// Running group members of one side.
#[derive(Debug)]
pub enum Members {
    Raw(RawMembers),
    Bus(BusMembers),
}

impl Conn {
    pub async fn open(env: &Env, side: Side) -> Result<Self> {
        Ok(match side {
            Side::Raw => Conn::Raw(Box::new(RawConn::connect(env).await?)),
            Side::Bus => Conn::Bus(bus_side::connect(env).await?),
        })
    }

    /// Publishes event `seq` and waits for its PubAck.
    pub async fn publish_one(&self, seq: u64) -> Result<()> {
        match self {
            Conn::Raw(raw) => raw.publish_one(seq).await,
            Conn::Bus(bus) => bus_side::publish_one(bus, seq).await,
        }
    }

    /// Untimed publishes that open the path to the stream leader (retried: a fresh R3
    /// stream may still be settling).
    pub async fn warm_up(&self, n: u64) -> Result<()> {
        for seq in 0..n {
            let mut tries = 0;
            while let Err(e) = self.publish_one(seq).await {
                tries += 1;
                if tries >= 50 {
                    return Err(e.context("warm-up publish"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Builds and publishes events `first..first + n` with [`PUBLISH_WINDOW`] PubAcks in flight.
    pub async fn publish_window(&self, first: u64, n: u64) -> Result<()> {
        match self {
            Conn::Raw(raw) => raw.publish_window(first, n, PUBLISH_WINDOW).await,
            Conn::Bus(bus) => bus_side::publish_window(bus, first, n).await,
        }
    }

    /// Publishes events `0..n` as `schedule` says, each awaited for its PubAck, with at most
    /// [`PUBLISH_WINDOW`] in progress.
    pub async fn publish_open_loop(&self, schedule: Schedule, n: u64) -> Result<()> {
        match self {
            Conn::Raw(raw) => {
                pacer::drive(schedule, n, PUBLISH_WINDOW, move |seq| raw.publish_one(seq)).await
            }
            Conn::Bus(bus) => {
                pacer::drive(schedule, n, PUBLISH_WINDOW, move |seq| {
                    bus_side::publish_one(bus, seq)
                })
                .await
            }
        }
    }

    /// Starts `members` members of group [`crate::env::GROUP`] on this connection, each
    /// running up to `concurrency` handlers that do `work` and report to `recorder`.
    pub async fn start_members(
        &self,
        members: usize,
        concurrency: usize,
        work: Work,
        recorder: &Arc<Recorder>,
    ) -> Result<Members> {
        Ok(match self {
            Conn::Raw(raw) => Members::Raw(
                raw.start_members(members, concurrency, work, recorder)
                    .await?,
            ),
            Conn::Bus(bus) => Members::Bus(
                bus_side::start_members(bus, members, concurrency, work, recorder).await?,
            ),
        })
    }

    pub async fn close(self) {
        match self {
            Conn::Raw(raw) => raw.close().await,
            Conn::Bus(bus) => bus.close().await,
        }
    }
}

impl Members {
    pub async fn stop(self) {
        match self {
            Members::Raw(m) => m.stop().await,
            Members::Bus(m) => m.stop().await,
        }
    }
}
