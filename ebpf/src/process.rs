//! Process lifecycle: exec announces candidates to the agent, fork passes tracing on to
//! children of traced processes (nginx workers, prefork servers) before their first accept.

use aya_ebpf::helpers::bpf_get_current_comm;
use aya_ebpf::{
    helpers::generated::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext,
};
use loupe_common::{COMM_LEN, EventKind, ExecEvent, MAX_EXEC_PREFIXES};

use crate::{
    emit::output,
    filter::{mark_traced, traced_current},
    maps::{EXEC_NAMES, EXEC_PREFIXES, PROCESS_CONTEXT, config},
};

/// True when the new program's command name is one the user selected by name. The
/// agent re-checks with its full rules; this only closes the window between exec and
/// the agent hearing of it.
#[inline(always)]
fn comm_selected() -> bool {
    let Ok(comm) = bpf_get_current_comm() else {
        return false;
    };
    // SAFETY: the value is only checked for presence.
    if unsafe { EXEC_NAMES.get(&comm) }.is_some() {
        return true;
    }
    for i in 0..MAX_EXEC_PREFIXES {
        let Some(prefix) = EXEC_PREFIXES.get(i) else {
            break;
        };
        if prefix.len == 0 {
            break;
        }
        let mut same = true;
        for j in 0..COMM_LEN {
            if (j as u32) < prefix.len && comm[j] != prefix.bytes[j] {
                same = false;
            }
        }
        if same {
            return true;
        }
    }
    false
}

#[tracepoint]
pub fn loupe_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    let cfg = config();
    if cfg.trace_all == 0 && tgid != cfg.agent_tgid && comm_selected() {
        mark_traced(tgid);
    }
    if cfg.inject_traceparent != 0 {
        // The new program has no request in flight yet.
        let _ = PROCESS_CONTEXT.remove(&tgid);
    }
    output(&ExecEvent {
        kind: EventKind::ProcessExec as u8,
        _pad: [0; 3],
        tgid,
        // SAFETY: the helper has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    });
    0
}

#[tracepoint]
pub fn loupe_process_fork(ctx: TracePointContext) -> u32 {
    let Some((_, _, _, cfg)) = traced_current() else {
        return 0;
    };
    if cfg.trace_all != 0 {
        return 0;
    }
    // The verifier wants constant context offsets: one read per known layout.
    // SAFETY: reads inside the tracepoint record, at the offset its format file gives.
    let child = match cfg.fork_child_pid_offset {
        44 => unsafe { ctx.read_at::<i32>(44) },
        20 => unsafe { ctx.read_at::<i32>(20) },
        _ => return 0,
    };
    let Ok(child) = child else {
        return 0;
    };
    // New threads pass through here too; the agent prunes entries that are not processes.
    mark_traced(child as u32);
    0
}
