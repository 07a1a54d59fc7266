//! The per-client approval budget: a token bucket per client id, refilled continuously at
//! `per_minute` tokens a minute, holding at most `per_minute`.
use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::Instant,
};

/// Approvals per client per minute.
pub(crate) struct ClientRate {
    per_minute: AtomicU32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Buckets kept before idle (full) ones are forgotten.
const MAX_BUCKETS: usize = 65_536;

impl ClientRate {
    /// A budget of `per_minute` approvals per client (0: unlimited).
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute: AtomicU32::new(per_minute),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The configured budget.
    pub(crate) fn per_minute(&self) -> u32 {
        self.per_minute.load(Ordering::Relaxed)
    }

    /// A new budget (a reload); buckets keep their tokens, capped at the new budget.
    pub(crate) fn set_per_minute(&self, per_minute: u32) {
        self.per_minute.store(per_minute, Ordering::Relaxed);
    }

    /// Takes one token from `client_id`'s bucket; false when it is empty.
    pub(crate) fn admit(&self, client_id: &str) -> bool {
        self.admit_at(client_id, Instant::now())
    }

    fn admit_at(&self, client_id: &str, now: Instant) -> bool {
        let per_minute = self.per_minute();
        if per_minute == 0 {
            return true;
        }
        let capacity = f64::from(per_minute);
        let per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(client_id) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < capacity
            });
        }
        let (tokens, at) = buckets
            .entry(client_id.to_owned())
            .or_insert((capacity, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_client_has_its_own_budget_refilled_over_time() {
        let rate = ClientRate::new(3);
        let t0 = Instant::now();
        assert!(
            (0..3).all(|_| rate.admit_at("a", t0)),
            "a full bucket holds per_minute approvals"
        );
        assert!(
            !rate.admit_at("a", t0),
            "the fourth in the same instant is refused"
        );
        assert!(rate.admit_at("b", t0), "another client is not affected");
        assert!(
            !rate.admit_at("a", t0 + Duration::from_secs(10)),
            "a third of a token after 10 s"
        );
        assert!(
            rate.admit_at("a", t0 + Duration::from_secs(21)),
            "one token back after 20 s"
        );
        assert!(!rate.admit_at("a", t0 + Duration::from_secs(21)));
    }

    #[test]
    fn zero_means_unlimited() {
        let rate = ClientRate::new(0);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| rate.admit_at("a", t0)));
    }
}
