//! Throttling of wrong API keys per client address, so that keys cannot be guessed at
//! line rate: each refused key costs its address a token ([`FAILURES_BURST`] saved up,
//! [`FAILURES_PER_SECOND`] back); an address without one gets `429` for every request
//! that carries a key, before the key is even looked at (a right guess would otherwise
//! still get through). Requests without any key cost nothing (they learn nothing).
//!
//! Bounded: at most [`MAX_ADDRESSES`] addresses are tracked; past it, addresses whose
//! bucket is full again are forgotten, then, if none is, an arbitrary one (which then
//! starts afresh).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::rate_limit::TokenBucket;

/// Wrong keys an address may send in a row.
pub const FAILURES_BURST: u32 = 20;
/// Wrong keys an address may send a second, once its burst is spent.
pub const FAILURES_PER_SECOND: u32 = 1;
/// Addresses tracked at once.
pub const MAX_ADDRESSES: usize = 4096;

#[derive(Debug, Default)]
pub struct FailedAuth {
    by_address: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl FailedAuth {
    /// How long `address` must wait before its next key is looked at (zero: now).
    pub fn wait(&self, address: IpAddr) -> Duration {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(&address)
            .map_or(Duration::ZERO, |b| b.wait_for_one(Instant::now()))
    }

    /// Counts one wrong key from `address`.
    pub fn failed(&self, address: IpAddr) {
        let now = Instant::now();
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&address) && map.len() >= MAX_ADDRESSES {
            map.retain(|_, b| !b.is_full(now));
            if map.len() >= MAX_ADDRESSES
                && let Some(any) = map.keys().next().copied()
            {
                map.remove(&any);
            }
        }
        let bucket = map
            .entry(address)
            .or_insert_with(|| TokenBucket::new(FAILURES_PER_SECOND, FAILURES_BURST));
        // Refused or not, the failure is counted: an empty bucket stays empty.
        let _ = bucket.take(1, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_throttled_after_its_burst_of_wrong_keys_and_others_are_not() {
        let f = FailedAuth::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..FAILURES_BURST {
            assert_eq!(f.wait(a), Duration::ZERO);
            f.failed(a);
        }
        assert!(f.wait(a) > Duration::ZERO, "throttled after the burst");
        assert_eq!(f.wait(b), Duration::ZERO, "another address is not");
    }

    #[test]
    fn the_table_stays_bounded() {
        let f = FailedAuth::default();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            f.failed(IpAddr::from(i.to_be_bytes()));
        }
        let len = f.by_address.lock().map(|m| m.len()).unwrap_or(0);
        assert!(len <= MAX_ADDRESSES, "{len}");
    }
}
