//! Where a member's deliveries run once they wait: a few long-lived tasks per member,
//! one per runtime worker, each running many deliveries at once.
//!
//! A task per waiting delivery (as before) cost each one a task allocation (tokio aligns
//! tasks to 128 bytes, which glibc serves without its per-thread cache), a registration
//! in the runtime's task list and its scheduling: about 1.1 k instructions per delivery
//! more than a runner's `FuturesUnordered` takes (BENCHMARKS.md, "Profile, ninth
//! round"). A delivery that becomes ready wakes its runner, which polls just the ready
//! ones. With a runner per worker, waiting deliveries can still run on every core; what
//! a runner cannot do is move a delivery off a runner whose handler blocks its thread
//! (handlers must not: `spawn_blocking`).
//!
//! Bounded: a delivery holds one of its member's `concurrency` slots until it settles,
//! so no more than `concurrency` are ever handed over, and each runner's queue has room
//! for that many. Should a hand-over fail anyway (a runner gone), the delivery gets a
//! task of its own, as before.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// A delivery that has started and waits for something.
pub(crate) type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A member's runners.
pub(crate) struct Runners {
    queues: Vec<mpsc::Sender<Job>>,
    next: usize,
    tracker: TaskTracker,
}

impl Runners {
    /// One runner per worker of the current runtime (at most `concurrency`), tracked by
    /// `tracker`; each ends once every delivery handed to it has settled and the
    /// `Runners` is dropped.
    pub(crate) fn start(concurrency: usize, tracker: &TaskTracker) -> Self {
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let count = workers.clamp(1, concurrency.max(1));
        let queues = (0..count)
            .map(|_| {
                let (tx, rx) = mpsc::channel(concurrency.max(1));
                tracker.spawn(run(rx));
                tx
            })
            .collect();
        Self {
            queues,
            next: 0,
            tracker: tracker.clone(),
        }
    }

    /// Runs `job` to its end on the next runner in turn.
    pub(crate) fn run(&mut self, job: Job) {
        let i = self.next % self.queues.len();
        self.next = self.next.wrapping_add(1);
        if let Err(e) = self.queues[i].try_send(job) {
            // Cannot happen while the runners live (see the module's bound).
            tracing::warn!("runner queue refused a delivery; running it on its own task");
            self.tracker.spawn(e.into_inner());
        }
    }
}

/// One runner: takes deliveries from `jobs` and polls those that are ready until each
/// has settled; after the last sender is gone, finishes what it holds.
async fn run(mut jobs: mpsc::Receiver<Job>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            job = jobs.recv() => match job {
                Some(job) => running.push(guarded(job)),
                None => break,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    while running.next().await.is_some() {}
}

/// `job` with its panics caught: a panic outside the handler (which `settle` guards
/// itself) ends that delivery, unsettled, and JetStream redelivers it after the ack wait;
/// the runner and its other deliveries go on.
fn guarded(job: Job) -> impl Future<Output = ()> + Send {
    AssertUnwindSafe(job).catch_unwind().map(|result| {
        if result.is_err() {
            tracing::error!("settling a delivery panicked; it will be redelivered");
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn given_a_delivery_that_panics_its_runner_should_finish_the_others_and_then_end() {
        let tracker = TaskTracker::new();
        let mut runners = Runners::start(4, &tracker);
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..8 {
            let done = done.clone();
            runners.run(Box::pin(async move {
                tokio::task::yield_now().await;
                if i % 4 == 0 {
                    panic!("delivery {i} panics");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        drop(runners);
        tracker.close();
        let ended = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
        assert!(ended.is_ok(), "runners end once their deliveries have");
        assert_eq!(
            done.load(Ordering::SeqCst),
            6,
            "every delivery but the panicking ones"
        );
    }
}
