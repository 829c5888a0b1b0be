//! Per-thread trace context for `--inject-traceparent`, learnt from the requests a thread
//! reads and forgotten when it writes the response.
//!
//! A thread that reads an HTTP request is taken to serve it until it writes a response:
//! true of thread-per-request servers. An event loop interleaves requests on one thread
//! and runs each step of a handler after the read that woke it, so the context is the
//! request the thread last read for: a request, or the answer to a call it made, whose
//! socket kept the context that call carried (an HTTP request, or, for a process marked
//! as an event loop, a call on a connection without HTTP). Requests the thread sends
//! join the trace (see `inject.rs`).
//!
//! A thread with no request of its own (a worker pool's, a Go runtime thread) takes the
//! context of its process's only request in flight, as the agent places such a call
//! (see [`process_context`]).

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use loupe_common::{
    DataEvent, EventKind, SPAN_ID_LEN, ServerContextEvent, TRACE_ID_LEN, ThreadContext,
    context_program, direction,
};

use crate::{
    data::{bounded, output_data},
    emit::{RingLevel, output},
    filter::{atomic_add, is_marked},
    head::{
        HeadBytes, HeadLines, MAX_LINES, MapBytes, NAME_WINDOW, TRACEPARENT, TRACEPARENT_BUF,
        TRACEPARENT_COPY, continues_method, find_lines, line_count, line_start, name_is,
        parse_traceparent, starts_with_method, starts_with_status_line,
    },
    maps::{
        CONTEXT_SCRATCH, DATA_CONTEXT, EVENT_LOOP_TGIDS, INJECTED_CONTEXTS, LIVE_CONTEXTS,
        LONE_FIRST_BYTES, PROCESS_CONTEXT, SCRATCH, THREAD_CONTEXT, config,
    },
};

/// W3C trace-flags for a trace loupe starts: sampled.
pub const FLAGS_SAMPLED: u8 = 1;

#[inline(always)]
pub fn random_trace_id() -> [u8; TRACE_ID_LEN] {
    let mut id = [0u8; TRACE_ID_LEN];
    for chunk in id.chunks_exact_mut(4) {
        // SAFETY: the helper has no preconditions.
        chunk.copy_from_slice(&unsafe { bpf_get_prandom_u32() }.to_le_bytes());
    }
    id[TRACE_ID_LEN - 1] |= (id[0] == 0 && id[1] == 0) as u8;
    id
}

/// A random span id; never all zero, which W3C reserves for "invalid".
#[inline(always)]
pub fn random_span_id() -> [u8; SPAN_ID_LEN] {
    let mut id = [0u8; SPAN_ID_LEN];
    for chunk in id.chunks_exact_mut(4) {
        // SAFETY: the helper has no preconditions.
        chunk.copy_from_slice(&unsafe { bpf_get_prandom_u32() }.to_le_bytes());
    }
    id[SPAN_ID_LEN - 1] |= (id[0] == 0) as u8;
    id
}

/// Tail-called by the data exit program while injection is on, with the data event
/// assembled in the per-CPU scratch: learns or drops the thread's context, then writes
/// the context record (if any) and the data record, in that order.
#[tracepoint]
pub fn loupe_data_context(ctx: TracePointContext) -> u32 {
    let Some((event, captured, sock)) = handed_over() else {
        return 0;
    };
    if event.header.direction == direction::INGRESS {
        if on_ingress(event, captured, sock) {
            // The request is learnt by a program of its own, so that this one's verifier
            // budget is not spent twice over the same scans. If the call fails (not
            // loaded), the data record is still written below, without a context.
            // SAFETY: that program is a tracepoint program taking the same context.
            unsafe { DATA_CONTEXT.tail_call(&ctx, context_program::CONTINUED) };
        }
    } else {
        on_egress(event, captured, sock);
    }
    // Read after this program's own record went in.
    output_data(event, &RingLevel::now());
    0
}

/// Tail-called by [`loupe_data_context`] for a read that finishes a request's method whose
/// first letter its socket's previous read took by itself: learns the request as that
/// program learns one read whole, then writes both records.
#[tracepoint]
pub fn loupe_data_context_continued(_ctx: TracePointContext) -> u32 {
    let Some((event, captured, sock)) = handed_over() else {
        return 0;
    };
    learn_request(event, captured, sock);
    output_data(event, &RingLevel::now());
    0
}

/// What the data exit program left in the per-CPU scratch for the context programs: the
/// data event, its captured length, and the `struct sock` of the call (0 when unknown).
#[inline(always)]
fn handed_over() -> Option<(&'static DataEvent, usize, u64)> {
    // SAFETY: per-CPU scratch, filled by the data exit program that handed over.
    let event: &DataEvent = unsafe { &*SCRATCH.get_ptr_mut(0)? };
    let captured = bounded(event.header.captured_len as usize);
    let sock = CONTEXT_SCRATCH
        .get_ptr_mut(0)
        // SAFETY: per-CPU scratch, written by the data exit program that handed over.
        .map_or(0, |scratch| unsafe { (*scratch).sock });
    Some((event, captured, sock))
}

/// Per-CPU working space for [`on_ingress`]: the data exit program has no stack left.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ContextScratch {
    pub lines: HeadLines,
    /// The incoming `traceparent` value, copied for parsing.
    pub raw: [u8; TRACEPARENT_BUF],
    pub event: ServerContextEvent,
    /// The context the request read gives its thread and its process.
    pub process: ProcessContext,
    /// The `struct sock` of the call being recorded (0 when unknown), set by the data exit
    /// program before it hands over.
    pub sock: u64,
}

/// Called for every captured read of a traced connection (socket `sock`) while injection
/// is on, before its data record is written: a request start gives the thread a new
/// context and the agent a [`ServerContextEvent`]; a response start, or an event loop's
/// read that starts no HTTP message, gives the thread back the context its call carried.
///
/// True when the read finishes a request's method whose first letter the socket's
/// previous read took by itself: the caller hands the request to
/// [`loupe_data_context_continued`].
#[inline(always)]
pub fn on_ingress(event: &DataEvent, captured: usize, sock: u64) -> bool {
    let bytes = MapBytes {
        buf: &event.data,
        len: captured,
    };
    if starts_with_status_line(&bytes) {
        resume_context(event.header.tid, sock);
        return false;
    }
    if !starts_with_method(&bytes) {
        if sock != 0 && continues_lone_first_byte(&bytes, event.header.total_len, sock) {
            return true;
        }
        // An answer on a connection without HTTP, still captured, may wake the handler
        // that called (see `inject::remember_call_context`).
        if is_marked(&EVENT_LOOP_TGIDS, event.header.tgid) {
            resume_context(event.header.tid, sock);
        }
        return false;
    }
    learn_request(event, captured, sock);
    false
}

/// Whether this read on `sock` (`moved` bytes), which starts no request, finishes the
/// method of one whose first letter the socket's previous read took by itself. A read of
/// one capital letter is kept for the next read to tell.
#[inline(always)]
fn continues_lone_first_byte<B: HeadBytes>(bytes: &B, moved: u64, sock: u64) -> bool {
    // SAFETY: plain lookup; the value is copied out at once.
    let pending = unsafe { LONE_FIRST_BYTES.get(&sock) }.copied();
    if pending.is_some() {
        let _ = LONE_FIRST_BYTES.remove(&sock);
    }
    if moved == 1 {
        if let Some(first) = bytes.byte(0).filter(u8::is_ascii_uppercase) {
            let _ = LONE_FIRST_BYTES.insert(&sock, &first, 0);
        }
        return false;
    }
    pending.is_some_and(|first| continues_method(first, bytes))
}

/// Process `tgid`'s thread read a request on `sock`: gives the thread and the process its
/// context, counts it in flight, and tells the agent the ids.
#[inline(always)]
fn learn_request(event: &DataEvent, captured: usize, sock: u64) {
    let bytes = MapBytes {
        buf: &event.data,
        len: captured,
    };
    let Some(scratch) = CONTEXT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let scratch = unsafe { &mut *scratch };
    let header = &event.header;
    let out = &mut scratch.event;
    out.kind = EventKind::ServerContext as u8;
    out.tgid = header.tgid;
    out.tid = header.tid;
    out.fd = header.fd;
    out.conn_id = header.conn_id;
    // SAFETY: the helper has no preconditions.
    out.ts_ns = unsafe { bpf_ktime_get_ns() };
    out.span_id = random_span_id();
    let incoming = find_incoming(
        &bytes,
        captured,
        &mut scratch.lines,
        &mut scratch.raw,
        &mut out.trace_id,
        &mut out.parent_span_id,
        &mut out.trace_flags,
    );
    if !incoming {
        out.trace_id = random_trace_id();
        out.parent_span_id = [0; SPAN_ID_LEN];
        out.trace_flags = FLAGS_SAMPLED;
    }
    let context = &mut scratch.process.latest;
    context.trace_id = out.trace_id;
    context.span_id = out.span_id;
    context.trace_flags = out.trace_flags;
    context.tid = header.tid;
    context.server_sock = sock;
    let was_live = is_in_flight(sock);
    if sock != 0 {
        let live = LiveRequest {
            span_id: out.span_id,
            tgid: header.tgid,
            _pad: 0,
        };
        let _ = LIVE_CONTEXTS.insert(&sock, &live, 0);
    }
    // An LRU map: contexts of threads that died serving a request age out.
    let _ = THREAD_CONTEXT.insert(&header.tid, &scratch.process.latest, 0);
    start_in_flight(header.tgid, &mut scratch.process, sock != 0 && !was_live);
    output(&scratch.event);
}

/// What the kernel keeps of a process's requests (by tgid, in [`PROCESS_CONTEXT`]): the
/// context of the latest one read, and how many are in flight.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessContext {
    pub latest: ThreadContext,
    /// The process's requests read on a known socket whose response has not started nor
    /// their connection closed, changed only atomically (see [`end_in_flight`]). A close
    /// loupe missed or an entry of `LIVE_CONTEXTS` that aged out leaves it too high,
    /// which stops [`process_context`] from guessing. It comes out too low only when this
    /// entry aged out while requests were in flight.
    pub in_flight: u64,
}
const _: () = assert!(core::mem::size_of::<ProcessContext>() == 48);

/// A request in flight, by the socket it was read on (a value of [`LIVE_CONTEXTS`]): its
/// span id, and the process that read it, whose count it is in, whichever process then
/// answers it or closes its socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LiveRequest {
    pub span_id: [u8; SPAN_ID_LEN],
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LiveRequest>() == 16);

/// Process `tgid` read a request whose context is `process.latest`; `counted` when it
/// is a request in flight that [`end_in_flight`] will count off.
#[inline(always)]
fn start_in_flight(tgid: u32, process: &mut ProcessContext, counted: bool) {
    let kept = match PROCESS_CONTEXT.get_ptr_mut(&tgid) {
        Some(kept) => {
            // SAFETY: a map value, valid for this program run. Written in place: a
            // worker reading it on another CPU at this instant can see two requests' ids
            // mixed, and only while this process has two requests in flight, when it
            // falls back to a new trace anyway.
            unsafe { (*kept).latest = process.latest };
            kept
        }
        None => {
            process.in_flight = 0;
            let _ = PROCESS_CONTEXT.insert(&tgid, process, 0);
            // Looked up again only for a process's first request.
            match PROCESS_CONTEXT.get_ptr_mut(&tgid) {
                Some(kept) => kept,
                None => return,
            }
        }
    };
    if counted {
        // SAFETY: as above; the count is only changed atomically.
        unsafe { atomic_add(&raw mut (*kept).in_flight, 1) };
    }
}

/// The request read on `sock` is no longer in flight: its response started, or its
/// connection closed. It is counted off the process that read it.
#[inline(always)]
pub fn end_in_flight(sock: u64) {
    if sock == 0 {
        return;
    }
    // SAFETY: plain lookup; the value is copied out at once.
    let Some(live) = (unsafe { LIVE_CONTEXTS.get(&sock) }).copied() else {
        return;
    };
    // Of two ends racing, only the one that removes the entry counts.
    if LIVE_CONTEXTS.remove(&sock).is_err() {
        return;
    }
    let Some(kept) = PROCESS_CONTEXT.get_ptr_mut(&live.tgid) else {
        return;
    };
    // SAFETY: a map value, valid for this program run, only changed atomically. A count
    // already at 0 (its entry made after the request was read) is left alone; two ends
    // racing past this check wrap it to its highest value, which stops the guessing.
    unsafe {
        let count = &raw mut (*kept).in_flight;
        if core::ptr::read_volatile(count) != 0 {
            atomic_add(count, u64::MAX);
        }
    }
}

/// Whether a request read on `sock` is in flight.
#[inline(always)]
pub fn is_in_flight(sock: u64) -> bool {
    // SAFETY: plain lookup; only whether it exists is used.
    sock != 0 && unsafe { LIVE_CONTEXTS.get(&sock) }.is_some()
}

/// The context of `tgid`'s only request in flight, for thread `tid` which has none of its
/// own: a worker that a request's handler handed its call to. None while several are in
/// flight, since nothing tells which one the worker serves; when the one in flight is not
/// the latest read; and for the thread that read it, which no longer serves it (it wrote
/// the response, or took a context without a span back).
#[inline(always)]
pub fn process_context(tgid: u32, tid: u32) -> Option<*const ThreadContext> {
    let process = PROCESS_CONTEXT.get_ptr(&tgid)?;
    // SAFETY: a map value, valid for this program run; read in place.
    let latest = unsafe { &raw const (*process).latest };
    // SAFETY: as above.
    let only = unsafe { core::ptr::read_volatile(&raw const (*process).in_flight) } == 1;
    // SAFETY: as above.
    (only && unsafe { (*latest).tid } != tid && is_live(unsafe { &*latest })).then_some(latest)
}

/// Thread `tid` read the start of a response on `sock`, or an answer on a connection
/// without HTTP: the context its call carried, if loupe kept one, is the thread's again,
/// once, when this thread read the request that context belongs to and that request is
/// still in flight. A call made outside any request (a context without a span) leaves
/// the thread serving none.
#[inline(always)]
pub fn resume_context(tid: u32, sock: u64) {
    let offset = config().offsets.sock_cookie as u64;
    if sock == 0 || offset == 0 {
        return;
    }
    // SAFETY: the helper checks the kernel address itself.
    let Ok(cookie) = (unsafe { bpf_probe_read_kernel((sock + offset) as *const u64) }) else {
        return;
    };
    // SAFETY: plain lookup; the value is copied out at once.
    let Some(context) = (unsafe { INJECTED_CONTEXTS.get(&cookie) }).copied() else {
        return;
    };
    let _ = INJECTED_CONTEXTS.remove(&cookie);
    if context.tid != tid {
        return;
    }
    if context.span_id == [0; SPAN_ID_LEN] {
        let _ = THREAD_CONTEXT.remove(&tid);
        return;
    }
    if is_live(&context) {
        let _ = THREAD_CONTEXT.insert(&tid, &context, 0);
    }
}

/// Whether the request `context` belongs to is still in flight: read on a known socket,
/// whose response has not been written yet.
#[inline(always)]
pub fn is_live(context: &ThreadContext) -> bool {
    // SAFETY: plain lookup; the value is compared at once.
    context.server_sock != 0
        && unsafe { LIVE_CONTEXTS.get(&context.server_sock) }
            .is_some_and(|live| live.span_id == context.span_id)
}

/// Called for every captured write of a traced connection while injection is on: a
/// response start ends the request the thread was serving.
#[inline(always)]
pub fn on_egress(event: &DataEvent, captured: usize, sock: u64) {
    let bytes = MapBytes {
        buf: &event.data,
        len: captured,
    };
    if starts_with_status_line(&bytes) {
        let _ = THREAD_CONTEXT.remove(&event.header.tid);
        end_in_flight(sock);
    }
}

/// Looks for the first `traceparent` header of the captured head and parses it into the
/// outputs; false when there is none or it is not valid.
#[inline(always)]
fn find_incoming<B: HeadBytes>(
    bytes: &B,
    captured: usize,
    lines: &mut HeadLines,
    raw: &mut [u8; TRACEPARENT_BUF],
    trace_id: &mut [u8; TRACE_ID_LEN],
    parent: &mut [u8; SPAN_ID_LEN],
    flags: &mut u8,
) -> bool {
    let lines: *mut HeadLines = lines;
    find_lines(bytes, captured, lines);
    let count = line_count(lines);
    for k in 1..MAX_LINES {
        if k >= count {
            break;
        }
        let start = line_start(lines, k);
        let Some(name) = bytes.array::<NAME_WINDOW>(start) else {
            continue;
        };
        if name_is(&name, TRACEPARENT) {
            return bytes.copy_into(start + TRACEPARENT.len(), TRACEPARENT_COPY, raw)
                && parse_traceparent(raw, trace_id, parent, flags);
        }
    }
    false
}
