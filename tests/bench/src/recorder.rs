//! Where handlers of both sides report each event they got: latency from its scheduled
//! send time, duplicates, errors, and the moment the last expected event arrived.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::pacer::Schedule;
use crate::stats::{histogram, nanos};

/// A pause between two deliveries this long is reported as a stall: a pull consumer
/// that stopped receiving (seen with small batches, on both sides: see BENCHMARKS.md).
pub const STALL: Duration = Duration::from_secs(1);

/// Shared by a run's handlers (through an `Arc`) and the code waiting for them.
#[derive(Debug)]
pub struct Recorder {
    /// Latency of event `seq` in ns (at least 1); 0 while it has not arrived.
    latency: Vec<AtomicU64>,
    /// Events before this sequence are left out of the histogram.
    warmup: u64,
    schedule: OnceLock<Schedule>,
    received: AtomicUsize,
    duplicates: AtomicUsize,
    errors: AtomicUsize,
    first_error: Mutex<Option<String>>,
    finished: OnceLock<Instant>,
    done: Notify,
    created: Instant,
    /// When the latest delivery arrived, in ns since `created` (0: none yet).
    last: AtomicU64,
    /// Longest time between two deliveries, in ns.
    longest_gap: AtomicU64,
}

impl Recorder {
    pub fn new(total: u64, warmup: u64) -> Self {
        Recorder {
            latency: (0..total).map(|_| AtomicU64::new(0)).collect(),
            warmup,
            schedule: OnceLock::new(),
            received: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            finished: OnceLock::new(),
            done: Notify::new(),
            created: Instant::now(),
            last: AtomicU64::new(0),
            longest_gap: AtomicU64::new(0),
        }
    }

    /// Fixes the schedule latencies are measured against; call it before anything is sent.
    pub fn set_schedule(&self, schedule: Schedule) {
        let _ = self.schedule.set(schedule);
    }

    /// A handler got event `seq`.
    pub fn record(&self, seq: u64) {
        let now = Instant::now();
        let t = nanos(now.saturating_duration_since(self.created));
        let previous = self.last.swap(t, Ordering::Relaxed);
        if previous > 0 {
            self.longest_gap
                .fetch_max(t.saturating_sub(previous), Ordering::Relaxed);
        }
        let Some(slot) = usize::try_from(seq).ok().and_then(|i| self.latency.get(i)) else {
            self.error(format!("unexpected event seq {seq}"));
            return;
        };
        let due = self.schedule.get().map_or(now, |s| s.at(seq));
        let latency = nanos(now.saturating_duration_since(due));
        if slot
            .compare_exchange(0, latency, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.received.fetch_add(1, Ordering::AcqRel) + 1 == self.latency.len() {
            let _ = self.finished.set(now);
            self.done.notify_one();
        }
    }

    /// A handler could not do its work (the run still waits for every event).
    pub fn error(&self, what: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| what.into());
        }
    }

    /// Waits until every event arrived; returns when the last one did.
    pub async fn wait(&self, deadline: Duration) -> Result<Instant> {
        let give_up = Instant::now() + deadline;
        loop {
            if let Some(end) = self.finished.get() {
                return Ok(*end);
            }
            if tokio::time::timeout_at(give_up, self.done.notified())
                .await
                .is_err()
            {
                let first = self.first_error.lock().ok().and_then(|e| e.clone());
                bail!(
                    "{} of {} events handled after {deadline:?} ({} errors; first: {})",
                    self.received.load(Ordering::Relaxed),
                    self.latency.len(),
                    self.errors.load(Ordering::Relaxed),
                    first.as_deref().unwrap_or("none"),
                );
            }
        }
    }

    /// Latencies of the events after the warm-up.
    pub fn histogram(&self) -> Result<Histogram<u64>> {
        let mut h = histogram()?;
        for slot in self.latency.iter().skip(usize::try_from(self.warmup)?) {
            let v = slot.load(Ordering::Relaxed);
            if v > 0 {
                h.saturating_record(v);
            }
        }
        Ok(h)
    }

    /// The longest pause between two deliveries, if it was a stall (at least [`STALL`]).
    pub fn stall(&self) -> Option<Duration> {
        let gap = Duration::from_nanos(self.longest_gap.load(Ordering::Relaxed));
        (gap >= STALL).then_some(gap)
    }

    /// Duplicates and errors, if any, for the progress log.
    pub fn anomalies(&self) -> Option<String> {
        let d = self.duplicates.load(Ordering::Relaxed);
        let e = self.errors.load(Ordering::Relaxed);
        if d == 0 && e == 0 {
            return None;
        }
        let first = self.first_error.lock().ok().and_then(|e| e.clone());
        Some(format!(
            "{d} duplicate deliveries, {e} errors (first: {})",
            first.as_deref().unwrap_or("none")
        ))
    }
}
