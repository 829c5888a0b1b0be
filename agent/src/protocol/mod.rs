//! Protocol parsers: from the bytes of one connection to paired requests and responses.
//!
//! The kernel hands us, per socket syscall, a prefix of the bytes moved and the true count.
//! Parsers therefore work on [`Chunk`]s that may be truncated (`bytes.len() < total_len`) or
//! carry no bytes at all (sendfile), and must keep their framing in step with the unseen tail.

pub mod http1;
mod text;

pub use text::InlineText;

/// Which way bytes moved, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The process read the bytes.
    Ingress,
    /// The process wrote the bytes.
    Egress,
}

/// The traced process's side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The process reads requests and writes responses.
    Server,
    /// The process writes requests and reads responses.
    Client,
}

/// What one read- or write-family syscall moved on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub direction: Direction,
    /// Syscall entry (monotonic ns).
    pub start_ns: u64,
    /// Syscall exit (monotonic ns).
    pub end_ns: u64,
    pub tid: u32,
    /// The captured prefix of the bytes moved; may be shorter than `total_len`, or empty for
    /// sendfile-style transfers whose bytes never pass through user memory.
    pub bytes: &'a [u8],
    /// How many bytes the syscall really moved.
    pub total_len: u64,
}

impl Chunk<'_> {
    /// Bytes the syscall moved that were not captured.
    pub fn unseen_len(&self) -> u64 {
        self.total_len.saturating_sub(self.bytes.len() as u64)
    }
}

/// Result of looking at the first bytes of a connection: the role of the traced process when
/// they start an HTTP/1.x request or response, `None` for anything else (TLS, redis, garbage,
/// or too few bytes to tell).
pub fn detect_http1(chunk: &Chunk) -> Option<Role> {
    http1::detect(chunk)
}

/// Whether a chunk [`detect_http1`] turned down may be the first piece of a request or
/// status line its sender wrote in several syscalls: worth joining to the next chunk.
pub fn may_begin_http1(chunk: &Chunk) -> bool {
    http1::could_begin_message(chunk)
}
