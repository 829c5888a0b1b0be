//! Body framing: how many bytes after the head belong to the message, fed seen bytes and
//! unseen gaps alike.

use std::cmp::min;

/// Longest chunk extension accepted on one chunk-size line.
const MAX_CHUNK_EXT_BYTES: u32 = 4096;
/// Longest trailer section accepted after the last chunk.
const MAX_TRAILER_BYTES: u32 = 16 * 1024;
/// Hex digits in a chunk size (64 bits).
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// Why chunked framing could not be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum ChunkedError {
    #[error("invalid byte in chunk size line")]
    InvalidSize,
    #[error("chunk size does not fit in 64 bits")]
    SizeOverflow,
    #[error("chunk extension too long")]
    ExtensionTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("trailer section too long")]
    TrailerTooLong,
}

/// Why the decoder stopped following the framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkedFailure {
    /// The framing seen is wrong.
    Malformed(ChunkedError),
    /// The bytes after a gap did not fit the CRLF guessed for it: the gap hid more framing.
    GuessedWrong(ChunkedError),
}

/// Why a body lost its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SyncLoss {
    /// Seen bytes broke the framing.
    Malformed(ChunkedError),
    /// Unseen bytes covered framing we needed to read.
    Gap,
}

/// How the body of the message in progress ends.
#[derive(Debug)]
pub(super) enum BodyMode {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunked),
    /// Ends when the connection closes.
    UntilClose,
    /// Framing lost: ends at the next message start, the opposite direction's next message,
    /// or close.
    LostSync,
    /// The connection stops carrying HTTP after this message (101, CONNECT).
    Tunnel,
}

/// Bytes a body took from a feed, and whether it lost sync doing so.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Fed {
    pub consumed: u64,
    pub lost: Option<SyncLoss>,
}

impl BodyMode {
    pub fn is_done(&self) -> bool {
        match self {
            BodyMode::Length(remaining) => *remaining == 0,
            BodyMode::Chunked(c) => c.is_done(),
            BodyMode::Tunnel => true,
            BodyMode::UntilClose | BodyMode::LostSync => false,
        }
    }

    /// Modes whose end is not in the byte stream itself.
    pub fn is_open_ended(&self) -> bool {
        matches!(self, BodyMode::UntilClose | BodyMode::LostSync)
    }

    /// Takes seen bytes; stops exactly at the end of the body.
    pub fn feed(&mut self, data: &[u8]) -> Fed {
        match self {
            BodyMode::Length(remaining) => {
                let take = min(*remaining, data.len() as u64);
                *remaining -= take;
                Fed {
                    consumed: take,
                    lost: None,
                }
            }
            BodyMode::Chunked(chunked) => match chunked.feed(data) {
                Ok(n) => Fed {
                    consumed: n as u64,
                    lost: None,
                },
                Err(failure) => {
                    *self = BodyMode::LostSync;
                    Fed {
                        consumed: data.len() as u64,
                        lost: Some(match failure {
                            ChunkedFailure::Malformed(e) => SyncLoss::Malformed(e),
                            ChunkedFailure::GuessedWrong(_) => SyncLoss::Gap,
                        }),
                    }
                }
            },
            BodyMode::UntilClose | BodyMode::LostSync => Fed {
                consumed: data.len() as u64,
                lost: None,
            },
            BodyMode::Tunnel => Fed {
                consumed: 0,
                lost: None,
            },
        }
    }

    /// Takes `gap` unseen bytes; stops exactly at the end of the body.
    pub fn feed_gap(&mut self, gap: u64) -> Fed {
        match self {
            BodyMode::Length(remaining) => {
                let take = min(*remaining, gap);
                *remaining -= take;
                Fed {
                    consumed: take,
                    lost: None,
                }
            }
            BodyMode::Chunked(chunked) => {
                if chunked.skip_data(gap) {
                    Fed {
                        consumed: gap,
                        lost: None,
                    }
                } else {
                    *self = BodyMode::LostSync;
                    Fed {
                        consumed: gap,
                        lost: Some(SyncLoss::Gap),
                    }
                }
            }
            BodyMode::UntilClose | BodyMode::LostSync => Fed {
                consumed: gap,
                lost: None,
            },
            BodyMode::Tunnel => Fed {
                consumed: 0,
                lost: None,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkedState {
    /// Reading the hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the digits: optional whitespace, then an optional `;extension`.
    SizeTail {
        value: u64,
        in_ext: bool,
        ext_len: u32,
    },
    /// Saw CR ending the size line.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    /// Expecting the CRLF after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart {
        used: u32,
    },
    TrailerLine {
        used: u32,
    },
    /// Saw CR at the start of a line: the final empty line.
    TrailerEndLf,
    Done,
}

/// A streaming decoder for `Transfer-Encoding: chunked` that never buffers: chunk-size lines
/// and trailers may be split anywhere across chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Chunked {
    state: ChunkedState,
    /// The CRLF after chunk data was assumed, not seen (see [`Chunked::skip_data`]); cleared
    /// once the next size line parses.
    guessed: bool,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: ChunkedState::Size {
                value: 0,
                digits: 0,
            },
            guessed: false,
        }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkedState::Done
    }

    /// Skips unseen bytes. Inside chunk data that is exact. A writer that sends one chunk per
    /// syscall ends each syscall with the CRLF after the data, so a gap running one or two
    /// bytes past the data is taken to be that CRLF: the common case of chunks larger than
    /// the capture stays in sync. If the guess was wrong, the next size line fails to parse
    /// and the body loses sync as if the guess had not been made.
    fn skip_data(&mut self, gap: u64) -> bool {
        let past_data = match self.state {
            ChunkedState::Data { remaining } if gap <= remaining => {
                self.state = if gap == remaining {
                    ChunkedState::DataCr
                } else {
                    ChunkedState::Data {
                        remaining: remaining - gap,
                    }
                };
                return true;
            }
            ChunkedState::Data { remaining } => gap - remaining,
            ChunkedState::DataCr => gap,
            ChunkedState::DataLf => gap.saturating_add(1),
            _ => return false,
        };
        self.state = match past_data {
            1 => ChunkedState::DataLf,
            2 => ChunkedState::Size {
                value: 0,
                digits: 0,
            },
            _ => return false,
        };
        self.guessed = true;
        true
    }

    /// Consumes bytes up to the end of the body; returns how many it took.
    fn feed(&mut self, data: &[u8]) -> Result<usize, ChunkedFailure> {
        let mut pos = 0;
        while pos < data.len() && self.state != ChunkedState::Done {
            if let ChunkedState::Data { remaining } = self.state {
                let take = min(remaining, (data.len() - pos) as u64);
                pos += take as usize;
                self.state = if take == remaining {
                    ChunkedState::DataCr
                } else {
                    ChunkedState::Data {
                        remaining: remaining - take,
                    }
                };
                continue;
            }
            self.state = match step(self.state, data[pos]) {
                Ok(state) => state,
                Err(e) if self.guessed => return Err(ChunkedFailure::GuessedWrong(e)),
                Err(e) => return Err(ChunkedFailure::Malformed(e)),
            };
            if matches!(
                self.state,
                ChunkedState::Data { .. } | ChunkedState::TrailerStart { .. }
            ) {
                self.guessed = false;
            }
            pos += 1;
        }
        Ok(pos)
    }
}

/// One framing byte (anything but chunk data).
fn step(state: ChunkedState, b: u8) -> Result<ChunkedState, ChunkedError> {
    use ChunkedState::*;
    let after_size_line = |value: u64| {
        if value == 0 {
            TrailerStart { used: 0 }
        } else {
            Data { remaining: value }
        }
    };
    Ok(match state {
        Size { value, digits } => match b {
            _ if b.is_ascii_hexdigit() => {
                if digits >= MAX_CHUNK_SIZE_DIGITS {
                    return Err(ChunkedError::SizeOverflow);
                }
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    _ => b - b'A' + 10,
                };
                let value = value
                    .checked_mul(16)
                    .and_then(|v| v.checked_add(u64::from(digit)))
                    .ok_or(ChunkedError::SizeOverflow)?;
                Size {
                    value,
                    digits: digits + 1,
                }
            }
            _ if digits == 0 => return Err(ChunkedError::InvalidSize),
            b' ' | b'\t' => SizeTail {
                value,
                in_ext: false,
                ext_len: 0,
            },
            b';' => SizeTail {
                value,
                in_ext: true,
                ext_len: 0,
            },
            b'\r' => SizeLf { value },
            b'\n' => after_size_line(value),
            _ => return Err(ChunkedError::InvalidSize),
        },
        SizeTail {
            value,
            in_ext,
            ext_len,
        } => match b {
            b'\r' => SizeLf { value },
            b'\n' => after_size_line(value),
            b' ' | b'\t' if !in_ext => state,
            b';' if !in_ext => SizeTail {
                value,
                in_ext: true,
                ext_len: 0,
            },
            _ if in_ext => {
                if ext_len >= MAX_CHUNK_EXT_BYTES {
                    return Err(ChunkedError::ExtensionTooLong);
                }
                SizeTail {
                    value,
                    in_ext,
                    ext_len: ext_len + 1,
                }
            }
            _ => return Err(ChunkedError::InvalidSize),
        },
        SizeLf { value } => match b {
            b'\n' => after_size_line(value),
            _ => return Err(ChunkedError::InvalidSize),
        },
        DataCr => match b {
            b'\r' => DataLf,
            b'\n' => Size {
                value: 0,
                digits: 0,
            },
            _ => return Err(ChunkedError::MissingCrlf),
        },
        DataLf => match b {
            b'\n' => Size {
                value: 0,
                digits: 0,
            },
            _ => return Err(ChunkedError::MissingCrlf),
        },
        TrailerStart { used } => match b {
            b'\r' => TrailerEndLf,
            b'\n' => Done,
            _ => TrailerLine { used: used + 1 },
        },
        TrailerLine { used } => {
            if used >= MAX_TRAILER_BYTES {
                return Err(ChunkedError::TrailerTooLong);
            }
            match b {
                b'\n' => TrailerStart { used: used + 1 },
                _ => TrailerLine { used: used + 1 },
            }
        }
        TrailerEndLf => match b {
            b'\n' => Done,
            _ => return Err(ChunkedError::MissingCrlf),
        },
        // Data and Done never reach here; keep them inert rather than panic.
        Data { .. } | Done => state,
    })
}
