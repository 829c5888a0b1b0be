//! `--inject-traceparent`: adds a W3C `traceparent` header to the plain HTTP/1.x requests
//! traced processes send, so the receiving side continues the trace.
//!
//! A `sock_ops` program on the cgroup v2 root marks TCP sockets that traced processes
//! connect (the connect callback runs in the connecting task) and adds them to a socket
//! map once established; an `sk_msg` program on that map then sees every write before
//! TCP does. It follows request boundaries per socket (head, then `Content-Length` body
//! bytes) and, at the start of a request whose whole head it can see and which has no
//! `traceparent`, inserts one right after the request line. Anything it cannot follow
//! for sure (a head split across writes or longer than the window, chunked or pipelined
//! bodies) is sent untouched and counted; the connection is then left alone for good.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_TCP_CONNECT_CB, sk_action,
    },
    helpers::generated::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_msg_pop_data,
        bpf_msg_pull_data, bpf_msg_push_data, bpf_sk_storage_get,
    },
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use loupe_common::{
    AF_INET, AF_INET6, ClientContextEvent, ConnTuple, EventKind, ProbeConfig, SPAN_ID_LEN,
    TRACE_ID_LEN, ThreadContext, counter,
};

use crate::{
    context::{FLAGS_SAMPLED, random_span_id, random_trace_id},
    emit::output,
    filter::traced_current,
    head::{
        HEAD_WINDOW, HeadLines, MAX_LINES, PacketBytes, find_lines, head_end, line_count,
        request_line_end, starts_with_method, write_hex,
    },
    maps::{
        INJECT_SOCKETS, INJECTED_CONTEXTS, SOCKET_INJECT, THREAD_CONTEXT, TRACED_PORTS, config,
        count,
    },
};

mod call_context;
mod header_scan;

use call_context::{call_context, forget_context, remember_call_context};
use header_scan::{fact, scan_headers};

/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n`
const HEADER_LEN: usize = 70;
const HEADER_PREFIX: &[u8; 16] = b"traceparent: 00-";

/// Where a socket's next write stands.
mod mode {
    /// The next write starts a request.
    pub const IDLE: u32 = 0;
    /// The next write continues the current request's body.
    pub const BODY: u32 = 1;
    /// HTTP, but request boundaries were lost: nothing is touched any more.
    pub const UNSYNCED: u32 = 2;
    /// Not HTTP/1.x requests: nothing is looked at any more.
    pub const NOT_HTTP: u32 = 3;
}

/// Per-socket state (in socket-local storage).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SocketInjectState {
    /// Body bytes of the current request still to come, in mode BODY.
    pub body_left: u64,
    /// `Content-Length` of the head being looked at.
    pub content_length: u64,
    pub mode: u32,
    /// Bits of [`fact`] for the head being looked at.
    pub facts: u32,
    /// Scratch for scanning the head: the socket lock serialises writes to one socket.
    pub lines: HeadLines,
    /// The socket's cookie, set once established: where [`INJECTED_CONTEXTS`] keeps the
    /// context of its latest request.
    pub cookie: u64,
    /// The context of the request the connecting thread was serving when it connected,
    /// for the socket's first write (see [`call_context`]).
    pub opener: ThreadContext,
    /// 1 from connect until the first request starts when there is an `opener`.
    pub opener_unused: u32,
}

const EMPTY_STATE: SocketInjectState = SocketInjectState {
    body_left: 0,
    content_length: 0,
    mode: mode::IDLE,
    facts: 0,
    lines: HeadLines {
        ends: [0; MAX_LINES],
        count: 0,
        head_end: 0,
    },
    cookie: 0,
    opener: ThreadContext {
        trace_id: [0; TRACE_ID_LEN],
        span_id: [0; SPAN_ID_LEN],
        trace_flags: 0,
        _pad: [0; 3],
        tid: 0,
        server_sock: 0,
    },
    opener_unused: 0,
};

fn storage_map() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&SOCKET_INJECT).cast_mut().cast()
}

#[inline(always)]
fn port_selected(cfg: &ProbeConfig, local: u16, remote: u16) -> bool {
    if cfg.filter_ports == 0 {
        return true;
    }
    // SAFETY: values are only checked for presence.
    unsafe { TRACED_PORTS.get(&local).is_some() || TRACED_PORTS.get(&remote).is_some() }
}

#[sock_ops]
pub fn loupe_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => mark_if_traced(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => watch_if_marked(&ctx),
        _ => {}
    }
    1
}

/// At connect, in the connecting task: give sockets of traced processes a state, with the
/// context of the request the thread is serving for the socket's first write (see
/// [`call_context`]).
#[inline(always)]
fn mark_if_traced(ctx: &SockOpsContext) {
    let Some((_, _, _, cfg)) = traced_current() else {
        return;
    };
    if cfg.inject_traceparent == 0 {
        return;
    }
    let remote = u32::from_be(ctx.remote_port()) as u16;
    if !port_selected(cfg, ctx.local_port() as u16, remote) {
        return;
    }
    // SAFETY: reading a context field.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let mut init = EMPTY_STATE;
    // SAFETY: the map is socket storage of this value type; `init` is a full value.
    let state = unsafe {
        bpf_sk_storage_get(
            storage_map(),
            sk.cast(),
            (&raw mut init).cast(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    } as *mut SocketInjectState;
    if state.is_null() {
        return;
    }
    // SAFETY: the helper has no preconditions.
    let tid = unsafe { bpf_get_current_pid_tgid() } as u32;
    if let Some(context) = THREAD_CONTEXT.get_ptr(&tid) {
        // SAFETY: this socket's storage, not yet written by anything else (the socket is
        // not connected yet); the context is a map value, valid for this program run.
        unsafe {
            (*state).opener = *context;
            (*state).opener_unused = 1;
        }
    }
}

/// Once established (often in softirq, where the current task is unrelated): sockets
/// marked at connect go into the socket map, which puts the `sk_msg` program on them.
#[inline(always)]
fn watch_if_marked(ctx: &SockOpsContext) {
    // SAFETY: reading a context field.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    // SAFETY: lookup only, no value passed.
    let state = unsafe { bpf_sk_storage_get(storage_map(), sk.cast(), core::ptr::null_mut(), 0) };
    if state.is_null() {
        return;
    }
    // SAFETY: the helper takes the sock_ops context.
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: this socket's storage; nothing writes to the socket before it is established.
    unsafe { (*(state as *mut SocketInjectState)).cookie = cookie };
    // SAFETY: the context pointer is valid for this program run.
    if INJECT_SOCKETS
        .update(&mut cookie, unsafe { &mut *ctx.ops }, BPF_ANY as u64)
        .is_err()
    {
        count(counter::INJECT_SOCKET_FAILED);
    }
}

#[sk_msg]
pub fn loupe_inject(ctx: SkMsgContext) -> u32 {
    if on_message(&ctx) {
        sk_action::SK_PASS
    } else {
        sk_action::SK_DROP
    }
}

/// Counts a request left alone because it could not be checked, when it is a traced
/// process's (the counter is about traced traffic).
#[inline(always)]
fn count_unsafe() {
    if traced_current().is_some() {
        count(counter::INJECT_SKIPPED_UNSAFE);
    }
}

#[inline(always)]
fn set_mode(state: *mut SocketInjectState, value: u32) {
    // SAFETY: `state` is this socket's storage, serialised by the socket lock.
    unsafe { (*state).mode = value };
}

/// Handles one write; returns false only when the message must be dropped because
/// inserted bytes could not be taken out again (never sent half-written).
///
/// Request boundaries are followed whoever writes: a socket marked by a traced process
/// may be written by another (one it handed the socket to, or itself once no longer
/// traced), and skipping those writes would put the next header in the wrong place.
/// Only the insertion is for traced processes.
#[inline(always)]
fn on_message(ctx: &SkMsgContext) -> bool {
    let cfg = config();
    if cfg.inject_traceparent == 0 {
        return true;
    }
    // SAFETY: reading a context field.
    let sk = unsafe { (*ctx.msg).__bindgen_anon_3.sk };
    if sk.is_null() {
        return true;
    }
    // SAFETY: lookup only, no value passed.
    let state = unsafe { bpf_sk_storage_get(storage_map(), sk.cast(), core::ptr::null_mut(), 0) }
        as *mut SocketInjectState;
    if state.is_null() {
        return true;
    }
    let size = ctx.size() as u64;
    if size == 0 {
        return true;
    }
    // SAFETY: socket storage, serialised by the socket lock.
    let (current, body_left, cookie) =
        unsafe { ((*state).mode, (*state).body_left, (*state).cookie) };
    match current {
        mode::IDLE => {}
        mode::BODY => {
            if size < body_left {
                // SAFETY: as above.
                unsafe { (*state).body_left = body_left - size };
            } else if size == body_left {
                // SAFETY: as above.
                unsafe { (*state).body_left = 0 };
                set_mode(state, mode::IDLE);
            } else {
                // The body ends inside this write and another request follows in it.
                set_mode(state, mode::UNSYNCED);
                count_unsafe();
            }
            return true;
        }
        mode::UNSYNCED => {
            let first = PacketBytes {
                data: ctx.data(),
                end: ctx.data_end(),
            };
            if starts_with_method(&first) {
                count_unsafe();
                forget_context(cookie);
            }
            return true;
        }
        mode::NOT_HTTP => {
            remember_call_context(state, false, cookie);
            return true;
        }
        _ => return true,
    }
    // A new request: what the last one carried is not its context, unless it gets one.
    forget_context(cookie);
    // SAFETY (both): as above.
    let first = unsafe { (*state).opener_unused } != 0;
    unsafe { (*state).opener_unused = 0 };

    let window = if size < HEAD_WINDOW as u64 {
        size as u32
    } else {
        HEAD_WINDOW as u32
    };
    // SAFETY: the message pointer is the program's context.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, window, 0) } != 0 {
        set_mode(state, mode::UNSYNCED);
        count(counter::INJECT_FAILED);
        return true;
    }
    let bytes = PacketBytes {
        data: ctx.data(),
        end: ctx.data_end(),
    };
    if !starts_with_method(&bytes) {
        set_mode(state, mode::NOT_HTTP);
        remember_call_context(state, first, cookie);
        return true;
    }
    // SAFETY: as above; the lines live in the socket's storage.
    let lines = unsafe { &raw mut (*state).lines };
    find_lines(&bytes, window as usize, lines);
    if line_count(lines) == 0 {
        // Not even the request line is complete: split across writes, or longer than
        // the window.
        set_mode(state, mode::UNSYNCED);
        count_unsafe();
        return true;
    }
    let Some(insert_at) = request_line_end(&bytes, lines) else {
        // A complete first line that is no HTTP/1.x request line ("GET key" in some
        // text protocol, HTTP/2's preface): not HTTP/1.x, not counted.
        set_mode(state, mode::NOT_HTTP);
        remember_call_context(state, first, cookie);
        return true;
    };
    let end_of_head = head_end(lines);
    if end_of_head == 0 {
        // Head longer than the window, or split across writes.
        set_mode(state, mode::UNSYNCED);
        count_unsafe();
        return true;
    }
    scan_headers(&bytes, state);
    // SAFETY: as above.
    let (facts, content_length) = unsafe {
        (
            read_volatile(&raw const (*state).facts),
            read_volatile(&raw const (*state).content_length),
        )
    };
    let malformed = facts & fact::MALFORMED != 0;
    // Where the next request starts, relative to this write.
    let next = end_of_head as u64 + content_length;
    let chunked = facts & fact::CHUNKED != 0;
    let after = if malformed || chunked {
        mode::UNSYNCED
    } else if next < size {
        // Another request follows in this same write (pipelining): it goes out
        // untouched, and where the ones after it start is no longer known.
        count_unsafe();
        mode::UNSYNCED
    } else if next > size {
        // SAFETY: as above.
        unsafe { (*state).body_left = next - size };
        mode::BODY
    } else {
        mode::IDLE
    };
    set_mode(state, after);
    if traced_current().is_none() {
        return true;
    }
    if malformed {
        count(counter::INJECT_SKIPPED_UNSAFE);
        return true;
    }
    // SAFETY: the helper has no preconditions.
    let pid_tgid = unsafe { bpf_get_current_pid_tgid() };
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if facts & fact::TRACEPARENT != 0 {
        count(counter::INJECT_SKIPPED_PRESENT);
        return true;
    }
    insert_header(
        ctx,
        insert_at as u32,
        end_of_head as u32,
        (tgid, tid),
        (state, first, cookie),
    )
}

/// The header line loupe inserts, CRLF included.
#[inline(always)]
fn header_line(
    trace_id: &[u8; TRACE_ID_LEN],
    span_id: &[u8; SPAN_ID_LEN],
    trace_flags: u8,
) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..16].copy_from_slice(HEADER_PREFIX);
    write_hex::<TRACE_ID_LEN>(&mut header, 16, trace_id);
    header[48] = b'-';
    write_hex::<SPAN_ID_LEN>(&mut header, 49, span_id);
    header[65] = b'-';
    write_hex::<1>(&mut header, 66, &[trace_flags]);
    header[68] = b'\r';
    header[69] = b'\n';
    header
}

/// Where the `HEADER_LEN` bytes just inserted at `at` can be written, once they are in
/// linear memory.
///
/// Inserting splits the message's first piece in three, and TCP would send each piece
/// as its own segment (a request in three packets). So the whole head, header included,
/// is first made one piece again; if that copy fails, only the inserted bytes are made
/// reachable and the request goes out in pieces, still intact.
#[inline(always)]
fn header_bytes(ctx: &SkMsgContext, at: u32, head_len: u32) -> Option<usize> {
    let at = at as usize & (HEAD_WINDOW - 1);
    // SAFETY (both pulls): the message pointer is the program's context.
    let whole_head = unsafe { bpf_msg_pull_data(ctx.msg, 0, head_len + HEADER_LEN as u32, 0) } == 0;
    let target = if whole_head {
        ctx.data() + at
    } else if unsafe { bpf_msg_pull_data(ctx.msg, at as u32, (at + HEADER_LEN) as u32, 0) } == 0 {
        ctx.data()
    } else {
        return None;
    };
    if target + HEADER_LEN > ctx.data_end() {
        return None;
    }
    Some(target)
}

/// Inserts `traceparent` at `at` (just past the request line) and reports the ids. The
/// socket (`cookie`) keeps the context it carried, which its response gives back to the
/// thread that reads it (see `context::on_ingress`).
#[inline(always)]
fn insert_header(
    ctx: &SkMsgContext,
    at: u32,
    head_len: u32,
    (tgid, tid): (u32, u32),
    (state, first, cookie): (*mut SocketInjectState, bool, u64),
) -> bool {
    // Used in place, not copied: this program's stack is near the limit older kernels
    // count (512 bytes, each frame rounded up).
    let context = call_context(state, first, tgid, tid);
    // SAFETY: a map value or this socket's storage, valid for this program run.
    let (trace_id, parent_span_id, trace_flags) = match context.map(|c| unsafe { &*c }) {
        Some(c) => {
            if cookie != 0 {
                let _ = INJECTED_CONTEXTS.insert(&cookie, c, 0);
            }
            (c.trace_id, c.span_id, c.trace_flags)
        }
        None => (random_trace_id(), [0u8; SPAN_ID_LEN], FLAGS_SAMPLED),
    };
    let span_id = random_span_id();
    let header = header_line(&trace_id, &span_id, trace_flags);

    // SAFETY: the message pointer is the program's context.
    if unsafe { bpf_msg_push_data(ctx.msg, at, HEADER_LEN as u32, 0) } != 0 {
        count(counter::INJECT_FAILED);
        return true;
    }
    let Some(target) = header_bytes(ctx, at, head_len) else {
        count(counter::INJECT_FAILED);
        // SAFETY: removes exactly what was inserted.
        return unsafe { bpf_msg_pop_data(ctx.msg, at, HEADER_LEN as u32, 0) } == 0;
    };
    for (j, &b) in header.iter().enumerate() {
        // SAFETY: target + j < target + HEADER_LEN <= data_end, checked by header_bytes.
        unsafe { *((target + j) as *mut u8) = b };
    }
    count(counter::INJECTED);
    output(&ClientContextEvent {
        kind: EventKind::ClientContext as u8,
        trace_flags,
        _pad: [0; 2],
        tgid,
        tid,
        _pad2: 0,
        // SAFETY: the helper has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        trace_id,
        span_id,
        parent_span_id,
        tuple: message_tuple(ctx),
    });
    true
}

#[inline(always)]
fn message_tuple(ctx: &SkMsgContext) -> ConnTuple {
    // SAFETY: reading context fields.
    let md = unsafe { &*ctx.msg };
    let family = md.family as u16;
    let mut tuple = ConnTuple {
        family,
        local_port: md.local_port as u16,
        remote_port: u32::from_be(md.remote_port) as u16,
        ..ConnTuple::default()
    };
    if family == AF_INET {
        tuple.local_addr[..4].copy_from_slice(&md.local_ip4.to_ne_bytes());
        tuple.remote_addr[..4].copy_from_slice(&md.remote_ip4.to_ne_bytes());
    } else if family == AF_INET6 {
        for k in 0..4 {
            tuple.local_addr[4 * k..4 * k + 4].copy_from_slice(&md.local_ip6[k].to_ne_bytes());
            tuple.remote_addr[4 * k..4 * k + 4].copy_from_slice(&md.remote_ip6[k].to_ne_bytes());
        }
    }
    tuple
}

#[cfg(test)]
mod tests;
