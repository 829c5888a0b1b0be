//! Writing records into the ring buffer.
//!
//! Wakeups are batched: only the record that takes the buffer past a quarter full wakes the
//! agent; otherwise the agent's bounded poll interval picks records up. A wakeup per record
//! would cost more than the record itself, and so would one per record while the buffer
//! stays above the mark because the agent is behind (it runs at a lower priority than the
//! services it traces).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    maps::ring_buf::RingBufEntry,
};
use loupe_common::counter;

use crate::maps::{EVENTS, count};

/// How full the ring buffer is at one moment.
pub struct RingLevel {
    /// Set by the agent at load time (`--ring-buffer-mib`).
    size: u64,
    /// Bytes written and not yet consumed.
    waiting: u64,
}

/// The ring buffer's size in bytes, written by the agent into the object's read-only data
/// before loading (0: asked of the ring each time), saving a helper call per record.
#[unsafe(no_mangle)]
static RING_BYTES: u32 = 0;

impl RingLevel {
    #[inline(always)]
    pub fn now() -> Self {
        // SAFETY: a plain read of a static; volatile so the build-time 0 is not folded in.
        let size = match unsafe { core::ptr::read_volatile(&RING_BYTES) } {
            0 => EVENTS.query(BPF_RB_RING_SIZE as u64),
            known => known as u64,
        };
        Self {
            size,
            waiting: EVENTS.query(BPF_RB_AVAIL_DATA as u64),
        }
    }

    /// False when a record of `len` bytes cannot fit. Under overload (the agent starved of
    /// CPU) most records find the ring full: checking first drops them before their bytes
    /// are copied, so a saturated traced process pays least when it has least to spare.
    #[inline(always)]
    pub fn has_room(&self, len: usize) -> bool {
        record_footprint(len as u64) <= self.size.saturating_sub(self.waiting)
    }

    /// [`Self::wakeup_flag`] for a record of `len` bytes already reserved when the level
    /// was read: the level counts it.
    #[inline(always)]
    pub fn wakeup_flag_reserved(&self, len: usize) -> u64 {
        let footprint = record_footprint(len as u64);
        if crosses(
            self.waiting.saturating_sub(footprint),
            footprint,
            self.size / 4,
        ) {
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        }
    }

    #[inline(always)]
    fn wakeup_flag(&self, len: usize) -> u64 {
        if crosses(self.waiting, len as u64, self.size / 4) {
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        }
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

/// A ring-buffer slot for a `T` to be written in place, or `None`, counted as a drop,
/// when the ring is full.
#[inline(always)]
pub fn reserve<T>() -> Option<RingBufEntry<T>> {
    let slot = EVENTS.reserve::<T>(0);
    if slot.is_none() {
        count(counter::RINGBUF_DROPS);
    }
    slot
}

/// Hands a slot from [`reserve`], written whole, to the agent.
#[inline(always)]
pub fn submit<T>(slot: RingBufEntry<T>) {
    slot.submit(RingLevel::now().wakeup_flag_reserved(size_of::<T>()));
}

/// Copies `record` into the ring buffer, counting it when it does not fit.
#[inline(always)]
pub fn output<T>(record: &T) {
    if EVENTS
        .output::<T>(record, RingLevel::now().wakeup_flag(size_of::<T>()))
        .is_err()
    {
        count(counter::RINGBUF_DROPS);
    }
}

/// `output` for a record of bytes, with the ring's level as read before the record was
/// assembled.
#[inline(always)]
pub fn output_bytes(record: &[u8], level: &RingLevel) {
    if EVENTS
        .output::<[u8]>(record, level.wakeup_flag(record.len()))
        .is_err()
    {
        count(counter::RINGBUF_DROPS);
    }
}

#[cfg(test)]
mod tests {
    use super::{RingLevel, crosses, record_footprint};
    use aya_ebpf::bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};

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

    #[test]
    fn a_reserved_record_wakes_the_reader_when_it_takes_the_ring_past_the_mark() {
        let size = 4 << 20;
        let mark = size / 4;
        let len = 312;
        let footprint = record_footprint(len as u64);
        // The level, read after reserving, counts the record itself.
        let after = |waiting| RingLevel { size, waiting };
        let wakes =
            |waiting| after(waiting).wakeup_flag_reserved(len) == BPF_RB_FORCE_WAKEUP as u64;
        assert!(!wakes(footprint));
        assert!(wakes(mark));
        assert!(wakes(mark + footprint - 1));
        assert!(!wakes(mark + footprint));
        assert!(!wakes(mark - 1));
        assert_eq!(
            after(size).wakeup_flag_reserved(len),
            BPF_RB_NO_WAKEUP as u64
        );
        // A level below the record's own size (the reader consumed it already) is no crossing.
        assert!(!wakes(0));
    }
}
