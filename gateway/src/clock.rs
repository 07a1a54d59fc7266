//! The clocks the gate uses. Lifetimes are kept in `CLOCK_BOOTTIME` (it never steps with the
//! wall clock and keeps counting while the machine is suspended), tagged with the boot they
//! belong to; the kernel map holds `CLOCK_MONOTONIC`, which the XDP program compares expiries
//! against; wall time is only for display and audit.
//!
//! The program reads the monotonic clock with `bpf_ktime_get_coarse_ns` (a tick behind at
//! most, ~4 ms, and about 25 ns cheaper per packet than a precise read): an opening may outlive
//! its expiry by that tick. The monotonic clock stops while the machine is suspended, so after
//! a resume kernel expiries run late until the next sweep, which recomputes them from the boot
//! clock: a suspend cannot keep an opening past its absolute maximum by more than one sweep
//! interval.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_coarse_ns`.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Milliseconds of `CLOCK_BOOTTIME`: monotonic, counting suspend, never stepped.
pub fn boot_ms() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) / 1_000_000
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks always exist on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): boot-clock times of another boot mean
/// nothing. Empty if it cannot be read (then every stored time is treated as another boot's).
pub fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
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

/// A reading of the clocks taken together, to convert between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockPair {
    /// Wall clock, ms since the epoch: display and audit only.
    pub unix_ms: u64,
    /// `CLOCK_MONOTONIC`, ns (the kernel map's clock).
    pub mono_ns: u64,
    /// `CLOCK_BOOTTIME`, ms (the clock of every lifetime).
    pub boot_ms: u64,
}

impl ClockPair {
    /// Reads the clocks now.
    pub fn now() -> Self {
        Self {
            unix_ms: unix_ms(),
            mono_ns: mono_ns(),
            boot_ms: boot_ms(),
        }
    }

    /// The monotonic-clock instant matching a boot-clock instant (clamped at 0).
    pub fn boot_ms_to_mono_ns(&self, at_boot_ms: u64) -> u64 {
        if at_boot_ms >= self.boot_ms {
            self.mono_ns
                .saturating_add((at_boot_ms - self.boot_ms).saturating_mul(1_000_000))
        } else {
            self.mono_ns
                .saturating_sub((self.boot_ms - at_boot_ms).saturating_mul(1_000_000))
        }
    }

    /// The boot-clock instant matching a monotonic-clock instant.
    pub fn mono_ns_to_boot_ms(&self, at_mono_ns: u64) -> u64 {
        if at_mono_ns >= self.mono_ns {
            self.boot_ms
                .saturating_add((at_mono_ns - self.mono_ns) / 1_000_000)
        } else {
            self.boot_ms
                .saturating_sub((self.mono_ns - at_mono_ns) / 1_000_000)
        }
    }

    /// The wall-clock time to display for a boot-clock instant.
    pub fn boot_ms_to_unix_ms(&self, at_boot_ms: u64) -> u64 {
        if at_boot_ms >= self.boot_ms {
            self.unix_ms.saturating_add(at_boot_ms - self.boot_ms)
        } else {
            self.unix_ms.saturating_sub(self.boot_ms - at_boot_ms)
        }
    }

    /// The wall-clock time to display for a monotonic-clock instant.
    pub fn mono_ns_to_unix_ms(&self, at_mono_ns: u64) -> u64 {
        self.boot_ms_to_unix_ms(self.mono_ns_to_boot_ms(at_mono_ns))
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
        let pair = ClockPair {
            unix_ms: 1_700_000_000_000,
            mono_ns: 5_000_000_000,
            boot_ms: 9_000,
        };
        assert_eq!(pair.boot_ms_to_mono_ns(10_500), 6_500_000_000);
        assert_eq!(pair.boot_ms_to_mono_ns(8_000), 4_000_000_000);
        assert_eq!(pair.boot_ms_to_mono_ns(0), 0, "clamps instead of wrapping");
        assert_eq!(pair.mono_ns_to_boot_ms(6_500_000_000), 10_500);
        assert_eq!(pair.mono_ns_to_boot_ms(4_000_000_000), 8_000);
        assert_eq!(pair.boot_ms_to_unix_ms(10_500), 1_700_000_001_500);
        assert_eq!(pair.mono_ns_to_unix_ms(4_000_000_000), 1_699_999_999_000);
    }

    #[test]
    fn this_boot_has_an_id() {
        assert_eq!(boot_id().len(), 36, "{:?}", boot_id());
        assert!(boot_ms() > 0);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let first = mono_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(mono_ns() > first);
    }
}
