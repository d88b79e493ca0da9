//! Measuring one run (wall time, CPU time of this process, latencies) and summarising rounds.

use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use tokio::time::Instant;

/// Largest latency a histogram holds (larger ones are recorded as this).
const MAX_LATENCY_NS: u64 = 600_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)?)
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// User + system CPU time used so far by every thread of this process (not the servers:
/// they are other processes).
pub fn cpu_time() -> Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    Ok(duration(usage.user_time()) + duration(usage.system_time()))
}

fn duration(t: TimeVal) -> Duration {
    let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
    let micros = u64::try_from(t.tv_usec()).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

/// Started when a run's clock starts.
#[derive(Debug)]
pub struct Meter {
    start: Instant,
    cpu: Duration,
}

impl Meter {
    pub fn start() -> Result<Self> {
        Ok(Meter {
            cpu: cpu_time()?,
            start: Instant::now(),
        })
    }

    pub fn started(&self) -> Instant {
        self.start
    }

    /// Ends the run now.
    pub fn stop(self, msgs: u64, latency: Option<Histogram<u64>>) -> Result<Sample> {
        let end = Instant::now();
        self.stop_at(end, msgs, latency)
    }

    /// Ends the run at `end` (when its last message was handled); CPU time is read now.
    pub fn stop_at(
        self,
        end: Instant,
        msgs: u64,
        latency: Option<Histogram<u64>>,
    ) -> Result<Sample> {
        let cpu = cpu_time()?.saturating_sub(self.cpu);
        Ok(Sample {
            msgs,
            elapsed: end.saturating_duration_since(self.start),
            cpu,
            latency,
            stall: None,
        })
    }
}

/// One run of one side.
#[derive(Debug)]
pub struct Sample {
    pub msgs: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
    pub latency: Option<Histogram<u64>>,
    /// The longest pause between two deliveries, when it was a stall.
    pub stall: Option<Duration>,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn cpu_us_per_msg(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.msgs.max(1) as f64
    }

    /// Latency at quantile `q` in microseconds.
    pub fn latency_us(&self, q: f64) -> Option<f64> {
        self.latency
            .as_ref()
            .map(|h| h.value_at_quantile(q) as f64 / 1e3)
    }

    /// One line for the progress log.
    pub fn brief(&self) -> String {
        let mut s = format!(
            "{:>9.0} msg/s  {:>7.1} µs CPU/msg",
            self.rate(),
            self.cpu_us_per_msg()
        );
        if let (Some(p50), Some(p99), Some(p999)) = (
            self.latency_us(0.5),
            self.latency_us(0.99),
            self.latency_us(0.999),
        ) {
            s += &format!("  p50 {p50:.0} µs  p99 {p99:.0} µs  p99.9 {p999:.0} µs");
        }
        if let Some(stall) = self.stall {
            s += &format!("  STALL: no delivery for {:.1} s", stall.as_secs_f64());
        }
        s
    }
}

/// The median of each metric over the rounds of one side.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub rate: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub cpu: f64,
}

impl Summary {
    pub fn of(samples: &[Sample]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let q = |q: f64| median(samples.iter().filter_map(|s| s.latency_us(q)).collect());
        Some(Summary {
            rate: median(samples.iter().map(Sample::rate).collect())?,
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            cpu: median(samples.iter().map(Sample::cpu_us_per_msg).collect())?,
        })
    }
}

/// Median; the mean of the middle two for an even count.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Mean and its standard error (the sample standard deviation over the root of the
/// count); `None` for fewer than two values.
pub fn mean_and_error(v: &[f64]) -> Option<(f64, f64)> {
    if v.len() < 2 {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let variance = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some((mean, (variance / n).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_its_standard_error() {
        assert_eq!(mean_and_error(&[1.0]), None);
        let (mean, error) = mean_and_error(&[5.0, 10.0, 0.0]).unwrap_or_default();
        assert!((mean - 5.0).abs() < 1e-9, "{mean}");
        // Sample standard deviation 5, over the root of 3.
        assert!((error - 5.0 / 3f64.sqrt()).abs() < 1e-9, "{error}");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
