//! Writing records into the ring buffer.
//!
//! Wakeups are batched: only the record that takes the buffer past a quarter full wakes the
//! agent; otherwise the agent's bounded poll interval picks records up. A wakeup per record
//! would cost more than the record itself, and so would one per record while the buffer
//! stays above the mark because the agent is behind (it runs at a lower priority than the
//! services it traces).

use aya_ebpf::bindings::{
    BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
};
use loupe_common::counter;

use crate::maps::{EVENTS, count};

#[inline(always)]
fn wakeup_flag(len: usize) -> u64 {
    // The size is set by the agent at load time (`--ring-buffer-mib`).
    let mark = EVENTS.query(BPF_RB_RING_SIZE as u64) / 4;
    let before = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if crosses(before, len as u64, mark) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// True when writing `len` bytes onto `before` reaches `mark` for the first time.
#[inline(always)]
pub fn crosses(before: u64, len: u64, mark: u64) -> bool {
    before < mark && before + len >= mark
}

/// What the ring buffer adds to every record: an 8-byte header, and padding to 8 bytes.
#[inline(always)]
pub fn record_footprint(len: u64) -> u64 {
    8 + len.next_multiple_of(8)
}

/// False when a record of `len` bytes cannot fit in the ring right now. Under overload
/// (the agent starved of CPU) most records find the ring full: checking first drops them
/// before their bytes are copied, so a saturated traced process pays least exactly when
/// it has the least to spare.
#[inline(always)]
pub fn has_room(len: usize) -> bool {
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    record_footprint(len as u64) <= size.saturating_sub(waiting)
}

/// Copies `record` into the ring buffer, counting it when it does not fit.
#[inline(always)]
pub fn output<T>(record: &T) {
    if EVENTS
        .output::<T>(record, wakeup_flag(size_of::<T>()))
        .is_err()
    {
        count(counter::RINGBUF_DROPS);
    }
}

#[inline(always)]
pub fn output_bytes(record: &[u8]) {
    if EVENTS
        .output::<[u8]>(record, wakeup_flag(record.len()))
        .is_err()
    {
        count(counter::RINGBUF_DROPS);
    }
}

#[cfg(test)]
mod tests {
    use super::{crosses, record_footprint};

    #[test]
    fn one_wakeup_per_crossing_of_the_mark() {
        let mark = 1 << 20;
        // Filling record by record from empty wakes exactly once.
        let (mut avail, mut wakeups) = (0u64, 0);
        while avail < 3 * mark {
            if crosses(avail, 300, mark) {
                wakeups += 1;
            }
            avail += 300;
        }
        assert_eq!(wakeups, 1);
        // A buffer that stays above the mark (agent behind) never wakes again.
        assert!(!crosses(mark, 300, mark));
        assert!(!crosses(2 * mark, 300, mark));
        // Landing exactly on the mark counts.
        assert!(crosses(mark - 300, 300, mark));
    }

    #[test]
    fn records_take_a_header_and_padding() {
        assert_eq!(record_footprint(0), 8);
        assert_eq!(record_footprint(1), 16);
        assert_eq!(record_footprint(8), 16);
        assert_eq!(record_footprint(61), 72);
    }
}
