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

    /// Takes `n` tokens, or says how long until they are there.
    pub fn take(&mut self, n: u32, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let n = f64::from(n);
        if n > self.burst {
            // Never satisfiable at once: refuse, and say when a full bucket is there.
            return Err(Duration::from_secs_f64(
                (self.burst - self.tokens) / self.rate + n / self.rate,
            ));
        }
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }
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
        assert!(matches!(wait, Some(d) if d > Duration::ZERO && d <= Duration::from_millis(100)));
        assert!(b.take(1, t0 + Duration::from_millis(100)).is_ok());
        assert!(
            b.take(6, t0 + Duration::from_secs(10)).is_err(),
            "more than the burst"
        );
    }
}
