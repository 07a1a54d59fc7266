//! The two clocks the gate uses: wall time for records that survive restarts, and the
//! kernel's `CLOCK_MONOTONIC` that the XDP program compares expiries against.
//!
//! The program reads it with `bpf_ktime_get_coarse_ns` (a tick behind at most, ~4 ms, and
//! about 25 ns cheaper per packet than a precise read): an opening may outlive its expiry by
//! that tick. The monotonic clock stops while the machine is suspended, so kernel expiries
//! run late after a resume until the next sweep, which recomputes them from wall time.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds of `CLOCK_BOOTTIME`, the clock of `bpf_ktime_get_mono_ns`.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whole seconds since the Unix epoch (request timestamps, expiries in answers).
pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// A reading of both clocks taken together, to convert between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockPair {
    /// Wall clock, ms since the epoch.
    pub unix_ms: u64,
    /// `CLOCK_MONOTONIC`, ns.
    pub mono_ns: u64,
}

impl ClockPair {
    /// Reads both clocks now.
    pub fn now() -> Self {
        Self { unix_ms: unix_ms(), mono_ns: mono_ns() }
    }

    /// The monotonic-clock instant matching a wall-clock instant (clamped at 0).
    pub fn unix_ms_to_mono_ns(&self, at_unix_ms: u64) -> u64 {
        if at_unix_ms >= self.unix_ms {
            self.mono_ns.saturating_add((at_unix_ms - self.unix_ms).saturating_mul(1_000_000))
        } else {
            self.mono_ns.saturating_sub((self.unix_ms - at_unix_ms).saturating_mul(1_000_000))
        }
    }

    /// The wall-clock instant matching a monotonic-clock instant.
    pub fn mono_ns_to_unix_ms(&self, at_mono_ns: u64) -> u64 {
        if at_mono_ns >= self.mono_ns {
            self.unix_ms.saturating_add((at_mono_ns - self.mono_ns) / 1_000_000)
        } else {
            self.unix_ms.saturating_sub((self.mono_ns - at_mono_ns) / 1_000_000)
        }
    }
}

/// Milliseconds in a duration, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_round_trips_both_ways() {
        let pair = ClockPair { unix_ms: 1_700_000_000_000, mono_ns: 5_000_000_000 };
        assert_eq!(pair.unix_ms_to_mono_ns(1_700_000_001_500), 6_500_000_000);
        assert_eq!(pair.unix_ms_to_mono_ns(1_699_999_999_000), 4_000_000_000);
        assert_eq!(pair.unix_ms_to_mono_ns(0), 0, "clamps instead of wrapping");
        assert_eq!(pair.mono_ns_to_unix_ms(6_500_000_000), 1_700_000_001_500);
        assert_eq!(pair.mono_ns_to_unix_ms(4_000_000_000), 1_699_999_999_000);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let first = mono_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(mono_ns() > first);
    }
}
