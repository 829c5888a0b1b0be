//! Which processes produce events.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use loupe_common::ProbeConfig;

use crate::maps::{TRACED_TGIDS, config};

/// The current thread's (tgid, tid) and the probe configuration, when this process is
/// traced. Every program calls this first, so untraced processes pay one map lookup.
#[inline(always)]
pub fn traced_current() -> Option<(u32, u32, u64, &'static ProbeConfig)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let cfg = config()?;
    if tgid == cfg.agent_tgid {
        return None;
    }
    if cfg.trace_all == 0 {
        // SAFETY: the value is only checked for presence.
        unsafe { TRACED_TGIDS.get(&tgid) }?;
    }
    Some((tgid, tid, pid_tgid, cfg))
}
