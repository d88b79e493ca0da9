//! A deadline for the core NATS sends the bus makes (acks, pull requests, presence
//! announcements, unsubscribes, the final drain), which async-nats awaits without one: it
//! queues each in a bounded channel that it stops reading while it reconnects, so a send
//! could otherwise wait as long as an outage lasts, and whatever awaits it with it (a
//! fetch loop, a shutdown). Past the deadline the send counts as failed; what was queued
//! may still go out after the reconnect.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// How long one core NATS send may wait.
pub(crate) const SEND_DEADLINE: Duration = Duration::from_secs(5);

/// `send`, or its error as text, or a timeout after [`SEND_DEADLINE`].
pub(crate) async fn within<T, E: Display>(
    send: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(SEND_DEADLINE, send).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "not sent within {SEND_DEADLINE:?} (the connection is likely down)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_send_that_never_completes_fails_after_the_deadline() {
        let never = std::future::pending::<Result<(), String>>();
        let started = tokio::time::Instant::now();
        let result = within(never).await;
        assert!(result.is_err_and(|e| e.contains("not sent within")));
        assert_eq!(started.elapsed(), SEND_DEADLINE);
    }

    #[tokio::test]
    async fn a_send_keeps_its_own_result() {
        assert_eq!(within(async { Ok::<_, String>(7) }).await, Ok(7));
        assert_eq!(
            within(async { Err::<(), _>("refused") }).await,
            Err("refused".to_owned())
        );
    }
}
