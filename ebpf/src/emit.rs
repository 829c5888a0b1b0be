//! Writing records into the ring buffer.
//!
//! Wakeups are batched: a record only wakes the agent once the buffer is a quarter full;
//! otherwise the agent's bounded poll interval picks it up. A wakeup per record would cost
//! more than the record itself.

use aya_ebpf::bindings::{
    BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
};
use loupe_common::counter;

use crate::maps::{EVENTS, count};

#[inline(always)]
fn wakeup_flag() -> u64 {
    // The size is set by the agent at load time (`--ring-buffer-mib`).
    let threshold = EVENTS.query(BPF_RB_RING_SIZE as u64) / 4;
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Copies `record` into the ring buffer, counting it when it does not fit.
#[inline(always)]
pub fn output<T>(record: &T) {
    if EVENTS.output::<T>(record, wakeup_flag()).is_err() {
        count(counter::RINGBUF_DROPS);
    }
}

#[inline(always)]
pub fn output_bytes(record: &[u8]) {
    if EVENTS.output::<[u8]>(record, wakeup_flag()).is_err() {
        count(counter::RINGBUF_DROPS);
    }
}
