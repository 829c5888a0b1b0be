//! HTTP/1.x: heads parsed with `httparse`, bodies framed here, responses paired FIFO with the
//! requests they answer.
//!
//! Each connection gets one [`Http1Session`], fed every captured [`Chunk`](super::Chunk) in
//! both directions. Each direction is its own byte stream with its own framing state
//! (`stream.rs`); the session pairs what the two streams report (`session.rs`).
//!
//! Captures are prefixes: a chunk's unseen tail is counted, never seen. Bodies stay in step
//! through such gaps as long as their framing is a length (Content-Length, or the data part of
//! a chunked body, plus the CRLF that ends a syscall written one chunk at a time). When a gap
//! swallows framing, the stream has lost sync: the message in progress ends at the next chunk
//! that starts like a new message, at the next message of the opposite direction, or at close.
//! A head cut by the capture keeps its complete header lines and makes its body open-ended
//! the same way.
//!
//! Bytes that do not parse are skipped until a chunk starts like a message again. If the
//! response direction skipped bytes after a request arrived and the next request comes, that
//! request's response is taken to have gone by unrecognised (`ResponseLost`) rather than
//! pairing the next response with it and shifting every later pair.

mod body;
pub mod head;
mod session;
mod stream;

#[cfg(test)]
mod tests;

pub use session::Http1Session;

use std::borrow::Cow;

use super::{Chunk, Direction, InlineText, Role};

/// Bounds on what one session keeps in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http1Limits {
    /// Largest request or response head buffered while incomplete; beyond it the head is a
    /// parse error and the direction resynchronises.
    pub max_header_bytes: usize,
    /// Headers kept per message (framing headers are honoured even beyond this).
    pub max_headers: usize,
    /// Requests waiting for their response (pipelining depth); beyond it the oldest is
    /// dropped and counted.
    pub max_pending_requests: usize,
    /// Which header values are copied out of the captured bytes.
    pub keep_headers: KeepHeaders,
}

impl Default for Http1Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_pending_requests: 32,
            keep_headers: KeepHeaders::Used,
        }
    }
}

/// Which headers a parsed message keeps (framing is read from all of them regardless).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepHeaders {
    /// Only what spans are built from: a request's `Host`, `User-Agent` and trace-context
    /// headers; none of a response's. Values such as `Authorization` or `Cookie` are never
    /// copied, and a request costs no allocation per header it does not need.
    Used,
    /// Every header, up to `max_headers` (tests and tools that inspect messages).
    All,
}

/// The methods the HTTP semantic conventions know; spans report others as `_OTHER`.
pub const CONVENTION_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

/// `method` as the [`CONVENTION_METHODS`] entry it equals, if any.
pub fn convention_method(method: &str) -> Option<&'static str> {
    CONVENTION_METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
}

/// Request headers spans are built from, besides the trace-context ones.
pub const SPAN_REQUEST_HEADERS: &[&str] = &["host", "user-agent"];

/// Longest header value kept, in bytes; longer values are cut at a character boundary.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// One kept header: its lowercase name (a borrowed constant for the names spans use) and
/// its value as text.
pub type HeaderField = (Cow<'static, str>, InlineText);

/// A parsed request head and the size of its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRequest {
    /// Borrowed for the [`CONVENTION_METHODS`], so the common ones cost no allocation.
    pub method: Cow<'static, str>,
    /// The raw request-target, as sent.
    pub target: InlineText,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Names lowercased, values as text (lossy UTF-8, at most [`MAX_HEADER_VALUE_BYTES`]),
    /// at most [`Http1Limits::max_headers`] of them, in wire order. The names spans use
    /// are borrowed constants.
    pub headers: Vec<HeaderField>,
    /// Body bytes on the wire after the head (chunked framing included), counting bytes the
    /// capture did not see.
    pub body_len: u64,
    /// The head went past the captured prefix: only the complete header lines seen are kept.
    pub head_truncated: bool,
}

/// A parsed final response head and the size of its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub minor_version: u8,
    /// Same rules as [`HttpRequest::headers`].
    pub headers: Vec<HeaderField>,
    /// Same rules as [`HttpRequest::body_len`].
    pub body_len: u64,
    /// Same meaning as [`HttpRequest::head_truncated`].
    pub head_truncated: bool,
}

// Inline: with the name a constant at the call site, the comparison is specialised to
// its length; left to the codegen split, it was inlined in some builds and not others,
// about 125 instructions per request apart.
#[inline]
fn find_header<'a>(headers: &'a [HeaderField], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl HttpRequest {
    /// The first header with this name (case-insensitive).
    #[inline]
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// The final response was seen to its end.
    Complete,
    /// The connection closed before any response.
    NoResponse,
    /// The connection closed in the middle of the response.
    ResponseIncomplete,
    /// The response went by unrecognised (garbage, or its head in bytes the capture missed);
    /// the next request, or the close, showed that it was over.
    ResponseLost,
}

/// A request and, when seen, its final response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    pub role: Role,
    pub request: HttpRequest,
    pub response: Option<HttpResponse>,
    /// Start and exit of the syscall that carried the request's first byte (see
    /// `DataEventHeader::start_ns` for what its start is).
    pub request_first_start_ns: u64,
    pub request_first_end_ns: u64,
    /// Exit of the last syscall that carried request bytes (so far, if the response ended
    /// first).
    pub request_last_end_ns: u64,
    /// Entry of the syscall that carried the final response's first byte (its exit when
    /// the kernel hooks writes at exit and the connection was accepted: see
    /// `DataEventHeader::start_ns`); 0 without response. No span uses it.
    pub response_first_start_ns: u64,
    /// Exit of the syscall that carried the response's last byte; 0 without response.
    pub response_last_end_ns: u64,
    /// Thread of the syscall holding the request's first byte.
    pub request_tid: u32,
    /// Thread of the syscall holding the response's last byte (0 without response).
    pub response_tid: u32,
    pub outcome: ExchangeOutcome,
    /// The `on_close` timestamp when the close ended this exchange, else 0.
    pub close_ns: u64,
    /// The request's number on its connection, as in [`RequestStart::request_id`].
    pub request_id: u64,
}

/// A request whose head was just seen: reported before its exchange completes, so that
/// spans caused by it (the calls its handler makes) can be linked to it while it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestStart {
    /// Numbers the requests of one connection from 0, in order.
    pub request_id: u64,
    /// Thread of the syscall holding the request's first byte.
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The trace-context headers only (`span::context::PROPAGATION_HEADERS`).
    pub headers: Vec<HeaderField>,
}

/// What a session counted since the last [`Http1Session::take_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Heads that did not parse, oversized heads, broken chunked framing, bad Content-Length.
    pub parse_errors: u64,
    /// Bytes (seen or not) skipped while out of sync.
    pub unparsed_bytes: u64,
    /// Requests closed without response, whose response was lost, or dropped past the
    /// pipelining limit.
    pub requests_without_response: u64,
    /// Final responses with no request waiting.
    pub responses_without_request: u64,
    /// Times a direction found a message start again after losing sync.
    pub resyncs: u64,
    /// Heads cut by the capture prefix (kept with the header lines seen).
    pub truncated_heads: u64,
    /// Requests dropped because too many were waiting for a response.
    pub dropped_requests: u64,
}

impl SessionStats {
    /// Adds another set of counts to this one.
    #[cfg(test)]
    pub fn add(&mut self, other: &SessionStats) {
        self.parse_errors = self.parse_errors.saturating_add(other.parse_errors);
        self.unparsed_bytes = self.unparsed_bytes.saturating_add(other.unparsed_bytes);
        self.requests_without_response = self
            .requests_without_response
            .saturating_add(other.requests_without_response);
        self.responses_without_request = self
            .responses_without_request
            .saturating_add(other.responses_without_request);
        self.resyncs = self.resyncs.saturating_add(other.resyncs);
        self.truncated_heads = self.truncated_heads.saturating_add(other.truncated_heads);
        self.dropped_requests = self.dropped_requests.saturating_add(other.dropped_requests);
    }
}

/// See [`super::detect_http1`].
/// Whether a chunk `detect` turned down may be the start of a message cut short by its
/// sender, worth holding until the next chunk.
pub fn could_begin_message(chunk: &Chunk) -> bool {
    chunk.unseen_len() == 0 && head::could_begin_message(chunk.bytes)
}

pub fn detect(chunk: &Chunk) -> Option<Role> {
    if head::looks_like_request_start(chunk.bytes) {
        Some(match chunk.direction {
            Direction::Ingress => Role::Server,
            Direction::Egress => Role::Client,
        })
    } else if head::looks_like_response_start(chunk.bytes) {
        Some(match chunk.direction {
            Direction::Ingress => Role::Client,
            Direction::Egress => Role::Server,
        })
    } else {
        None
    }
}
