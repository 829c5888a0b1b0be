//! Turning raw ring-buffer records into typed events. The kernel is trusted to write
//! well-formed records, but a version mismatch or a bug must show up as a counted error,
//! never as a panic or a misread.

use std::mem::size_of;

use loupe_common::{
    ClientContextEvent, CloseEvent, ConnEvent, DataEventHeader, EventKind, ExecEvent, MAX_CAPTURE,
    ServerContextEvent,
};

#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    ConnOpen(ConnEvent),
    Data {
        header: DataEventHeader,
        payload: &'a [u8],
    },
    ConnClose(CloseEvent),
    ProcessExec(ExecEvent),
    /// The ids the kernel gave the server span of the request in the next data record of
    /// the same thread and connection (`--inject-traceparent`).
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "read by trace linking, which is wired separately")
    )]
    ServerContext(ServerContextEvent),
    /// The ids of the `traceparent` the kernel added to the next request this thread
    /// writes on the connection in `tuple` (`--inject-traceparent`).
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "read by trace linking, which is wired separately")
    )]
    ClientContext(ClientContextEvent),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record of kind {kind:?} is {len} bytes, shorter than its header")]
    TooShort { kind: EventKind, len: usize },
    #[error("data record claims {claimed} payload bytes but carries {carried}")]
    PayloadLength { claimed: usize, carried: usize },
}

fn read<T: Copy>(bytes: &[u8], kind: EventKind) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::TooShort {
            kind,
            len: bytes.len(),
        });
    }
    // SAFETY: the length was checked, T is a plain-old-data layout from loupe-common, and
    // read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let &first = bytes.first().ok_or(DecodeError::Empty)?;
    let kind = EventKind::from_u8(first).ok_or(DecodeError::UnknownKind(first))?;
    match kind {
        EventKind::ConnOpen => Ok(Event::ConnOpen(read(bytes, kind)?)),
        EventKind::ConnClose => Ok(Event::ConnClose(read(bytes, kind)?)),
        EventKind::ProcessExec => Ok(Event::ProcessExec(read(bytes, kind)?)),
        EventKind::ServerContext => Ok(Event::ServerContext(read(bytes, kind)?)),
        EventKind::ClientContext => Ok(Event::ClientContext(read(bytes, kind)?)),
        EventKind::Data => {
            let header: DataEventHeader = read(bytes, kind)?;
            let claimed = header.captured_len as usize;
            let rest = &bytes[size_of::<DataEventHeader>()..];
            // The ring buffer rounds records up to 8 bytes, so trailing padding is fine.
            if claimed > MAX_CAPTURE || claimed > rest.len() || claimed as u64 > header.total_len {
                return Err(DecodeError::PayloadLength {
                    claimed,
                    carried: rest.len(),
                });
            }
            Ok(Event::Data {
                header,
                payload: &rest[..claimed],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_common::direction;

    fn as_bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: test helper over plain-old-data structs.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn data_header(captured: u32, total: u64) -> DataEventHeader {
        DataEventHeader {
            kind: EventKind::Data as u8,
            direction: direction::INGRESS,
            flags: 0,
            _pad: 0,
            tgid: 10,
            tid: 11,
            fd: 3,
            conn_id: 99,
            start_ns: 1,
            end_ns: 2,
            total_len: total,
            captured_len: captured,
            _pad2: 0,
        }
    }

    #[test]
    fn decodes_data_with_payload() {
        let mut bytes = as_bytes(&data_header(5, 100));
        bytes.extend_from_slice(b"GET /xxx");
        match decode(&bytes) {
            Ok(Event::Data { header, payload }) => {
                assert_eq!(payload, b"GET /");
                assert_eq!(header.total_len, 100);
                assert_eq!(header.tgid, 10);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_payload_longer_than_record() {
        let mut bytes = as_bytes(&data_header(50, 100));
        bytes.extend_from_slice(b"short");
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::PayloadLength {
                claimed: 50,
                carried: 5
            }
        );
    }

    #[test]
    fn rejects_capture_larger_than_moved() {
        let mut bytes = as_bytes(&data_header(5, 4));
        bytes.extend_from_slice(b"abcde");
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::PayloadLength { .. })
        ));
    }

    #[test]
    fn rejects_truncated_and_unknown_records() {
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Empty);
        assert_eq!(
            decode(&[42, 0, 0]).unwrap_err(),
            DecodeError::UnknownKind(42)
        );
        assert!(matches!(
            decode(&[EventKind::ConnOpen as u8, 0, 0, 0]),
            Err(DecodeError::TooShort { .. })
        ));
        let header = as_bytes(&data_header(0, 1));
        assert!(matches!(
            decode(&header[..20]),
            Err(DecodeError::TooShort { .. })
        ));
    }

    #[test]
    fn decodes_exec_and_close() {
        let exec = ExecEvent {
            kind: EventKind::ProcessExec as u8,
            _pad: [0; 3],
            tgid: 77,
            ts_ns: 5,
        };
        assert!(matches!(decode(&as_bytes(&exec)), Ok(Event::ProcessExec(e)) if e.tgid == 77));
        let close = CloseEvent {
            kind: EventKind::ConnClose as u8,
            _pad: [0; 3],
            tgid: 1,
            tid: 2,
            fd: 3,
            conn_id: 4,
            ts_ns: 5,
        };
        assert!(matches!(decode(&as_bytes(&close)), Ok(Event::ConnClose(c)) if c.fd == 3));
    }

    fn server_context() -> ServerContextEvent {
        ServerContextEvent {
            kind: EventKind::ServerContext as u8,
            trace_flags: 1,
            _pad: [0; 2],
            tgid: 40,
            tid: 41,
            fd: 7,
            conn_id: 1234,
            ts_ns: 99,
            trace_id: [0x4b; 16],
            span_id: [0x11; 8],
            parent_span_id: [0x22; 8],
        }
    }

    fn client_context() -> ClientContextEvent {
        ClientContextEvent {
            kind: EventKind::ClientContext as u8,
            trace_flags: 1,
            _pad: [0; 2],
            tgid: 50,
            tid: 51,
            _pad2: 0,
            ts_ns: 7,
            trace_id: [0xab; 16],
            span_id: [0x33; 8],
            parent_span_id: [0; 8],
            tuple: loupe_common::ConnTuple {
                local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                remote_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                local_port: 40000,
                remote_port: 8080,
                family: loupe_common::AF_INET,
                _pad: 0,
                netns: 4026531840,
                _pad2: [0; 4],
            },
        }
    }

    #[test]
    fn decodes_server_context() {
        let bytes = as_bytes(&server_context());
        match decode(&bytes) {
            Ok(Event::ServerContext(c)) => {
                assert_eq!((c.tgid, c.tid, c.fd, c.conn_id), (40, 41, 7, 1234));
                assert_eq!(c.trace_id, [0x4b; 16]);
                assert_eq!(c.span_id, [0x11; 8]);
                assert_eq!(c.parent_span_id, [0x22; 8]);
                assert_eq!(c.trace_flags, 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_client_context_with_ring_padding() {
        let mut bytes = as_bytes(&client_context());
        // The ring buffer rounds records up to 8 bytes; trailing bytes are ignored.
        bytes.extend_from_slice(&[0; 8]);
        match decode(&bytes) {
            Ok(Event::ClientContext(c)) => {
                assert_eq!((c.tgid, c.tid), (50, 51));
                assert_eq!(c.trace_id, [0xab; 16]);
                assert_eq!(c.span_id, [0x33; 8]);
                assert_eq!(c.parent_span_id, [0; 8]);
                assert_eq!(c.tuple.remote_port, 8080);
                assert_eq!(c.tuple.family, loupe_common::AF_INET);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_truncated_context_records() {
        let server = as_bytes(&server_context());
        assert_eq!(
            decode(&server[..63]).unwrap_err(),
            DecodeError::TooShort {
                kind: EventKind::ServerContext,
                len: 63
            }
        );
        let client = as_bytes(&client_context());
        assert_eq!(
            decode(&client[..40]).unwrap_err(),
            DecodeError::TooShort {
                kind: EventKind::ClientContext,
                len: 40
            }
        );
        assert!(matches!(
            decode(&[EventKind::ClientContext as u8]),
            Err(DecodeError::TooShort { .. })
        ));
    }
}
