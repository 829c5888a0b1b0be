//! One direction of a connection: finds message heads, follows body framing through capture
//! gaps, and falls back to looking for the next message start when framing is lost.

use std::cmp::min;
use std::mem;

use super::body::{BodyMode, Fed, SyncLoss};
use super::head::{Head, HeadParse};
use super::{Http1Limits, SessionStats};
use crate::protocol::Chunk;

/// Head buffer capacity kept between messages.
const RETAINED_HEAD_CAPACITY: usize = 4096;

/// Where and on which thread a syscall ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ChunkMeta {
    pub start_ns: u64,
    pub end_ns: u64,
    pub tid: u32,
}

/// The part of one chunk not yet consumed: seen bytes first, then the unseen tail.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    gap: u64,
    pub meta: ChunkMeta,
}

impl<'a> Cursor<'a> {
    pub fn new(chunk: &Chunk<'a>) -> Self {
        Self {
            bytes: chunk.bytes,
            pos: 0,
            gap: chunk.unseen_len(),
            meta: ChunkMeta {
                start_ns: chunk.start_ns,
                end_ns: chunk.end_ns,
                tid: chunk.tid,
            },
        }
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    /// Message starts are only looked for where a syscall's bytes begin: inside a chunk, body
    /// bytes can look like anything.
    fn at_start(&self) -> bool {
        self.pos == 0
    }

    fn advance(&mut self, n: usize) {
        self.pos = min(self.pos.saturating_add(n), self.bytes.len());
    }

    /// Consumes everything left and returns how many bytes that was, seen or not.
    fn skip_all(&mut self) -> u64 {
        let n = self.rest().len() as u64 + self.gap;
        self.pos = self.bytes.len();
        self.gap = 0;
        n
    }
}

/// What is known about the body of the message in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Progress {
    pub body_len: u64,
    /// Exit of the last syscall that carried bytes of this message.
    pub last_end_ns: u64,
    pub last_tid: u32,
    /// Content-Length, used as the body size when framing was lost.
    declared_len: Option<u64>,
    lost_sync: bool,
}

impl Progress {
    /// A message seen up to the end of its head, in the syscall `meta` describes.
    pub fn at_head(meta: ChunkMeta) -> Self {
        Self {
            body_len: 0,
            last_end_ns: meta.end_ns,
            last_tid: meta.tid,
            declared_len: None,
            lost_sync: false,
        }
    }

    fn account(&mut self, fed: &Fed, meta: ChunkMeta, stats: &mut SessionStats) {
        if fed.consumed > 0 {
            self.body_len = self.body_len.saturating_add(fed.consumed);
            self.last_end_ns = meta.end_ns;
            self.last_tid = meta.tid;
        }
        match fed.lost {
            Some(SyncLoss::Malformed(_)) => {
                stats.parse_errors += 1;
                self.lost_sync = true;
            }
            Some(SyncLoss::Gap) => self.lost_sync = true,
            None => {}
        }
    }

    /// Counted bytes are only a guess once framing is lost; a declared length is a better one.
    fn finished(mut self) -> Self {
        if self.lost_sync
            && let Some(declared) = self.declared_len
        {
            self.body_len = declared;
        }
        self
    }
}

/// What a stream reports while consuming a chunk.
#[derive(Debug)]
pub(super) enum Event<H> {
    /// A head was parsed. The caller must say how its body is framed
    /// ([`StreamParser::begin_body`]) before polling again; until then it has none.
    Head {
        head: H,
        /// The syscall holding the head's first byte.
        first: ChunkMeta,
    },
    /// The message in progress ended.
    End(Progress),
}

/// What closing a stream left behind.
#[derive(Debug)]
pub(super) enum Closed<H> {
    Nothing,
    /// A message body was in progress; `complete` when the close is its natural end.
    Ended {
        progress: Progress,
        complete: bool,
    },
    /// A head was being buffered; what could be read of it.
    PartialHead {
        head: Option<H>,
        first: ChunkMeta,
        last: ChunkMeta,
    },
}

#[derive(Debug)]
enum State {
    /// Between messages; `head_buf` may hold the start of the next head.
    Idle,
    Body {
        mode: BodyMode,
        progress: Progress,
    },
    /// Skipping bytes until a chunk starts like a message.
    Desynced,
    /// No longer HTTP (after an upgrade or CONNECT).
    Passthrough,
}

enum Step<H> {
    Emit(Event<H>),
    Continue,
    Wait,
}

/// The parser for one direction, carrying heads of type `H`.
pub(super) struct StreamParser<H> {
    state: State,
    head_buf: Vec<u8>,
    head_first: ChunkMeta,
    head_last: ChunkMeta,
    /// The last head emitted was cut by the capture.
    truncated: bool,
    /// Bytes skipped out of sync over the stream's life: lets the session tell whether a
    /// response may have gone by unrecognised since a request arrived.
    skipped: u64,
    _head: std::marker::PhantomData<H>,
}

impl<H: Head> StreamParser<H> {
    pub fn new() -> Self {
        Self {
            state: State::Idle,
            head_buf: Vec::new(),
            head_first: ChunkMeta::default(),
            head_last: ChunkMeta::default(),
            truncated: false,
            skipped: 0,
            _head: std::marker::PhantomData,
        }
    }

    /// Consumes the cursor up to the next event.
    pub fn poll(
        &mut self,
        cur: &mut Cursor,
        limits: &Http1Limits,
        stats: &mut SessionStats,
    ) -> Option<Event<H>> {
        loop {
            let step = match &mut self.state {
                State::Passthrough => {
                    cur.skip_all();
                    Step::Wait
                }
                State::Desynced => {
                    if cur.at_start() && H::looks_like_start(cur.rest()) {
                        stats.resyncs += 1;
                        self.state = State::Idle;
                        Step::Continue
                    } else {
                        self.count_skipped(stats, cur.skip_all());
                        Step::Wait
                    }
                }
                State::Body { mode, progress } => {
                    if mode.is_done() {
                        Step::Emit(Event::End(self.end_message()))
                    } else if mode.is_open_ended()
                        && cur.at_start()
                        && H::looks_like_start(cur.rest())
                    {
                        match self.finish_open_ended(stats) {
                            Some(progress) => Step::Emit(Event::End(progress)),
                            None => Step::Continue,
                        }
                    } else if !cur.rest().is_empty() {
                        let fed = mode.feed(cur.rest());
                        cur.advance(usize::try_from(fed.consumed).unwrap_or(usize::MAX));
                        progress.account(&fed, cur.meta, stats);
                        Step::Continue
                    } else if cur.gap > 0 {
                        let fed = mode.feed_gap(cur.gap);
                        cur.gap -= fed.consumed;
                        progress.account(&fed, cur.meta, stats);
                        Step::Continue
                    } else {
                        Step::Wait
                    }
                }
                State::Idle => self.poll_head(cur, limits, stats),
            };
            match step {
                Step::Emit(event) => return Some(event),
                Step::Continue => {}
                Step::Wait => return None,
            }
        }
    }

    /// Sets the framing of the body whose head was just reported. A head cut by the capture
    /// leaves no way to know where its body starts, so any body becomes open-ended.
    pub fn begin_body(&mut self, mode: BodyMode, declared_len: Option<u64>) {
        let truncated = self.truncated;
        if let State::Body {
            mode: current,
            progress,
        } = &mut self.state
        {
            progress.declared_len = declared_len;
            *current = if truncated && !mode.is_done() {
                BodyMode::LostSync
            } else {
                mode
            };
            if matches!(current, BodyMode::LostSync) {
                progress.lost_sync = true;
            }
        }
    }

    /// Ends a body that has no end of its own (read-until-close, lost sync): the other
    /// direction has moved on to the next message.
    pub fn finish_open_ended(&mut self, stats: &mut SessionStats) -> Option<Progress> {
        match &self.state {
            State::Body { mode, .. } if mode.is_open_ended() => {
                if matches!(mode, BodyMode::LostSync) {
                    stats.resyncs += 1;
                }
                Some(self.end_message())
            }
            _ => None,
        }
    }

    /// The body of the message in progress so far.
    pub fn progress(&self) -> Option<Progress> {
        match &self.state {
            State::Body { progress, .. } => Some(*progress),
            _ => None,
        }
    }

    /// Bytes of this direction went missing uncounted (dropped events): framing can no longer
    /// be trusted, so the message in progress becomes open-ended and a head being buffered is
    /// given up.
    #[cfg(test)]
    pub fn lose_sync(&mut self, stats: &mut SessionStats) {
        match &mut self.state {
            State::Body { mode, progress } if !mode.is_done() => {
                *mode = BodyMode::LostSync;
                progress.lost_sync = true;
            }
            State::Idle => {
                self.count_skipped(stats, self.head_buf.len() as u64);
                self.release_head_buf();
                self.state = State::Desynced;
            }
            State::Body { .. } | State::Desynced | State::Passthrough => {}
        }
    }

    /// Whether the stream still knows where its messages begin and end: not skipping to
    /// the next message start, and not in a body whose framing was lost.
    pub fn in_step(&self) -> bool {
        !matches!(
            self.state,
            State::Desynced
                | State::Body {
                    mode: BodyMode::LostSync,
                    ..
                }
        )
    }

    /// While skipping to the next message start: bytes skipped so far over the stream's life.
    pub fn desynced_skipped(&self) -> Option<u64> {
        matches!(self.state, State::Desynced).then_some(self.skipped)
    }

    /// Bytes of an incomplete head held.
    pub fn buffered(&self) -> usize {
        self.head_buf.len()
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn count_skipped(&mut self, stats: &mut SessionStats, n: u64) {
        stats.unparsed_bytes = stats.unparsed_bytes.saturating_add(n);
        self.skipped = self.skipped.saturating_add(n);
    }

    /// The stream no longer carries HTTP (after an upgrade or CONNECT).
    pub fn is_passthrough(&self) -> bool {
        matches!(self.state, State::Passthrough)
    }

    pub fn set_passthrough(&mut self) {
        self.head_buf = Vec::new();
        self.state = State::Passthrough;
    }

    /// The connection is gone: reports what was in progress and starts over.
    pub fn close(&mut self, limits: &Http1Limits, stats: &mut SessionStats) -> Closed<H> {
        let state = mem::replace(&mut self.state, State::Idle);
        let closed = match state {
            State::Body { mode, progress } => Closed::Ended {
                progress: progress.finished(),
                complete: mode.is_done() || mode.is_open_ended(),
            },
            State::Idle if !self.head_buf.is_empty() => {
                let head = H::salvage(&self.head_buf, limits);
                if head.is_some() {
                    stats.truncated_heads += 1;
                } else {
                    stats.parse_errors += 1;
                    self.count_skipped(stats, self.head_buf.len() as u64);
                }
                Closed::PartialHead {
                    head,
                    first: self.head_first,
                    last: self.head_last,
                }
            }
            _ => Closed::Nothing,
        };
        self.head_buf = Vec::new();
        self.truncated = false;
        closed
    }

    fn end_message(&mut self) -> Progress {
        let next = match &self.state {
            State::Body {
                mode: BodyMode::Tunnel,
                ..
            } => State::Passthrough,
            _ => State::Idle,
        };
        match mem::replace(&mut self.state, next) {
            State::Body { progress, .. } => progress.finished(),
            // Only called in the Body state.
            other => {
                self.state = other;
                Progress::at_head(ChunkMeta::default())
            }
        }
    }

    /// Empties the head buffer, returning its memory when a large head grew it: thousands of
    /// idle connections should not each keep a 16 KiB buffer.
    fn release_head_buf(&mut self) {
        if self.head_buf.capacity() > RETAINED_HEAD_CAPACITY {
            self.head_buf = Vec::new();
        } else {
            self.head_buf.clear();
        }
    }

    fn start_message(
        &mut self,
        head: H,
        first: ChunkMeta,
        meta: ChunkMeta,
        truncated: bool,
    ) -> Step<H> {
        self.release_head_buf();
        self.truncated = truncated;
        self.state = State::Body {
            mode: BodyMode::Length(0),
            progress: Progress::at_head(meta),
        };
        Step::Emit(Event::Head { head, first })
    }

    /// Gives up on the current head: everything buffered and the rest of the chunk is skipped
    /// until a chunk starts like a message again.
    fn fail(&mut self, buffered: usize, cur: &mut Cursor, stats: &mut SessionStats) -> Step<H> {
        stats.parse_errors += 1;
        let skipped = (buffered as u64).saturating_add(cur.skip_all());
        self.count_skipped(stats, skipped);
        self.release_head_buf();
        self.state = State::Desynced;
        Step::Continue
    }

    fn poll_head(
        &mut self,
        cur: &mut Cursor,
        limits: &Http1Limits,
        stats: &mut SessionStats,
    ) -> Step<H> {
        if self.head_buf.is_empty() {
            // Empty lines between messages (some clients add CRLF after a body) are not part
            // of the next message, so they must not date it.
            let blank = cur
                .rest()
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            cur.advance(blank);
            let rest = cur.rest();
            if rest.is_empty() {
                if cur.gap > 0 {
                    // The next message starts in bytes we cannot see.
                    self.count_skipped(stats, cur.skip_all());
                    self.state = State::Desynced;
                }
                return Step::Wait;
            }
            return match H::parse(rest, limits) {
                HeadParse::Complete(head, len) => {
                    cur.advance(len);
                    self.start_message(head, cur.meta, cur.meta, false)
                }
                HeadParse::Partial if rest.len() >= limits.max_header_bytes => {
                    self.fail(0, cur, stats)
                }
                HeadParse::Partial => {
                    self.head_buf.extend_from_slice(rest);
                    self.head_first = cur.meta;
                    self.head_last = cur.meta;
                    cur.advance(rest.len());
                    if cur.gap > 0 {
                        self.salvage(cur, limits, stats)
                    } else {
                        Step::Wait
                    }
                }
                HeadParse::Invalid(e) => {
                    log::trace!("http1 head rejected: {e}");
                    self.fail(0, cur, stats)
                }
            };
        }

        let old_len = self.head_buf.len();
        let rest = cur.rest();
        if rest.is_empty() {
            return if cur.gap > 0 {
                self.salvage(cur, limits, stats)
            } else {
                Step::Wait
            };
        }
        let take = min(rest.len(), limits.max_header_bytes.saturating_sub(old_len));
        self.head_buf.extend_from_slice(&rest[..take]);
        // Re-parse only when an empty line may have arrived: splitting a head byte by byte
        // must not cost a parse per byte. The buffer never holds a complete head, so the end
        // can only be in the new bytes (or straddle the old end).
        let parsed = if has_head_end(&self.head_buf[old_len.saturating_sub(2)..]) {
            H::parse(&self.head_buf, limits)
        } else {
            HeadParse::Partial
        };
        match parsed {
            HeadParse::Complete(head, len) if len >= old_len => {
                cur.advance(len - old_len);
                self.start_message(head, self.head_first, cur.meta, false)
            }
            HeadParse::Invalid(e) => {
                log::trace!("http1 head rejected: {e}");
                self.head_buf.truncate(old_len);
                self.fail(old_len, cur, stats)
            }
            // Cannot happen while the buffer never holds a complete head; refuse rather than
            // re-read bytes already consumed.
            HeadParse::Complete(..) => {
                self.head_buf.truncate(old_len);
                self.fail(old_len, cur, stats)
            }
            HeadParse::Partial if self.head_buf.len() >= limits.max_header_bytes => {
                self.head_buf.truncate(old_len);
                self.fail(old_len, cur, stats)
            }
            HeadParse::Partial => {
                cur.advance(take);
                self.head_last = cur.meta;
                if cur.gap > 0 {
                    self.salvage(cur, limits, stats)
                } else {
                    Step::Wait
                }
            }
        }
    }

    /// The head runs into the chunk's unseen tail: keep the complete lines seen. The tail is
    /// the rest of the head and maybe body; it is swallowed into this message.
    fn salvage(
        &mut self,
        cur: &mut Cursor,
        limits: &Http1Limits,
        stats: &mut SessionStats,
    ) -> Step<H> {
        match H::salvage(&self.head_buf, limits) {
            Some(head) => {
                stats.truncated_heads += 1;
                cur.skip_all();
                let first = self.head_first;
                self.start_message(head, first, cur.meta, true)
            }
            None => {
                let buffered = self.head_buf.len();
                self.fail(buffered, cur, stats)
            }
        }
    }
}

/// An empty line: `\n\n` or `\n\r\n`.
fn has_head_end(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && bytes.get(i + 2) == Some(&b'\n')))
}
