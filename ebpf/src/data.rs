//! Bytes moving through traced TCP connections: the read and write syscall families.
//!
//! Entry programs save the fd and buffer per thread, only for known TCP sockets, so file
//! and pipe I/O never reaches the exit program. One exit program serves every data
//! syscall: the saved call says how to find the bytes.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_ktime_get_ns, bpf_probe_read_user},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use loupe_common::{
    DataEvent, DataEventHeader, EventKind, MAX_CAPTURE, MAX_IOV, PendingCall, counter, data_flags,
    direction, syscall_kind,
};

use crate::{
    connection::lookup_or_discover,
    emit::output_bytes,
    filter::traced_current,
    maps::{DATA_CONTEXT, PENDING_CALLS, SCRATCH, config, count},
    syscall::{arg, ret},
};

/// Offset of `msg_iov` and `msg_iovlen` in the userspace `struct msghdr` (x86_64, arm64).
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;

#[inline(always)]
fn on_enter(ctx: &TracePointContext, kind: u8) {
    let Some((tgid, tid, pid_tgid, cfg)) = traced_current() else {
        return;
    };
    let fd = arg(ctx, 0) as u32;
    let Some(state) = lookup_or_discover(tgid, tid, fd, cfg) else {
        return;
    };
    let call = PendingCall {
        kind,
        _pad: [0; 3],
        fd,
        ptr: arg(ctx, 1),
        count: arg(ctx, 2),
        // SAFETY: the helper has no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        conn_id: state.conn_id,
    };
    if PENDING_CALLS.insert(&pid_tgid, &call, 0).is_err() {
        count(counter::PENDING_FULL);
    }
}

macro_rules! enter_program {
    ($name:ident, $kind:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_enter(&ctx, $kind);
            0
        }
    };
}

enter_program!(loupe_read_enter, syscall_kind::READ);
enter_program!(loupe_recvfrom_enter, syscall_kind::READ);
enter_program!(loupe_write_enter, syscall_kind::WRITE);
enter_program!(loupe_sendto_enter, syscall_kind::WRITE);
enter_program!(loupe_readv_enter, syscall_kind::READV);
enter_program!(loupe_writev_enter, syscall_kind::WRITEV);
enter_program!(loupe_recvmsg_enter, syscall_kind::RECVMSG);
enter_program!(loupe_sendmsg_enter, syscall_kind::SENDMSG);
enter_program!(loupe_sendfile_enter, syscall_kind::SENDFILE);

#[tracepoint]
pub fn loupe_data_exit(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    // Only the entry program of a traced thread leaves a pending call, so its absence is
    // the whole filter: every untraced syscall exit costs this one lookup.
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { PENDING_CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = PENDING_CALLS.remove(&pid_tgid);
    let moved = ret(ctx);
    if moved <= 0 || call.kind == syscall_kind::CONNECT {
        return;
    }
    let Some(cfg) = config() else {
        return;
    };
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let event: &mut DataEvent = unsafe { &mut *event };
    let dir = match call.kind {
        syscall_kind::READ | syscall_kind::READV | syscall_kind::RECVMSG => direction::INGRESS,
        _ => direction::EGRESS,
    };
    let mut cap = cfg.capture_bytes as u64;
    if cap > MAX_CAPTURE as u64 {
        cap = MAX_CAPTURE as u64;
    }
    let want = if (moved as u64) < cap {
        moved as u64
    } else {
        cap
    };
    let (captured, flags) = match call.kind {
        syscall_kind::READ | syscall_kind::WRITE => (copy_buf(event, call.ptr, want), 0),
        syscall_kind::READV | syscall_kind::WRITEV => {
            (copy_iov(event, call.ptr, call.count, want), 0)
        }
        syscall_kind::RECVMSG | syscall_kind::SENDMSG => {
            let (iov, iovlen) = msghdr_iov(call.ptr);
            (copy_iov(event, iov, iovlen, want), 0)
        }
        _ => (0, data_flags::SENDFILE),
    };
    event.header = DataEventHeader {
        kind: EventKind::Data as u8,
        direction: dir,
        flags,
        _pad: 0,
        tgid,
        tid,
        fd: call.fd,
        conn_id: call.conn_id,
        start_ns: call.start_ns,
        // SAFETY: the helper has no preconditions.
        end_ns: unsafe { bpf_ktime_get_ns() },
        total_len: moved as u64,
        captured_len: captured as u32,
        _pad2: 0,
    };
    if cfg.inject_traceparent != 0 && captured > 0 {
        // The context program reads the request from the scratch event, writes its own
        // record and then this one, in that order. It is a separate program so its
        // bounded scans do not count against this one's verifier budget. If the call
        // fails (not loaded), the data record is still written below.
        // SAFETY: the context program is a tracepoint program taking the same context.
        unsafe { DATA_CONTEXT.tail_call(ctx, 0) };
    }
    output_data(event);
}

/// Writes the assembled data event: its header and `captured_len` payload bytes.
#[inline(always)]
pub fn output_data(event: &DataEvent) {
    let len = size_of::<DataEventHeader>() + bounded(event.header.captured_len as usize);
    // SAFETY: DataEvent is plain bytes; the length is within it.
    let bytes: &[u8; size_of::<DataEvent>()] =
        unsafe { &*(event as *const DataEvent as *const [u8; size_of::<DataEvent>()]) };
    if len <= bytes.len() {
        output_bytes(&bytes[..len]);
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
    let offset = offset & (MAX_CAPTURE - 1);
    let len = bounded(len);
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

#[inline(always)]
fn msghdr_iov(msghdr: u64) -> (u64, u64) {
    // SAFETY: the helper checks the user address itself.
    let iov =
        unsafe { aya_ebpf::helpers::bpf_probe_read_user((msghdr + MSGHDR_IOV) as *const u64) };
    // SAFETY: as above.
    let len =
        unsafe { aya_ebpf::helpers::bpf_probe_read_user((msghdr + MSGHDR_IOVLEN) as *const u64) };
    (iov.unwrap_or(0), len.unwrap_or(0))
}

#[inline(always)]
fn copy_iov(event: &mut DataEvent, iov: u64, iovcnt: u64, want: u64) -> usize {
    let want = bounded(want as usize);
    let mut captured: usize = 0;
    for i in 0..MAX_IOV {
        if i as u64 >= iovcnt || captured >= want {
            break;
        }
        // SAFETY: the helper checks the user address itself.
        let Ok(entry) = (unsafe {
            aya_ebpf::helpers::bpf_probe_read_user((iov + i as u64 * 16) as *const [u64; 2])
        }) else {
            break;
        };
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
    }
    bounded(captured)
}
