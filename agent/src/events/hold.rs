//! When the reader leaves records in the ring buffer because the export queue is full.
//!
//! The ring buffer holds several times what the export queue does (4 MiB of records
//! against 2,048 spans by default). A reader that drained it regardless of the queue
//! turned every stall of the export side (a slow collector, the agent's threads starved of
//! CPU for a moment) into dropped spans while the ring still had room. Holding back lets the
//! ring absorb such bursts. The wait is bounded: a collector that stays away must not stop
//! the reading, or the ring would fill and the kernel would drop records, taking the request
//! metrics (counted from every request) and the connections' parsing state with them. So
//! after `MAX_HOLD` without room the reader goes back to draining, and the queue drops and
//! counts spans as before, until the queue has had room again.

use std::time::{Duration, Instant};

/// The longest the reader waits for room in one episode. At 20k requests/s that leaves
/// about 2,000 requests' records in the ring (about 1 MiB), a quarter of its default size,
/// and doubles the burst that gets through without loss.
pub const MAX_HOLD: Duration = Duration::from_millis(100);
/// How often a holding reader looks for room again.
pub const HOLD_POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
pub struct Hold {
    /// When the current wait for room began.
    since: Option<Instant>,
    /// A wait ran out; no more waiting until the queue has room again.
    given_up: bool,
}

impl Hold {
    /// Whether to leave the remaining records in the ring for now, given whether the export
    /// queue has room. Returns `true` at most `MAX_HOLD` into one episode. `now` is only
    /// called when there is no room: this runs once per record.
    pub fn should_wait(&mut self, room: bool, now: impl FnOnce() -> Instant) -> bool {
        if room {
            self.since = None;
            self.given_up = false;
            return false;
        }
        if self.given_up {
            return false;
        }
        let now = now();
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < MAX_HOLD {
            return true;
        }
        self.since = None;
        self.given_up = true;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_while_the_queue_is_full_then_gives_up_until_it_has_room() {
        let start = Instant::now();
        let mut hold = Hold::default();
        assert!(!hold.should_wait(true, || start), "room: read on");
        assert!(hold.should_wait(false, || start), "full: wait");
        assert!(hold.should_wait(false, || start + MAX_HOLD / 2));
        assert!(
            !hold.should_wait(false, || start + MAX_HOLD),
            "the wait is bounded"
        );
        assert!(
            !hold.should_wait(false, || start + MAX_HOLD * 5),
            "a queue that stays full is not waited for again"
        );
        let later = start + MAX_HOLD * 6;
        assert!(!hold.should_wait(true, || later), "room again");
        assert!(
            hold.should_wait(false, || later),
            "a new episode waits again, from its own start"
        );
        assert!(hold.should_wait(false, || later + MAX_HOLD / 2));
        assert!(!hold.should_wait(false, || later + MAX_HOLD));
    }

    #[test]
    fn room_between_looks_starts_the_wait_over() {
        let start = Instant::now();
        let mut hold = Hold::default();
        assert!(hold.should_wait(false, || start));
        assert!(!hold.should_wait(true, || start + MAX_HOLD / 2));
        assert!(hold.should_wait(false, || start + MAX_HOLD));
        assert!(hold.should_wait(false, || start + MAX_HOLD * 3 / 2 - HOLD_POLL));
    }
}
