//! Recognising HTTP/1.x from the first bytes of a connection.

use super::{GET, OK_HELLO};
use crate::protocol::{Chunk, Direction, Role, detect_http1, may_begin_http1};

/// One syscall that moved `total_len` bytes, of which `bytes` were captured.
fn chunk(direction: Direction, bytes: &[u8], total_len: u64) -> Chunk<'_> {
    Chunk {
        direction,
        start_ns: 1,
        end_ns: 2,
        tid: 1,
        bytes,
        total_len,
    }
}

fn detect(direction: Direction, bytes: &[u8]) -> Option<Role> {
    detect_http1(&chunk(direction, bytes, bytes.len() as u64))
}

#[test]
fn request_read_is_server_and_written_is_client() {
    assert_eq!(detect(Direction::Ingress, GET), Some(Role::Server));
    assert_eq!(detect(Direction::Egress, GET), Some(Role::Client));
}

#[test]
fn response_read_is_client_and_written_is_server() {
    assert_eq!(detect(Direction::Ingress, OK_HELLO), Some(Role::Client));
    assert_eq!(detect(Direction::Egress, OK_HELLO), Some(Role::Server));
    assert_eq!(
        detect(Direction::Egress, b"HTTP/1.0 404\r\n\r\n"),
        Some(Role::Server)
    );
}

#[test]
fn other_methods_and_target_forms() {
    for line in [
        &b"POST /api/v1/items?x=1 HTTP/1.1\r\n"[..],
        b"OPTIONS * HTTP/1.1\r\n",
        b"CONNECT example.test:443 HTTP/1.1\r\n",
        b"GET http://example.test/ HTTP/1.0\r\n",
        b"M-SEARCH * HTTP/1.1\r\n",
        b"DELETE /x HTTP/1.1\n",
    ] {
        assert_eq!(
            detect(Direction::Ingress, line),
            Some(Role::Server),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn long_target_without_line_end_needs_a_known_method() {
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 2000));
    assert_eq!(detect(Direction::Ingress, &long), Some(Role::Server));
    let mut unknown = b"FROB /".to_vec();
    unknown.extend(std::iter::repeat_n(b'a', 2000));
    assert_eq!(detect(Direction::Ingress, &unknown), None);
}

#[test]
fn tls_client_hello_is_not_http() {
    let hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a, 0x1b, 0x2c, 0x3d,
        0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5, 0xc6, 0xd7, 0xe8, 0xf9,
    ];
    assert_eq!(detect(Direction::Egress, &hello), None);
    assert_eq!(detect(Direction::Ingress, &hello), None);
}

#[test]
fn redis_and_other_protocols_are_not_http() {
    for bytes in [
        &b"*1\r\n$4\r\nPING\r\n"[..],
        b"+PONG\r\n",
        b"PING\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"get / http/1.1\r\n",
        b"HTTP/2 200\r\n",
        b"HTTP/1.1 20",
        b"HTTP/1.1 abc OK\r\n",
        b"GET / HTTP/1.1x\r\n",
        b"GET",
        b"GET ",
    ] {
        assert_eq!(
            detect(Direction::Ingress, bytes),
            None,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn empty_chunk_is_not_http() {
    assert_eq!(detect(Direction::Ingress, b""), None);
    assert_eq!(detect(Direction::Egress, b"\r\n"), None);
}

fn may_begin(bytes: &[u8]) -> bool {
    may_begin_http1(&chunk(Direction::Egress, bytes, bytes.len() as u64))
}

#[test]
fn first_pieces_of_a_line_written_in_parts_may_begin_a_message() {
    for piece in [
        &b"G"[..],
        b"GE",
        b"GET",
        b"GET ",
        b"OPTIONS ",
        b"\r\nPOS",
        b"H",
        b"HTTP/1.",
        b"HTTP/1.1 ",
        b"HTTP/1.1 20",
    ] {
        assert_eq!(detect(Direction::Egress, piece), None, "{piece:?}");
        assert!(may_begin(piece), "{piece:?}");
    }
}

#[test]
fn other_short_bytes_are_not_held() {
    for bytes in [
        &b""[..],
        b"\r\n",
        b"get ",
        b"GETX",
        b"FOO ",
        b"GET \r\n",
        b"GET  ",
        b"G                    ",
        b"HTTP/2 ",
        b"HTTP/1.1 2x",
        b"HTTP/1.1 2000",
        b"\x16\x03\x01",
        b"*1\r\n$4\r\nPING\r\n",
    ] {
        assert!(!may_begin(bytes), "{bytes:?}");
    }
    // A piece whose bytes were not all captured cannot be joined to what follows.
    assert!(!may_begin_http1(&chunk(Direction::Egress, b"GET ", 9000)));
}
