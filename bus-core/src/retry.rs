//! Delays between retries of transient NATS failures (elections, reconnects).

use std::time::Duration;

use async_nats::jetstream::ErrorCode;

/// First retry delay.
pub const RETRY_BASE: Duration = Duration::from_millis(25);
/// Longest delay between two retries.
pub const RETRY_CAP: Duration = Duration::from_secs(1);

/// Exponential backoff from [`RETRY_BASE`], capped at [`RETRY_CAP`], with up to 25 %
/// jitter so that many clients failing together do not retry together.
pub fn backoff_delay(attempt: u32) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1u32 << attempt.min(10));
    let capped = exp.min(RETRY_CAP);
    let jitter = capped.as_micros() as u64 * u64::from(jitter_percent()) / 100;
    capped.saturating_sub(Duration::from_micros(jitter))
}

fn jitter_percent() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    (h.finish() % 26) as u8
}

/// Whether a JetStream error code means "not now" (an election, a server starting)
/// rather than "no": such requests are retried.
pub fn is_transient_code(code: ErrorCode) -> bool {
    code == ErrorCode::CLUSTER_NOT_AVAILABLE
        || code.0 == 10_009 // cluster not active
        || code.0 == 10_039 // JetStream not enabled for the account (still starting)
        // No suitable peers for placement: a peer the stream needs is offline, as a node
        // that is starting or restarting is for a moment (seen creating an R3 stream on a
        // cluster that had just formed).
        || code.0 == 10_005
        || code.0 == 503
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        assert!(backoff_delay(0) <= RETRY_BASE);
        assert!(backoff_delay(0) >= RETRY_BASE * 3 / 4);
        assert!(backoff_delay(3) >= RETRY_BASE * 8 * 3 / 4);
        for a in [6, 20, u32::MAX] {
            let d = backoff_delay(a);
            assert!(d <= RETRY_CAP && d >= RETRY_CAP * 3 / 4, "{a}: {d:?}");
        }
    }

    #[test]
    fn a_peer_offline_is_not_now_and_a_bad_request_is_no() {
        for code in [10_005, 10_009, 10_039, 503] {
            assert!(is_transient_code(ErrorCode(code)), "{code}");
        }
        // Stream name already in use with another configuration; stream not found.
        for code in [10_058, 10_059] {
            assert!(!is_transient_code(ErrorCode(code)), "{code}");
        }
    }
}
