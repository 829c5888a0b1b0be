//! The `sk_msg` program's second pass over a request head: which headers decide whether
//! and where `traceparent` can go.

use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use super::SocketInjectState;
use crate::head::{
    CONTENT_LENGTH, HeadBytes, MAX_LINES, NAME_WINDOW, PacketBytes, TRACEPARENT, TRANSFER_ENCODING,
    line_count, line_start, name_is, parse_decimal, repeat,
};

/// Bits of [`SocketInjectState::facts`]: what the head being looked at contains.
pub(super) mod fact {
    pub const TRACEPARENT: u32 = 1;
    pub const LENGTH: u32 = 2;
    pub const CHUNKED: u32 = 4;
    pub const MALFORMED: u32 = 8;
}

/// What one step of [`scan_headers`] works on; lives on the caller's stack.
#[repr(C)]
struct HeaderScan<'a> {
    bytes: &'a PacketBytes,
    state: *mut SocketInjectState,
}

/// Pass two over the header lines found by pass one, recording in the socket's state
/// whether the head has `traceparent`, its `Content-Length` and whether the body is
/// chunked. Runs under `bpf_loop` so the verifier checks one line's work, not each.
#[inline(always)]
pub(super) fn scan_headers(bytes: &PacketBytes, state: *mut SocketInjectState) {
    // SAFETY: socket storage, serialised by the socket lock.
    let lines = unsafe {
        write_volatile(&raw mut (*state).facts, 0);
        write_volatile(&raw mut (*state).content_length, 0);
        &raw const (*state).lines
    };
    let header_lines = line_count(lines).saturating_sub(1);
    let mut scan = HeaderScan { bytes, state };
    // SAFETY: the step reads `scan` only, which outlives the loop.
    unsafe { repeat(header_lines as u32, header_step, (&raw mut scan).cast()) };
}

/// Looks at header line `index + 1`; returns 1 to stop the loop.
#[inline(never)]
extern "C" fn header_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the HeaderScan passed to bpf_loop, alive for the whole loop.
    let scan = unsafe { &*(ctx as *const HeaderScan<'_>) };
    let state = scan.state;
    // SAFETY (state accesses below): socket storage, serialised by the socket lock;
    // volatile keeps the facts in memory rather than in registers the verifier tracks.
    let lines = unsafe { &raw const (*state).lines };
    let k = (index as usize + 1) & (MAX_LINES - 1);
    if k == 0 || k >= line_count(lines) {
        return 1;
    }
    let start = line_start(lines, k);
    // A head line is followed at least by the blank line's CRLF, so any line that could
    // be one of these headers, even with a short or empty value, has the bytes read
    // here: `traceparent:` needs 12 (any traceparent counts, valid or not), the two
    // others 18 at most.
    let Some(short) = scan.bytes.array::<{ TRACEPARENT.len() }>(start) else {
        return 0;
    };
    // SAFETY: see above.
    let facts = unsafe { read_volatile(&raw const (*state).facts) };
    if name_is(&short, TRACEPARENT) {
        // SAFETY: see above.
        unsafe { write_volatile(&raw mut (*state).facts, facts | fact::TRACEPARENT) };
        return 0;
    }
    let Some(name) = scan.bytes.array::<NAME_WINDOW>(start) else {
        return 0;
    };
    let found = if name_is(&name, CONTENT_LENGTH) {
        match parse_decimal(scan.bytes, start + CONTENT_LENGTH.len()) {
            Some(value) if facts & fact::LENGTH == 0 => {
                // SAFETY: see above.
                unsafe { write_volatile(&raw mut (*state).content_length, value) };
                fact::LENGTH
            }
            // A second Content-Length, or one that is not a number.
            _ => fact::LENGTH | fact::MALFORMED,
        }
    } else if name_is(&name, TRANSFER_ENCODING) {
        fact::CHUNKED
    } else {
        0
    };
    // SAFETY: see above.
    unsafe { write_volatile(&raw mut (*state).facts, facts | found) };
    0
}
