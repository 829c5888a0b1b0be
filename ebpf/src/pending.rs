//! Syscall arguments carried from a traced thread's syscall entry to its exit.
//!
//! Each traced thread keeps one slot in the table from its first socket call until it
//! exits, and every call reuses it in place. Inserting and deleting a hash entry per
//! syscall cost more than all the rest of the entry and exit programs together, and a
//! thread's entry and exit never race: both run on that thread. An exit empties the slot
//! it takes, so an exit whose entry saved nothing (a file read in a traced process) finds
//! nothing.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use loupe_common::{PendingCall, counter, syscall_kind};

use crate::maps::{PENDING_CALLS, count};

/// Saves `call` in the thread's slot, creating the slot on the thread's first call.
#[inline(always)]
pub fn begin(pid_tgid: u64, call: &PendingCall) {
    if let Some(slot) = PENDING_CALLS.get_ptr_mut(&pid_tgid) {
        // SAFETY: the slot belongs to this thread, the only writer of its key.
        unsafe { *slot = *call };
        return;
    }
    if PENDING_CALLS.insert(&pid_tgid, call, 0).is_err() {
        count(counter::PENDING_FULL);
    }
}

/// Takes the call this thread's entry saved, leaving the slot empty.
#[inline(always)]
pub fn take(pid_tgid: u64) -> Option<PendingCall> {
    let slot = PENDING_CALLS.get_ptr_mut(&pid_tgid)?;
    // SAFETY: as in `begin`.
    let call = unsafe { *slot };
    if call.kind == syscall_kind::NONE {
        return None;
    }
    // SAFETY: as in `begin`.
    unsafe { (*slot).kind = syscall_kind::NONE };
    Some(call)
}

/// [`take`] for the exit program of one call kind: `None` also when the slot held another
/// kind's call, which is dropped all the same (its own exit has passed).
#[inline(always)]
pub fn take_kind(pid_tgid: u64, kind: u8) -> Option<PendingCall> {
    take(pid_tgid).filter(|call| call.kind == kind)
}

/// Frees the slot of an exiting thread (`sched_process_exit` fires once per thread).
#[tracepoint]
pub fn loupe_thread_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Most exiting threads were never traced; a lookup is cheaper than a delete that misses.
    if PENDING_CALLS.get_ptr(&pid_tgid).is_some() {
        let _ = PENDING_CALLS.remove(&pid_tgid);
    }
    0
}
