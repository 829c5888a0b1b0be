//! Bytes moving through traced TCP connections: the read and write syscall families.
//!
//! Where the kernel allows it (`bpf_task_pt_regs`, Linux 5.15), one program at each call's
//! return takes the call's arguments from the registers saved at syscall entry, and a
//! client's write its start from the socket (when its bytes went out): no entry program
//! runs at all. Elsewhere entry programs save the fd, buffer and start per thread, only
//! for known TCP sockets, so file and pipe I/O never reaches the exit program, and one
//! exit program serves every data syscall: the saved call says how to find the bytes.

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use loupe_common::{
    ConnState, DataEvent, DataEventHeader, MAX_CAPTURE, MAX_IOV, PendingCall, ProbeConfig,
    SMALL_CAPTURE, context_program, counter, data_flags, direction, ignored, role, syscall_kind,
};

use crate::{
    connection::lookup_or_discover,
    context::resume_context,
    emit::{RingLevel, output_bytes},
    filter::{is_marked, traced_current, traced_task},
    maps::{CONTEXT_SCRATCH, DATA_CONTEXT, IOV_SCRATCH, SCRATCH, WHOLE_RESPONSE_TGIDS, count},
    pending,
    record::{header, write_head_only, write_small, write_uncaptured},
    response_head::heads_a_body,
    socket::last_sent_or_received,
    syscall::{Task, arg, ret},
};

/// How long before a client write's return its socket may have last sent for that to be
/// taken as when the write's bytes went out. A write pushes them microseconds before its
/// return, unless it was preempted in between; an older time is not this write's (a
/// socket whose fd was reused after a close loupe did not see).
const MAX_SEND_LAG_NS: u64 = 1_000_000;
/// How far after this program's clock read the socket's own may be: the kernel reads the
/// same monotonic clock for both, but the program's read is the faster, coarser one.
const MAX_CLOCK_SKEW_NS: u64 = 10_000;

/// Offset of `msg_iov`, followed by `msg_iovlen`, in the userspace `struct msghdr`
/// (x86_64, arm64).
const MSGHDR_IOV: u64 = 16;

#[inline(always)]
fn on_enter(ctx: &TracePointContext, kind: u8) {
    let args = |_: &ProbeConfig| Some([arg::<0>(ctx), arg::<1>(ctx), arg::<2>(ctx)]);
    if let Some((pid_tgid, mut call, _, _)) = socket_call(kind, traced_current(), args) {
        // SAFETY: the helper has no preconditions.
        call.start_ns = unsafe { bpf_ktime_get_ns() };
        pending::begin(pid_tgid, &call);
    }
}

/// The call of the `current` thread, when its process is traced, on a traced TCP socket,
/// with its `[fd, buffer, count]` arguments from `args` and no start yet (0: the record
/// gets its end time unless the caller knows better), and the connection's state; `None`
/// for other processes and other fds.
#[inline(always)]
fn socket_call(
    kind: u8,
    current: Option<(u32, u32, u64, &'static ProbeConfig)>,
    args: impl FnOnce(&ProbeConfig) -> Option<[u64; 3]>,
) -> Option<(u64, PendingCall, &'static ProbeConfig, ConnState)> {
    let (tgid, tid, pid_tgid, cfg) = current?;
    let Some([fd, ptr, len]) = args(cfg) else {
        count(counter::READ_FAILURES);
        return None;
    };
    let fd = fd as u32;
    let state = lookup_or_discover(tgid, tid, fd, cfg)?;
    let call = PendingCall {
        kind,
        flags: if state.ignored == ignored::NO {
            0
        } else {
            data_flags::UNCAPTURED
        },
        _pad: [0; 2],
        fd,
        ptr,
        count: len,
        start_ns: 0,
        conn_id: state.conn_id,
    };
    Some((pid_tgid, call, cfg, state))
}

/// A tracepoint program `$name` calling `$handler(&ctx, $kind)`.
macro_rules! data_program {
    ($name:ident, $handler:ident, $kind:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            $handler(&ctx, $kind);
            0
        }
    };
}

data_program!(loupe_read_enter, on_enter, syscall_kind::READ);
data_program!(loupe_recvfrom_enter, on_enter, syscall_kind::READ);
data_program!(loupe_write_enter, on_enter, syscall_kind::WRITE);
data_program!(loupe_sendto_enter, on_enter, syscall_kind::WRITE);
data_program!(loupe_readv_enter, on_enter, syscall_kind::READV);
data_program!(loupe_writev_enter, on_enter, syscall_kind::WRITEV);
data_program!(loupe_recvmsg_enter, on_enter, syscall_kind::RECVMSG);
data_program!(loupe_sendmsg_enter, on_enter, syscall_kind::SENDMSG);
data_program!(loupe_sendfile_enter, on_enter, syscall_kind::SENDFILE);

#[tracepoint]
pub fn loupe_data_exit(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    // Untraced processes stop at the bitmap, before the pending-call lookup.
    let Some((_, _, pid_tgid, cfg)) = traced_current() else {
        return;
    };
    let Some(call) = pending::take(pid_tgid) else {
        return;
    };
    let moved = ret(ctx);
    // Connect and dup share the slot; their own exit programs take their calls.
    if moved <= 0 || !syscall_kind::carries_data(call.kind) {
        return;
    }
    emit(ctx, pid_tgid, &call, moved, cfg, (role::UNKNOWN, 0));
}

// Read exits that need no entry program: the arguments still sit in the registers saved
// at entry. Reads are the commonest syscalls on a host and a read's entry time is never
// used (a server span starts when the request is in hand, at the read's return), so
// every read, traced or not, costs one program instead of two.
data_program!(loupe_read_exit, on_read_exit, syscall_kind::READ);
data_program!(loupe_readv_exit, on_read_exit, syscall_kind::READV);
data_program!(loupe_recvmsg_exit, on_read_exit, syscall_kind::RECVMSG);

#[inline(always)]
fn on_read_exit(ctx: &TracePointContext, kind: u8) {
    capture_at_exit(ctx, kind, false);
}

/// Captures a call at its exit, its arguments taken from the saved registers; `sending`
/// for writes, whose start a client span needs.
#[inline(always)]
fn capture_at_exit(ctx: &TracePointContext, kind: u8, sending: bool) {
    // Failed calls (EAGAIN after each request of an event loop) stop before any lookup.
    let moved = ret(ctx);
    if moved <= 0 {
        return;
    }
    let task = Task::current();
    let args = |cfg: &ProbeConfig| task.args_at_exit(cfg.offsets.regs_layout);
    if let Some((pid_tgid, mut call, cfg, state)) = socket_call(kind, traced_task(&task), args) {
        if sending && needs_start(state.role) && call.flags == 0 {
            call.start_ns = sent_at(state.sock, cfg);
        }
        emit(ctx, pid_tgid, &call, moved, cfg, (state.role, state.sock));
    }
}

/// Whether a write on a connection of `conn_role` needs its start time: a client span
/// starts when its request begins to go out, but a server span ends at its response's
/// last byte, so a server's writes need none. Unknown roles (connections loupe saw only
/// once they were in use) keep theirs. A process that accepts a connection and then
/// sends requests over it (a reverse tunnel) gets client spans that start at their first
/// write's return, a few microseconds late.
#[inline(always)]
fn needs_start(conn_role: u8) -> bool {
    conn_role != role::SERVER
}

data_program!(loupe_write_exit, on_write_exit, syscall_kind::WRITE);
data_program!(loupe_writev_exit, on_write_exit, syscall_kind::WRITEV);
data_program!(loupe_sendmsg_exit, on_write_exit, syscall_kind::SENDMSG);
data_program!(loupe_sendfile_exit, on_write_exit, syscall_kind::SENDFILE);

#[inline(always)]
fn on_write_exit(ctx: &TracePointContext, kind: u8) {
    capture_at_exit(ctx, kind, true);
}

/// When the write returning now sent its bytes, read from its socket `sock`: the socket's
/// last send or receive, when that is recent enough to be this write's ([`MAX_SEND_LAG_NS`]);
/// else now, counted: the record starts at its return. Now rather than 0 keeps both
/// outcomes an unknown number to the verifier, which then walks the rest of the program
/// once for both (it took about a third more verified instructions otherwise).
///
/// The time may be a little later than the push (see [`last_sent_or_received`]); the
/// agent keeps a client span from starting after the server span it caused.
#[inline(always)]
fn sent_at(sock: u64, cfg: &ProbeConfig) -> u64 {
    let sent = last_sent_or_received(sock, &cfg.offsets);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if sent != 0 && sent <= now + MAX_CLOCK_SKEW_NS && now.saturating_sub(sent) <= MAX_SEND_LAG_NS {
        sent.min(now)
    } else {
        count(counter::WRITE_START_UNKNOWN);
        now
    }
}

/// Captures the bytes `call` moved and writes its data record; `conn` is the connection's
/// role and `struct sock` (0 when unknown).
#[inline(always)]
fn emit(
    ctx: &TracePointContext,
    pid_tgid: u64,
    call: &PendingCall,
    moved: i64,
    cfg: &ProbeConfig,
    (conn_role, sock): (u8, u64),
) {
    let tgid = (pid_tgid >> 32) as u32;
    let dir = match call.kind {
        syscall_kind::READ | syscall_kind::READV | syscall_kind::RECVMSG => direction::INGRESS,
        _ => direction::EGRESS,
    };
    if call.flags & data_flags::UNCAPTURED != 0 {
        // The answer to an event loop's call on a connection without HTTP wakes the
        // handler that made it (see `inject::remember_call_context`).
        if cfg.inject_traceparent != 0 && dir == direction::INGRESS {
            resume_context(pid_tgid as u32, sock);
        }
        write_uncaptured(pid_tgid, call, dir, moved);
        return;
    }
    let mut cap = cfg.capture_bytes as u64;
    if cap > MAX_CAPTURE as u64 {
        cap = MAX_CAPTURE as u64;
    }
    let want = if (moved as u64) < cap {
        moved as u64
    } else {
        cap
    };
    // With injection on, the context program reads the record from the scratch event.
    if cfg.inject_traceparent == 0
        && (call.kind == syscall_kind::READ || call.kind == syscall_kind::WRITE)
        && want <= SMALL_CAPTURE as u64
    {
        write_small(pid_tgid, call, dir, moved, want);
        return;
    }
    // A response's body is never needed: only a server's writes may stop at the head.
    let response = dir == direction::EGRESS && conn_role == role::SERVER;
    let iov = match call.kind {
        syscall_kind::READV | syscall_kind::WRITEV => Some((call.ptr, call.count)),
        syscall_kind::RECVMSG | syscall_kind::SENDMSG => Some(msghdr_iov(call.ptr)),
        _ => None,
    };
    if cfg.inject_traceparent == 0
        && response
        && let Some((iov, iovcnt)) = iov
        && !is_marked(&WHOLE_RESPONSE_TGIDS, tgid)
        && write_head_only(pid_tgid, call, moved, want, iov, iovcnt)
    {
        return;
    }
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let event: &mut DataEvent = unsafe { &mut *event };
    // A sendfile record carries no bytes. With injection on, the context program must still
    // learn the request's context even when its record is lost.
    let payload = if call.kind == syscall_kind::SENDFILE {
        0
    } else {
        want as usize
    };
    let level = RingLevel::now();
    if cfg.inject_traceparent == 0 && !level.has_room(size_of::<DataEventHeader>() + payload) {
        count(counter::RINGBUF_DROPS);
        return;
    }
    let (captured, flags) = match (call.kind, iov) {
        (_, Some((iov, iovcnt))) => copy_iov(event, iov, iovcnt, want, response.then_some(tgid)),
        (syscall_kind::READ | syscall_kind::WRITE, None) => (copy_buf(event, call.ptr, want), 0),
        _ => (0, data_flags::SENDFILE),
    };
    // SAFETY: the helper has no preconditions.
    let end_ns = unsafe { bpf_ktime_get_ns() };
    event.header = header(pid_tgid, call, dir, flags, moved, captured, end_ns);
    if cfg.inject_traceparent != 0 && captured > 0 {
        // The context program reads the request from the scratch event, writes its own
        // record and then this one, in that order. It is a separate program so its
        // bounded scans do not count against this one's verifier budget. If the call
        // fails (not loaded), the data record is still written below.
        if let Some(scratch) = CONTEXT_SCRATCH.get_ptr_mut(0) {
            // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
            unsafe { (*scratch).sock = sock };
        }
        // SAFETY: the context program is a tracepoint program taking the same context.
        unsafe { DATA_CONTEXT.tail_call(ctx, context_program::READ) };
    }
    output_data(event, &level);
}

/// Writes the assembled data event: its header and `captured_len` payload bytes.
#[inline(always)]
pub fn output_data(event: &DataEvent, level: &RingLevel) {
    let len = size_of::<DataEventHeader>() + bounded(event.header.captured_len as usize);
    // SAFETY: DataEvent is plain bytes; the length is within it.
    let bytes: &[u8; size_of::<DataEvent>()] =
        unsafe { &*(event as *const DataEvent as *const [u8; size_of::<DataEvent>()]) };
    if len <= bytes.len() {
        output_bytes(&bytes[..len], level);
    }
}

/// Clamps a length to [`MAX_CAPTURE`] in a form the verifier tracks.
#[inline(always)]
pub fn bounded(len: usize) -> usize {
    let len = len & (MAX_CAPTURE * 2 - 1);
    if len > MAX_CAPTURE { MAX_CAPTURE } else { len }
}

#[inline(always)]
fn read_user(event: &mut DataEvent, offset: usize, src: u64, len: usize) -> bool {
    // black_box: LLVM can prove the mask redundant and drop it, and the verifier cannot.
    let offset = core::hint::black_box(offset) & (MAX_CAPTURE - 1);
    let len = bounded(core::hint::black_box(len));
    // SAFETY: offset < MAX_CAPTURE and len <= MAX_CAPTURE, and the buffer holds twice that.
    let dst = unsafe { event.data.as_mut_ptr().add(offset) };
    // SAFETY: the helper checks the user address itself.
    let rc = unsafe { bpf_probe_read_user(dst as *mut _, len as u32, src as *const _) };
    if rc != 0 {
        count(counter::READ_FAILURES);
    }
    rc == 0
}

#[inline(always)]
fn copy_buf(event: &mut DataEvent, src: u64, want: u64) -> usize {
    let want = bounded(want as usize);
    if want == 0 || !read_user(event, 0, src, want) {
        return 0;
    }
    want
}

/// The iovec array and its length from a `struct msghdr`, in one helper call: a call's
/// fixed cost is far more than copying the 8 bytes between the two fields.
#[inline(always)]
fn msghdr_iov(msghdr: u64) -> (u64, u64) {
    // SAFETY: the helper checks the user address itself.
    match unsafe {
        aya_ebpf::helpers::bpf_probe_read_user((msghdr + MSGHDR_IOV) as *const [u64; 2])
    } {
        Ok([iov, iovlen]) => (iov, iovlen),
        Err(_) => {
            count(counter::READ_FAILURES);
            (0, 0)
        }
    }
}

/// Copies up to `want` bytes from the `iovcnt` buffers at `iov`; returns the bytes copied
/// and the record's flags. For a response of the server process `response_of`, a call of
/// two buffers whose first holds a whole response head (nginx's status line and headers,
/// then its body) stops after that head: the body's bytes are counted, not copied, and
/// the agent keeps its framing from the head's `Content-Length`. When the second buffer
/// held more than that (a chunked body, whose chunks cannot be followed unseen, or the
/// next pipelined response), the agent loses that much once and has the process's
/// responses copied whole from then on ([`WHOLE_RESPONSE_TGIDS`]).
#[inline(always)]
fn copy_iov(
    event: &mut DataEvent,
    iov: u64,
    iovcnt: u64,
    want: u64,
    response_of: Option<u32>,
) -> (usize, u8) {
    let want = bounded(want as usize);
    // The iovec array in one helper call instead of one per entry (a call costs more than
    // copying the 16 bytes of an entry).
    let used = if iovcnt < MAX_IOV as u64 {
        iovcnt as usize
    } else {
        MAX_IOV
    };
    let Some(entries) = IOV_SCRATCH.get_ptr_mut(0) else {
        return (0, 0);
    };
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let entries = unsafe { &mut *entries };
    // black_box: the verifier must see the bound on the size, which LLVM could fold away.
    let size = core::hint::black_box(used * 16) & (MAX_IOV * 16 * 2 - 1);
    if size == 0 || size > MAX_IOV * 16 {
        return (0, 0);
    }
    // SAFETY: `entries` holds MAX_IOV * 16 bytes and `size` is at most that; the helper
    // checks the user address itself.
    let rc =
        unsafe { bpf_probe_read_user(entries.as_mut_ptr().cast(), size as u32, iov as *const _) };
    if rc != 0 {
        count(counter::READ_FAILURES);
        return (0, 0);
    }
    let mut captured: usize = 0;
    for i in 0..MAX_IOV {
        if i >= used || captured >= want {
            break;
        }
        let entry = entries[i];
        let room = want - captured;
        let n = if (entry[1] as usize) < room {
            entry[1] as usize
        } else {
            room
        };
        if n > 0 && !read_user(event, captured, entry[0], n) {
            break;
        }
        captured += n;
        if i == 0
            && used == 2
            && n == entry[1] as usize
            && response_of.is_some_and(|tgid| !is_marked(&WHOLE_RESPONSE_TGIDS, tgid))
            && heads_a_body(&event.data, n)
        {
            count(counter::RESPONSE_BODIES_SKIPPED);
            return (bounded(captured), data_flags::BODY_SKIPPED);
        }
    }
    (bounded(captured), 0)
}

#[cfg(test)]
mod tests {
    use loupe_common::role;

    use super::needs_start;

    #[test]
    fn only_a_servers_writes_go_without_a_start() {
        assert!(!needs_start(role::SERVER));
        assert!(needs_start(role::CLIENT));
        assert!(needs_start(role::UNKNOWN));
    }
}
