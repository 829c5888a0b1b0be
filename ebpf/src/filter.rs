//! Which processes produce events.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, maps::Array};
use loupe_common::ProbeConfig;

use crate::{
    maps::{TRACED_TGIDS, config},
    syscall::Task,
};

/// The current thread's (tgid, tid, pid_tgid) and the probe configuration, when this
/// process is traced. Every program calls this or [`traced_task`] first, so untraced
/// processes pay one map lookup.
#[inline(always)]
pub fn traced_current() -> Option<(u32, u32, u64, &'static ProbeConfig)> {
    traced(bpf_get_current_pid_tgid())
}

/// [`traced_current`] for programs that hold the current task already.
#[inline(always)]
pub fn traced_task(task: &Task) -> Option<(u32, u32, u64, &'static ProbeConfig)> {
    traced(task.pid_tgid())
}

#[inline(always)]
fn traced(pid_tgid: u64) -> Option<(u32, u32, u64, &'static ProbeConfig)> {
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let cfg = config();
    if tgid == cfg.agent_tgid {
        return None;
    }
    if cfg.trace_all == 0 && !is_traced(tgid) {
        return None;
    }
    Some((tgid, tid, pid_tgid, cfg))
}

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    is_marked(&TRACED_TGIDS, tgid)
}

/// Whether `tgid`'s bit is set in a bitmap of one bit per tgid.
#[inline(always)]
pub fn is_marked(bits: &Array<u64>, tgid: u32) -> bool {
    bits.get(tgid / 64)
        .is_some_and(|word| word & (1 << (tgid % 64)) != 0)
}

/// Adds `tgid` to the traced set.
#[inline(always)]
pub fn mark_traced(tgid: u32) {
    let Some(word) = TRACED_TGIDS.get_ptr_mut(tgid / 64) else {
        return;
    };
    let bit = 1u64 << (tgid % 64);
    // Atomic add is the one read-modify-write every supported kernel offers (atomic OR
    // needs 5.12); adding a bit that is clear sets it. The agent sets bits of processes
    // it selects, this program those of children and exec'd programs: both setting the
    // same bit within the same few instructions would need the agent to select a process
    // in the instant the kernel forks or execs it.
    // SAFETY: the map value is a u64 that lives as long as the map; it is only changed
    // atomically, here and by the agent.
    if unsafe { core::ptr::read_volatile(word) } & bit == 0 {
        // SAFETY: as above.
        unsafe { atomic_add(word, bit) };
    }
}

/// `lock *(u64 *)word += value`. The BPF target offers no atomic read-modify-write types
/// (it lacks compare-and-swap), only the intrinsic.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn atomic_add(word: *mut u64, value: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: the caller passes a valid, aligned u64.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(word, value) };
}

#[cfg(not(target_arch = "bpf"))]
pub unsafe fn atomic_add(word: *mut u64, value: u64) {
    // SAFETY: the caller passes a valid, aligned u64.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(word) }
        .fetch_add(value, core::sync::atomic::Ordering::Relaxed);
}
