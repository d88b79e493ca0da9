//! Waiting without sleeping blind: probe at a short interval until the condition holds
//! or the deadline passes, then fail with what the last probe saw. One loop, three
//! fronts: [`poll_until`] (the harness's own probes), [`try_poll_until`] (a test's
//! probes, failing with `anyhow`), [`wait_until`] (a condition that needs no I/O).

use std::time::Duration;

use tokio::time::Instant;

use crate::error::HarnessError;

/// Pause between two probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe<T> {
    /// The condition holds; stop polling with this value.
    Ready(T),
    /// Not yet; the text says what was seen and ends up in the timeout error.
    NotYet(String),
}

/// Calls `probe` every [`POLL_INTERVAL`] until it returns [`Probe::Ready`] or
/// `deadline` has passed, which gives [`HarnessError::Timeout`] carrying the last
/// [`Probe::NotYet`] text. A probe returning `Err` stops polling at once (for
/// conditions that can no longer become true, such as a server process that exited).
///
/// The probe is a closure returning a future (`|| async move { .. }` over copied
/// references) rather than an async closure: futures of async closures are not
/// provably `Send` on today's compiler, and callers need to `tokio::spawn` waits.
///
/// ```no_run
/// # async fn demo(cluster: &bus_tests::NatsCluster) -> Result<(), bus_tests::HarnessError> {
/// use std::time::Duration;
/// use bus_tests::{poll_until, Probe};
/// let node = cluster.node(0);
/// let leader = poll_until("n0 to report a meta leader", Duration::from_secs(10), || async move {
///     let jsz = node.monitor_json("/jsz").await?;
///     Ok(match jsz["meta_cluster"]["leader"].as_str() {
///         Some(l) if !l.is_empty() => Probe::Ready(l.to_owned()),
///         _ => Probe::NotYet(jsz["meta_cluster"].to_string()),
///     })
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn poll_until<T, F, Fut>(
    what: impl Into<String>,
    deadline: Duration,
    probe: F,
) -> Result<T, HarnessError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Probe<T>, HarnessError>>,
{
    poll(what, deadline, probe).await
}

/// [`poll_until`] for a probe whose own failures are [`anyhow::Error`]s: a test's calls
/// to the bus, to a node over HTTP, to JetStream. An `Err` from the probe stops polling
/// at once and is returned as it is; a timeout is a [`HarnessError::Timeout`] inside the
/// `anyhow::Error`.
///
/// ```no_run
/// # async fn demo(bus: &bus_sdk::Bus) -> anyhow::Result<()> {
/// use std::time::Duration;
/// use bus_tests::{Probe, try_poll_until};
/// let letters = try_poll_until("a dead letter", Duration::from_secs(30), || async move {
///     let page = bus.dead_letters(None, 0, 10).await?; // a failed read fails the test
///     Ok(if page.letters.is_empty() {
///         Probe::NotYet(format!("none, {} examined", page.examined))
///     } else {
///         Probe::Ready(page.letters)
///     })
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn try_poll_until<T, F, Fut>(
    what: impl Into<String>,
    deadline: Duration,
    probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Probe<T>>>,
{
    poll(what, deadline, probe).await
}

/// [`poll_until`] for a condition that needs no I/O (counters, a recorder, a log held in
/// memory): checks `holds` every [`POLL_INTERVAL`] until it is true or `deadline` has
/// passed ([`HarnessError::Timeout`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), bus_tests::HarnessError> {
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::time::Duration;
/// let handled = AtomicU64::new(0);
/// // ... handlers count into `handled` ...
/// bus_tests::wait_until("10 events handled", Duration::from_secs(10), || {
///     handled.load(Ordering::Relaxed) == 10
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_until(
    what: impl Into<String>,
    deadline: Duration,
    mut holds: impl FnMut() -> bool,
) -> Result<(), HarnessError> {
    poll_until(what, deadline, || {
        let probe = if holds() {
            Probe::Ready(())
        } else {
            Probe::NotYet("does not hold".to_owned())
        };
        std::future::ready(Ok(probe))
    })
    .await
}

/// The one polling loop behind [`poll_until`], [`try_poll_until`] and [`wait_until`].
async fn poll<T, E, F, Fut>(
    what: impl Into<String>,
    deadline: Duration,
    mut probe: F,
) -> Result<T, E>
where
    E: From<HarnessError>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Probe<T>, E>>,
{
    let started = Instant::now();
    loop {
        let last_seen = match probe().await? {
            Probe::Ready(value) => return Ok(value),
            Probe::NotYet(seen) => seen,
        };
        let waited = started.elapsed();
        if waited >= deadline {
            return Err(HarnessError::Timeout {
                what: what.into(),
                waited,
                last_seen,
            }
            .into());
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - waited)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn given_a_probe_that_never_holds_when_deadline_passes_should_time_out_with_last_seen() {
        let calls = AtomicUsize::new(0);
        let counter = &calls;
        let result: Result<(), _> =
            poll_until("never", Duration::from_millis(200), || async move {
                let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                Ok(Probe::NotYet(format!("call {n}")))
            })
            .await;
        let calls = calls.into_inner();
        match result {
            Err(HarnessError::Timeout {
                what, last_seen, ..
            }) => {
                assert_eq!(what, "never");
                assert_eq!(last_seen, format!("call {calls}"));
                assert!(calls > 1);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn given_a_probe_that_holds_on_third_call_when_polled_should_return_its_value()
    -> Result<(), HarnessError> {
        let calls = AtomicUsize::new(0);
        let counter = &calls;
        let value = poll_until("third", Duration::from_millis(200), || async move {
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(if n == 3 {
                Probe::Ready(n)
            } else {
                Probe::NotYet(String::new())
            })
        })
        .await?;
        assert_eq!(value, 3);
        Ok(())
    }
}
