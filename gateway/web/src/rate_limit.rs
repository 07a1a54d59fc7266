//! Per-source token buckets that keep one address from flooding the controller.
//!
//! A source is an IPv4 address or an IPv6 /64 (one subscriber usually holds a whole /64).
//! Memory is bounded: buckets live in two generations of at most `max_sources / 2` each;
//! when the current one is full it becomes the previous one and the old previous one is
//! dropped. A source seen again moves back to the current generation, so only sources idle
//! for a whole generation are forgotten (and come back with a full bucket).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Default bound on remembered sources (about 64 bytes each).
pub const DEFAULT_MAX_SOURCES: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6Prefix64(u64),
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6Prefix64((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug, Default)]
struct Generations {
    current: HashMap<SourceKey, Bucket>,
    previous: HashMap<SourceKey, Bucket>,
}

/// Token buckets per source: `burst` tokens at most, refilled at `per_minute` a minute.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    generation_size: usize,
    buckets: Mutex<Generations>,
}

impl RateLimiter {
    /// A limiter remembering at most `max_sources` sources.
    pub fn new(per_minute: u32, burst: u32, max_sources: usize) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            generation_size: (max_sources / 2).max(1),
            buckets: Mutex::new(Generations::default()),
        }
    }

    /// Takes a token for `ip` at `now`; false when its bucket is empty.
    pub fn check(&self, ip: IpAddr, now: Instant) -> bool {
        let key = SourceKey::from(ip);
        let mut guard = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let generations = &mut *guard;
        if !generations.current.contains_key(&key) {
            let bucket = generations.previous.remove(&key).unwrap_or(Bucket {
                tokens: self.burst,
                updated: now,
            });
            if generations.current.len() >= self.generation_size {
                generations.previous = std::mem::take(&mut generations.current);
            }
            generations.current.insert(key, bucket);
        }
        let Some(bucket) = generations.current.get_mut(&key) else {
            return false;
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Sources currently remembered.
    pub fn tracked_sources(&self) -> usize {
        let guard = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        guard.current.len() + guard.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn burst_then_refill_at_the_configured_rate() {
        let limiter = RateLimiter::new(60, 3, 100); // one token a second
        let t0 = Instant::now();
        let a = ip("198.51.100.7");
        assert!((0..3).all(|_| limiter.check(a, t0)), "the burst passes");
        assert!(!limiter.check(a, t0), "then the bucket is empty");
        assert!(
            !limiter.check(a, t0 + Duration::from_millis(900)),
            "not yet refilled"
        );
        assert!(
            limiter.check(a, t0 + Duration::from_millis(1000)),
            "one token after one second"
        );
        assert!(!limiter.check(a, t0 + Duration::from_millis(1000)));
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            (0..10).filter(|_| limiter.check(a, later)).count(),
            3,
            "refill is capped at the burst"
        );
    }

    #[test]
    fn sources_are_separate_and_ipv6_counts_per_64() {
        let limiter = RateLimiter::new(60, 1, 100);
        let t0 = Instant::now();
        assert!(limiter.check(ip("198.51.100.7"), t0));
        assert!(!limiter.check(ip("198.51.100.7"), t0));
        assert!(
            limiter.check(ip("198.51.100.8"), t0),
            "another address has its own bucket"
        );
        assert!(
            !limiter.check(ip("::ffff:198.51.100.8"), t0),
            "mapped IPv4 is the same source"
        );
        assert!(limiter.check(ip("2001:db8:0:1::1"), t0));
        assert!(!limiter.check(ip("2001:db8:0:1:ffff::2"), t0), "same /64");
        assert!(limiter.check(ip("2001:db8:0:2::1"), t0), "next /64");
    }

    #[test]
    fn memory_is_bounded_and_busy_sources_survive_rotation() {
        let limiter = RateLimiter::new(60, 2, 1000);
        let t0 = Instant::now();
        let busy = ip("203.0.113.1");
        assert!(limiter.check(busy, t0) && limiter.check(busy, t0));
        for i in 0..100_000u32 {
            limiter.check(IpAddr::V4((0x0a00_0000 + i).into()), t0);
            if i % 400 == 0 {
                assert!(
                    !limiter.check(busy, t0),
                    "the busy source stays limited (seen every generation)"
                );
            }
            assert!(limiter.tracked_sources() <= 1000);
        }
        assert!(limiter.tracked_sources() <= 1000);
    }
}
