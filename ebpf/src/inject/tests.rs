//! Host tests of the header scan and the inserted line (`cargo test -p loupe-ebpf`).

use super::*;

fn state() -> SocketInjectState {
    EMPTY_STATE
}

/// Runs both passes over a head as the `sk_msg` program does; returns the facts and the
/// `Content-Length`.
fn facts_of(head: &[u8]) -> (u32, u64) {
    let bytes = PacketBytes {
        data: head.as_ptr() as usize,
        end: head.as_ptr() as usize + head.len(),
    };
    let mut state = state();
    find_lines(&bytes, head.len(), &mut state.lines);
    assert_ne!(head_end(&state.lines), 0, "a complete head");
    scan_headers(&bytes, &mut state);
    (state.facts, state.content_length)
}

#[test]
fn plain_get_has_no_facts() {
    assert_eq!(
        facts_of(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"),
        (0, 0)
    );
}

#[test]
fn traceparent_is_found_in_any_case_and_position() {
    for head in [
        &b"GET / HTTP/1.1\r\ntraceparent: x\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nTRACEPARENT: 00-x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nTraceParent:1\r\n\r\n",
        // Even an empty or short one last in the head: a second would be sent otherwise.
        b"GET / HTTP/1.1\r\nHost: x\r\ntraceparent:\r\n\r\n",
    ] {
        assert_eq!(facts_of(head).0 & fact::TRACEPARENT, fact::TRACEPARENT);
    }
    // tracestate alone is not traceparent.
    assert_eq!(
        facts_of(b"GET / HTTP/1.1\r\ntracestate: a=b\r\nHost: x\r\n\r\n").0,
        0
    );
}

#[test]
fn body_framing() {
    assert_eq!(
        facts_of(b"POST / HTTP/1.1\r\nContent-Length: 3000\r\nHost: x\r\n\r\n"),
        (fact::LENGTH, 3000)
    );
    assert_eq!(
        facts_of(b"POST / HTTP/1.1\r\ncontent-length:0\r\n\r\n"),
        (fact::LENGTH, 0)
    );
    let (facts, _) = facts_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(facts, fact::CHUNKED);
}

#[test]
fn malformed_or_ambiguous_lengths() {
    let (facts, _) = facts_of(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    assert_ne!(facts & fact::MALFORMED, 0, "a second Content-Length");
    let (facts, _) = facts_of(b"POST / HTTP/1.1\r\nContent-Length: five\r\n\r\n");
    assert_ne!(facts & fact::MALFORMED, 0);
    let (facts, _) = facts_of(b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n");
    assert_ne!(facts & fact::MALFORMED, 0, "empty value, last in the head");
}

#[test]
fn a_second_scan_starts_afresh() {
    let bytes_of = |head: &'static [u8]| PacketBytes {
        data: head.as_ptr() as usize,
        end: head.as_ptr() as usize + head.len(),
    };
    let first: &[u8] = b"POST / HTTP/1.1\r\ntraceparent: x\r\nContent-Length: 9\r\n\r\n";
    let second: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut state = state();
    find_lines(&bytes_of(first), first.len(), &mut state.lines);
    scan_headers(&bytes_of(first), &mut state);
    assert_eq!(state.facts, fact::TRACEPARENT | fact::LENGTH);
    find_lines(&bytes_of(second), second.len(), &mut state.lines);
    scan_headers(&bytes_of(second), &mut state);
    assert_eq!((state.facts, state.content_length), (0, 0));
}

#[test]
fn the_inserted_line() {
    let trace = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    let span = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
    let line = header_line(&trace, &span, 1);
    assert_eq!(
        &line[..],
        b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    );
    assert_eq!(header_line(&trace, &span, 0)[66..68], *b"00");
}
