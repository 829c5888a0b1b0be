//! Bounded scans over the start of an HTTP/1.x request, shared by the code that learns a
//! thread's trace context from the requests it reads and the program that adds
//! `traceparent` to the requests it sends.
//!
//! The scans are shaped for the verifier. Pass one ([`find_lines`]) runs under the
//! `bpf_loop` helper, eight bytes a step, and writes the offset of every line end to
//! memory (a map value, never registers): the verifier checks one step, whatever the
//! window. Pass two visits at most [`MAX_LINES`] lines, reading their starts back from
//! memory as unknown values, so no state that differs between paths is carried from one
//! line to the next. Name comparisons fold every byte into one difference and branch
//! once.

use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

/// A step of a [`repeat`] loop: gets the iteration number and the context, returns 1
/// to stop.
pub type Step = extern "C" fn(u64, *mut c_void) -> i64;

/// Calls `step` for 0..`count` until it returns non-zero, under the `bpf_loop` helper.
///
/// # Safety
///
/// `ctx` must be what `step` expects, alive for the whole loop.
#[cfg(not(test))]
#[inline(always)]
pub unsafe fn repeat(count: u32, step: Step, ctx: *mut c_void) {
    // SAFETY: forwarded to the caller; the helper calls `step` with the same contract.
    unsafe { aya_ebpf::helpers::generated::bpf_loop(count, step as *mut c_void, ctx, 0) };
}

/// Host build (unit tests): the same loop, without the helper.
///
/// # Safety
///
/// As the kernel version.
#[cfg(test)]
pub unsafe fn repeat(count: u32, step: Step, ctx: *mut c_void) {
    for i in 0..count {
        if step(u64::from(i), ctx) != 0 {
            break;
        }
    }
}

/// Bytes of a request head looked at. A head that does not end within it is left alone.
pub const HEAD_WINDOW: usize = 4096;
/// Offsets are masked with this; buffers read through [`MapBytes`] hold at least twice
/// the window so an offset and a short read after it stay in bounds.
pub const OFFSET_MASK: usize = HEAD_WINDOW * 2 - 1;
/// Lines of a head (request line included) looked at. A power of two.
pub const MAX_LINES: usize = 32;

/// Line ends found by [`find_lines`]. Lives in a map value so the verifier treats what
/// is read back as unknown rather than tracking every possible offset.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeadLines {
    /// Offset of each `\n`, in order.
    pub ends: [u16; MAX_LINES],
    pub count: u32,
    /// Offset just past the blank line that ends the head; 0 until found.
    pub head_end: u32,
}

/// Where the bytes of a head are read from.
pub trait HeadBytes {
    /// The byte at `at`, or `None` past the end.
    fn byte(&self, at: usize) -> Option<u8>;
    /// `N` bytes from `at`, or `None` when fewer are available.
    fn array<const N: usize>(&self, at: usize) -> Option<[u8; N]>;
    /// Copies `n` bytes from `at` to the start of `out` (which may be map memory, to
    /// spare the stack); false when fewer are available.
    fn copy_into<const M: usize>(&self, at: usize, n: usize, out: &mut [u8; M]) -> bool {
        for (j, slot) in out.iter_mut().enumerate() {
            if j >= n {
                break;
            }
            match self.byte(at + j) {
                Some(b) => *slot = b,
                None => return false,
            }
        }
        true
    }
}

/// A buffer in a map value (a captured data event), `len` bytes long.
pub struct MapBytes<'a, const N: usize> {
    pub buf: &'a [u8; N],
    pub len: usize,
}

impl<const N: usize> HeadBytes for MapBytes<'_, N> {
    #[inline(always)]
    fn byte(&self, at: usize) -> Option<u8> {
        if at >= self.len || at >= N {
            return None;
        }
        Some(self.buf[at & OFFSET_MASK & (N - 1)])
    }

    #[inline(always)]
    fn array<const M: usize>(&self, at: usize) -> Option<[u8; M]> {
        // Checked before masking, so an offset past the window never wraps around; the
        // mask is for the verifier (the check makes it a no-op).
        if at + M > self.len {
            return None;
        }
        let at = at & (HEAD_WINDOW * 2 - 1);
        let mut out = [0u8; M];
        for (j, slot) in out.iter_mut().enumerate() {
            *slot = self.buf[(at + j) & OFFSET_MASK & (N - 1)];
        }
        Some(out)
    }

    #[inline(always)]
    fn copy_into<const M: usize>(&self, at: usize, n: usize, out: &mut [u8; M]) -> bool {
        // One bounds check for the whole copy: fewer paths for the verifier. As in
        // `array`, checked before masking.
        if n > M || at + n > self.len {
            return false;
        }
        let at = at & (HEAD_WINDOW * 2 - 1);
        for (j, slot) in out.iter_mut().enumerate() {
            if j < n {
                *slot = self.buf[(at + j) & OFFSET_MASK & (N - 1)];
            }
        }
        true
    }
}

/// Linear message data (`sk_msg` after `bpf_msg_pull_data`): every read is checked
/// against the end pointer, as the verifier requires for packet memory.
pub struct PacketBytes {
    pub data: usize,
    pub end: usize,
}

/// Hides a value from the optimiser. Otherwise it folds `(x - 11) & mask`, when it can
/// prove the mask redundant, into a packet pointer with a negative constant offset,
/// which the verifier rejects even though the sum is in bounds.
#[inline(always)]
fn opaque(value: usize) -> usize {
    // SAFETY: reading a local through a valid reference.
    unsafe { read_volatile(&value) }
}

impl HeadBytes for PacketBytes {
    #[inline(always)]
    fn byte(&self, at: usize) -> Option<u8> {
        let p = self.data + (opaque(at) & OFFSET_MASK);
        if p + 1 > self.end {
            return None;
        }
        // SAFETY: p is inside [data, end), checked just above.
        Some(unsafe { *(p as *const u8) })
    }

    #[inline(always)]
    fn array<const M: usize>(&self, at: usize) -> Option<[u8; M]> {
        let p = self.data + (opaque(at) & OFFSET_MASK);
        if p + M > self.end {
            return None;
        }
        let mut out = [0u8; M];
        for (j, slot) in out.iter_mut().enumerate() {
            // SAFETY: p + j < p + M <= end, checked above.
            *slot = unsafe { *((p + j) as *const u8) };
        }
        Some(out)
    }
}

/// The request methods loupe recognises, each with its trailing space.
const METHODS: [&[u8]; 7] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"PATCH ",
    b"OPTIONS ",
];

/// True when the bytes start with a known method and a space.
#[inline(always)]
pub fn starts_with_method<B: HeadBytes>(bytes: &B) -> bool {
    match bytes
        .array::<8>(0)
        .or_else(|| short_prefix::<B, 8>(bytes, 4))
    {
        Some(first) => is_method(&first),
        None => false,
    }
}

/// True when `first`, a byte read by itself, and then the bytes start with a known
/// method and a space: a server that reads one byte ahead on an idle connection (Go's
/// net/http) takes a request's first letter in one read and the rest in the next.
#[inline(always)]
pub fn continues_method<B: HeadBytes>(first: u8, bytes: &B) -> bool {
    let Some(rest) = bytes
        .array::<7>(0)
        .or_else(|| short_prefix::<B, 7>(bytes, 3))
    else {
        return false;
    };
    let mut window = [first, 0, 0, 0, 0, 0, 0, 0];
    window[1..].copy_from_slice(&rest);
    is_method(&window)
}

/// Whether the eight bytes (zero-padded) start with a method of [`METHODS`].
#[inline(always)]
fn is_method(first: &[u8; 8]) -> bool {
    let mut found = false;
    for method in METHODS {
        let mut diff = 0u8;
        for (j, &want) in method.iter().enumerate() {
            diff |= first[j & 7] ^ want;
        }
        found |= diff == 0;
    }
    found
}

/// The first bytes of a message shorter than `N` bytes but at least `min`, zero-padded:
/// "GET / " is shorter than a full window but still a request start.
#[inline(always)]
fn short_prefix<B: HeadBytes, const N: usize>(bytes: &B, min: usize) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for (j, slot) in out.iter_mut().enumerate() {
        match bytes.byte(j) {
            Some(b) => *slot = b,
            None if j >= min => break,
            None => return None,
        }
    }
    Some(out)
}

/// True when the bytes start with an HTTP/1.x status line.
#[inline(always)]
pub fn starts_with_status_line<B: HeadBytes>(bytes: &B) -> bool {
    match bytes.array::<7>(0) {
        Some(first) => {
            let mut diff = 0u8;
            for (j, &want) in b"HTTP/1.".iter().enumerate() {
                diff |= first[j] ^ want;
            }
            diff == 0
        }
        None => false,
    }
}

/// What one step of [`find_lines`] works on; lives on the caller's stack.
#[repr(C)]
struct LineScan<'a, B> {
    bytes: &'a B,
    len: usize,
    lines: *mut HeadLines,
}

/// Bytes one step of [`find_lines`] covers.
const STEP: usize = 8;

/// Pass one: records the offset of every line end within `len` bytes (at most
/// [`HEAD_WINDOW`]) and where the head ends, if it does.
///
/// Runs under the `bpf_loop` helper: the verifier checks one step instead of walking
/// every iteration of a bounded loop, which for a 4 KiB window exceeds its limits. Each
/// step looks at eight bytes at once and only goes byte by byte when one of them is a
/// newline, because a helper callback per byte costs more than the rest of the work.
#[inline(always)]
pub fn find_lines<B: HeadBytes>(bytes: &B, len: usize, lines: *mut HeadLines) {
    // SAFETY: `lines` points into a map value owned by this program run.
    unsafe {
        write_volatile(&raw mut (*lines).count, 0);
        write_volatile(&raw mut (*lines).head_end, 0);
    }
    let len = if len < HEAD_WINDOW { len } else { HEAD_WINDOW };
    let mut scan = LineScan { bytes, len, lines };
    // SAFETY: the step reads `scan` only, which outlives the loop.
    unsafe {
        repeat(
            len.div_ceil(STEP) as u32,
            line_step::<B>,
            (&raw mut scan).cast(),
        )
    };
}

/// True when any byte of `word` is a newline (the classic zero-byte test on
/// `word ^ 0x0a0a..`, which is exact for "any").
#[inline(always)]
fn has_newline(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (ONES * b'\n' as u64);
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Eight bytes of [`find_lines`]; returns 1 to stop the loop.
#[inline(never)]
extern "C" fn line_step<B: HeadBytes>(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the LineScan passed to bpf_loop, alive for the whole loop.
    let scan = unsafe { &*(ctx as *const LineScan<'_, B>) };
    let base = (index as usize * STEP) & (HEAD_WINDOW - 1);
    if base >= scan.len {
        return 1;
    }
    // A full word without a newline is the common case; a short tail is done bytewise.
    if base + STEP <= scan.len
        && let Some(word) = scan.bytes.array::<STEP>(base)
        && !has_newline(u64::from_le_bytes(word))
    {
        return 0;
    }
    for j in 0..STEP {
        let i = base + j;
        if i >= scan.len {
            return 1;
        }
        let Some(c) = scan.bytes.byte(i) else {
            return 1;
        };
        if c == b'\n' && record_line_end(scan, i) {
            return 1;
        }
    }
    0
}

/// Records the newline at `at`; true when no more need be looked at (the head ended, or
/// the line table is full).
#[inline(always)]
fn record_line_end<B: HeadBytes>(scan: &LineScan<'_, B>, at: usize) -> bool {
    let lines = scan.lines;
    // SAFETY (all accesses below): `lines` points into a map value owned by this program
    // run; volatile keeps the values in memory, which is the point (see module docs).
    let n = unsafe { read_volatile(&raw const (*lines).count) } as usize;
    if n >= MAX_LINES {
        return true;
    }
    // SAFETY: see above; the index is masked into the array.
    unsafe {
        write_volatile(&raw mut (*lines).ends[n & (MAX_LINES - 1)], at as u16);
        write_volatile(&raw mut (*lines).count, (n + 1) as u32);
    }
    // "\r\n\r\n" or "\n\n": the blank line that ends the head.
    if is_blank_line_end(scan.bytes, at) {
        // SAFETY: see above.
        unsafe { write_volatile(&raw mut (*lines).head_end, (at + 1) as u32) };
        return true;
    }
    false
}

/// True when the newline at `at` ends an empty line.
#[inline(always)]
fn is_blank_line_end<B: HeadBytes>(bytes: &B, at: usize) -> bool {
    if at < 2 {
        return false;
    }
    let before = bytes.byte(at - 1).unwrap_or(0);
    let before2 = bytes.byte(at - 2).unwrap_or(0);
    before == b'\n' || (before == b'\r' && before2 == b'\n')
}

/// Number of lines found by [`find_lines`].
#[inline(always)]
pub fn line_count(lines: *const HeadLines) -> usize {
    // SAFETY: as in find_lines.
    (unsafe { read_volatile(&raw const (*lines).count) } as usize) & (MAX_LINES * 2 - 1)
}

/// Offset where line `k` starts (0 for the request line).
#[inline(always)]
pub fn line_start(lines: *const HeadLines, k: usize) -> usize {
    if k == 0 {
        return 0;
    }
    // SAFETY: as in find_lines; the index is masked into the array.
    let end = unsafe { read_volatile(&raw const (*lines).ends[(k - 1) & (MAX_LINES - 1)]) };
    (end as usize + 1) & (HEAD_WINDOW - 1)
}

/// Offset just past the blank line ending the head, or 0.
#[inline(always)]
pub fn head_end(lines: *const HeadLines) -> usize {
    // SAFETY: as in find_lines.
    (unsafe { read_volatile(&raw const (*lines).head_end) } as usize) & (HEAD_WINDOW * 2 - 1)
}

/// Checks that the first line is `METHOD SP target SP HTTP/1.x CRLF` (the method was
/// checked by [`starts_with_method`]) and returns the offset just past it.
#[inline(always)]
pub fn request_line_end<B: HeadBytes>(bytes: &B, lines: *const HeadLines) -> Option<usize> {
    if line_count(lines) < 1 {
        return None;
    }
    let newline = line_start(lines, 1).checked_sub(1)?;
    // " HTTP/1.1\r" ends right before the newline; 14 = shortest "GET / HTTP/1.1".
    if newline < 14 {
        return None;
    }
    let tail = bytes.array::<10>(newline - 10)?;
    let mut diff = 0u8;
    for (j, &want) in b" HTTP/1.".iter().enumerate() {
        diff |= tail[j] ^ want;
    }
    diff |= tail[9] ^ b'\r';
    let minor = tail[8];
    if diff != 0 || !(minor == b'0' || minor == b'1') {
        return None;
    }
    Some(newline + 1)
}

/// Case-insensitive comparison of the first `name.len()` bytes of `got` with `name`,
/// which must be lowercase letters, digits, '-' and ':'.
#[inline(always)]
pub fn name_is<const N: usize>(got: &[u8; N], name: &[u8]) -> bool {
    let mut diff = 0u8;
    for (j, &want) in name.iter().enumerate() {
        diff |= (got[j % N] | 0x20) ^ want;
    }
    diff == 0 && name.len() <= N
}

pub const TRACEPARENT: &[u8] = b"traceparent:";
pub const CONTENT_LENGTH: &[u8] = b"content-length:";
pub const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
/// Longest header name loupe looks for, colon included.
pub const NAME_WINDOW: usize = 18;

/// Largest `Content-Length` loupe follows (1 PB); more is taken as malformed.
const MAX_DECIMAL: u64 = 1 << 50;

/// Parses the decimal value of a header whose name (colon included) ends at `at`:
/// up to four spaces or tabs, 1 to 16 digits, then CR. `None` when malformed or too
/// large. Nothing but the position is carried between iterations in a form the
/// verifier must keep exact.
#[inline(always)]
pub fn parse_decimal<B: HeadBytes>(bytes: &B, at: usize) -> Option<u64> {
    let mut at = at;
    for _ in 0..4 {
        match bytes.byte(at) {
            Some(b' ' | b'\t') => at += 1,
            _ => break,
        }
    }
    if bytes.byte(at)?.wrapping_sub(b'0') > 9 {
        return None;
    }
    let mut value: u64 = 0;
    for j in 0..17 {
        let c = bytes.byte(at + j)?;
        if c == b'\r' {
            return if value <= MAX_DECIMAL {
                Some(value)
            } else {
                None
            };
        }
        let digit = c.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.wrapping_mul(10).wrapping_add(digit as u64);
    }
    None
}

/// The value of a hex digit, lowercase only as W3C Trace Context requires; 0xff if not one.
#[inline(always)]
fn hex_value(c: u8) -> u8 {
    let digit = c.wrapping_sub(b'0');
    let letter = c.wrapping_sub(b'a');
    if digit <= 9 {
        digit
    } else if letter <= 5 {
        letter + 10
    } else {
        0xff
    }
}

/// Bytes copied from after `traceparent:` for [`parse_traceparent`]: up to two spaces or
/// tabs, 55 value bytes and the one after them.
pub const TRACEPARENT_COPY: usize = 58;
/// Size of the buffer the value is copied into (a power of two for masked indexing).
pub const TRACEPARENT_BUF: usize = 64;

/// The byte spelt by the two hex digits at `at` of `raw`; sets bits in `bad` when they
/// are not hex digits.
#[inline(always)]
fn hex_byte(raw: &[u8; TRACEPARENT_BUF], at: usize, bad: &mut u8) -> u8 {
    let hi = hex_value(raw[at & (TRACEPARENT_BUF - 1)]);
    let lo = hex_value(raw[(at + 1) & (TRACEPARENT_BUF - 1)]);
    *bad |= (hi | lo) & 0xf0;
    (hi << 4) | (lo & 0x0f)
}

/// Parses `version-traceid-spanid-flags` from `raw`, the [`TRACEPARENT_COPY`] bytes after
/// a `traceparent:` name, writing the ids straight into the outputs (map memory: the
/// program has no stack to spare). Returns false, with the outputs unspecified, for
/// what W3C Trace Context says to ignore: version ff, all-zero ids, uppercase or non-hex
/// digits, and a version-00 value with anything after the flags.
#[inline(always)]
pub fn parse_traceparent(
    raw: &[u8; TRACEPARENT_BUF],
    trace_id: &mut [u8; 16],
    span_id: &mut [u8; 8],
    flags: &mut u8,
) -> bool {
    let space = |c: u8| c == b' ' || c == b'\t';
    let start = match (space(raw[0]), space(raw[1])) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    };
    let at = |off: usize| raw[(start + off) & (TRACEPARENT_BUF - 1)];
    // "vv-" + 32 hex + "-" + 16 hex + "-" + 2 hex, then the byte after it.
    if at(2) != b'-' || at(35) != b'-' || at(52) != b'-' {
        return false;
    }
    let mut bad = 0u8;
    let version = hex_byte(raw, start, &mut bad);
    let mut any_trace = 0u8;
    for (k, slot) in trace_id.iter_mut().enumerate() {
        *slot = hex_byte(raw, start + 3 + 2 * k, &mut bad);
        any_trace |= *slot;
    }
    let mut any_span = 0u8;
    for (k, slot) in span_id.iter_mut().enumerate() {
        *slot = hex_byte(raw, start + 36 + 2 * k, &mut bad);
        any_span |= *slot;
    }
    *flags = hex_byte(raw, start + 53, &mut bad);
    if bad != 0 || version == 0xff || any_trace == 0 || any_span == 0 {
        return false;
    }
    version != 0 || matches!(at(55), b'\r' | b' ' | b'\t')
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` from `at`.
#[inline(always)]
pub fn write_hex<const N: usize>(out: &mut [u8], at: usize, bytes: &[u8; N]) {
    for (k, &b) in bytes.iter().enumerate() {
        if let Some(slot) = out.get_mut(at + 2 * k) {
            *slot = HEX[(b >> 4) as usize & 15];
        }
        if let Some(slot) = out.get_mut(at + 2 * k + 1) {
            *slot = HEX[(b & 15) as usize];
        }
    }
}

#[cfg(test)]
mod tests;
