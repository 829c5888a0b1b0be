//! Kernel timestamps are CLOCK_MONOTONIC nanoseconds; spans need Unix time. The offset
//! between the two is measured, and re-measured periodically so a wall-clock step (NTP)
//! shows up in later spans.

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn monotonic_now_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC)
}

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: u64,
}

impl Clock {
    pub fn measure() -> Self {
        // Take the tightest of a few samples: the one least disturbed by preemption.
        let mut best = (u64::MAX, 0u64);
        for _ in 0..5 {
            let before = now(libc::CLOCK_MONOTONIC);
            let real = now(libc::CLOCK_REALTIME);
            let after = now(libc::CLOCK_MONOTONIC);
            let width = after.saturating_sub(before);
            if width < best.0 {
                best = (width, real.saturating_sub(before + width / 2));
            }
        }
        Self { offset_ns: best.1 }
    }

    /// A clock whose Unix time is `offset_ns` past the monotonic one: the replay's, which
    /// must not depend on when it runs.
    pub fn with_offset(offset_ns: u64) -> Self {
        Self { offset_ns }
    }

    pub fn to_unix_ns(self, monotonic_ns: u64) -> u64 {
        monotonic_ns.saturating_add(self.offset_ns)
    }

    /// This clock, or `measured` when the two differ by more than measuring alone would
    /// make them (a step of the wall clock, or NTP's slewing added up). Keeping the offset
    /// through each re-measure's jitter keeps the order of two times converted on either
    /// side of it: a client span that starts with its server span does not come out a
    /// few nanoseconds after it.
    pub fn updated(self, measured: Clock) -> Clock {
        if self.offset_ns.abs_diff(measured.offset_ns) > MAX_MEASURE_JITTER_NS {
            measured
        } else {
            self
        }
    }
}

/// How far apart two measures of an unchanged offset can be: each takes the tightest of
/// five pairs of clock reads, microseconds at worst.
const MAX_MEASURE_JITTER_NS: u64 = 20_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_now_is_close_to_realtime() {
        let clock = Clock::measure();
        let converted = clock.to_unix_ns(monotonic_now_ns());
        let real = now(libc::CLOCK_REALTIME);
        assert!(
            converted.abs_diff(real) < 50_000_000,
            "{converted} vs {real}"
        );
    }

    #[test]
    fn a_re_measure_replaces_the_offset_only_when_it_moved() {
        let at = |offset_ns| Clock { offset_ns };
        let base = 1_796_000_000_000_000_000;
        assert_eq!(at(base).updated(at(base + 40)).offset_ns, base);
        assert_eq!(at(base).updated(at(base - 19_000)).offset_ns, base);
        assert_eq!(at(base).updated(at(base + 25_000)).offset_ns, base + 25_000);
        assert_eq!(
            at(base).updated(at(base - 3_000_000)).offset_ns,
            base - 3_000_000
        );
    }
}
