//! Open-loop load: events are scheduled by the clock (event `seq` at `origin + seq / rate`)
//! whatever the system under test does, and latency is measured from the scheduled time, so
//! a stall delays every event scheduled during it and shows in the percentiles instead of
//! silently slowing the sender (coordinated omission).
//!
//! A dedicated thread keeps the schedule: tokio's timer has a 1 ms resolution, too coarse
//! for 10k events/s. It hands each due sequence to the sending task over a bounded channel.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Due sequences queued for the sending task. When full (the sender is stuck at its
/// window), the pacer waits: events are still measured from their scheduled time.
const PACER_QUEUE: usize = 4096;
/// Timer slack of the pacer thread (Linux default 50 µs).
const PACER_TIMER_SLACK_NS: u64 = 1_000;

/// When each event of a run is due.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub origin: Instant,
    /// Events per second; `None`: every event is due at `origin` (as fast as possible).
    pub rate: Option<f64>,
}

impl Schedule {
    pub fn at(&self, seq: u64) -> Instant {
        match self.rate {
            Some(rate) => self.origin + Duration::from_secs_f64(seq as f64 / rate),
            None => self.origin,
        }
    }
}

/// Sends events `0..n` as scheduled, each with `send`, with at most `window` of them in
/// progress (sent and awaiting their PubAck). Returns at the first failure.
pub async fn drive<F, Fut>(schedule: Schedule, n: u64, window: usize, mut send: F) -> Result<()>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let (tx, mut rx) = mpsc::channel(PACER_QUEUE);
    let pacer = tokio::task::spawn_blocking(move || pace(schedule, n, &tx));
    let mut in_flight = FuturesUnordered::new();
    let mut more = true;
    let result = loop {
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = done {
                    break Err(e);
                }
            }
            next = rx.recv(), if more && in_flight.len() < window => match next {
                Some(seq) => in_flight.push(send(seq)),
                None => more = false,
            },
            else => break Ok(()),
        }
    };
    // Stops the pacer if we stopped early.
    drop(rx);
    pacer
        .await
        .map_err(|e| anyhow!("pacer thread failed: {e}"))?;
    result
}

fn pace(schedule: Schedule, n: u64, tx: &mpsc::Sender<u64>) {
    // Best effort: without it the pacer is up to 50 µs late, on both sides alike.
    let _ = nix::sys::prctl::set_timerslack(PACER_TIMER_SLACK_NS);
    for seq in 0..n {
        let due = schedule.at(seq).into_std();
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if tx.blocking_send(seq).is_err() {
            return;
        }
    }
}
