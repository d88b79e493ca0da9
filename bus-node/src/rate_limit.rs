//! Token buckets: `rate` tokens a second, at most `burst` saved up.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate_per_second.max(1)),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens, or says why not.
    pub fn take(&mut self, n: u32, now: Instant) -> Result<(), Refusal> {
        self.refill(now);
        let n = f64::from(n);
        if n > self.burst {
            // Never satisfiable at once, however long the caller waits.
            return Err(Refusal::OverBurst {
                burst: self.burst as u32,
            });
        }
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Refusal::Wait(Duration::from_secs_f64(
                (n - self.tokens) / self.rate,
            )))
        }
    }

    /// How long until one token is there (zero: now), taking none.
    pub fn wait_for_one(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Whether the bucket is full again (its owner has been quiet for a while).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }
}

/// Why tokens were not taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// There will be enough after this long.
    Wait(Duration),
    /// More than the bucket ever holds: never satisfiable at once.
    OverBurst { burst: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5);
        for _ in 0..5 {
            assert!(b.take(1, t0).is_ok());
        }
        let wait = b.take(1, t0).err();
        assert!(
            matches!(wait, Some(Refusal::Wait(d)) if d > Duration::ZERO && d <= Duration::from_millis(100))
        );
        assert!(b.take(1, t0 + Duration::from_millis(100)).is_ok());
        assert_eq!(
            b.take(6, t0 + Duration::from_secs(10)),
            Err(Refusal::OverBurst { burst: 5 }),
            "more than the burst"
        );
    }
}
