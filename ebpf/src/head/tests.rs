//! Host tests of the head scans (`cargo test -p loupe-ebpf`): the same code the kernel
//! runs, with `bpf_loop` replaced by a plain loop.

use super::*;

/// Bytes in ordinary memory, read through the packet accessor (pointer + end).
fn packet(bytes: &[u8]) -> PacketBytes {
    PacketBytes {
        data: bytes.as_ptr() as usize,
        end: bytes.as_ptr() as usize + bytes.len(),
    }
}

fn empty_lines() -> HeadLines {
    HeadLines {
        ends: [0; MAX_LINES],
        count: 0,
        head_end: 0,
    }
}

/// Runs pass one over `bytes` (through both accessors, which must agree) and returns
/// (line ends, head end).
fn lines_of(bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut lines = empty_lines();
    let pkt = packet(bytes);
    find_lines(&pkt, bytes.len(), &mut lines);
    let from_packet = (
        (0..line_count(&lines))
            .map(|k| lines.ends[k] as usize)
            .collect::<Vec<_>>(),
        head_end(&lines),
    );
    let mut buf = Box::new([0u8; 8192]);
    let n = bytes.len().min(4096);
    buf[..n].copy_from_slice(&bytes[..n]);
    let map = MapBytes { buf: &buf, len: n };
    let mut lines = empty_lines();
    find_lines(&map, n, &mut lines);
    let from_map = (
        (0..line_count(&lines))
            .map(|k| lines.ends[k] as usize)
            .collect::<Vec<_>>(),
        head_end(&lines),
    );
    assert_eq!(from_packet, from_map, "both accessors see the same lines");
    from_packet
}

#[test]
fn methods_are_recognised_exactly() {
    for yes in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"POST /x HTTP/1.1\r\n",
        b"PUT /",
        b"DELETE /a HTTP/1.0\r\n",
        b"HEAD / HTTP/1.1\r\n",
        b"PATCH /p HTTP/1.1\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"GET ",
    ] {
        assert!(
            starts_with_method(&packet(yes)),
            "{:?}",
            String::from_utf8_lossy(yes)
        );
    }
    for no in [
        &b"get / HTTP/1.1\r\n"[..],
        b"GETX / HTTP/1.1\r\n",
        b"CONNECT host:443 HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n",
        b"GET",
        b"GE",
        b"",
        b"\x16\x03\x01\x02\x00\x01\x00\x01",
    ] {
        assert!(
            !starts_with_method(&packet(no)),
            "{:?}",
            String::from_utf8_lossy(no)
        );
    }
}

#[test]
fn a_method_continued_after_its_first_letter_read_alone() {
    for (first, rest) in [
        (b'G', &b"ET / HTTP/1.1\r\n"[..]),
        (b'P', b"OST /x HTTP/1.1\r\n"),
        (b'P', b"UT /"),
        (b'D', b"ELETE /a HTTP/1.0\r\n"),
        (b'O', b"PTIONS * HTTP/1.1\r\n"),
        (b'G', b"ET "),
    ] {
        let (whole, rest_text) = ([&[first][..], rest].concat(), String::from_utf8_lossy(rest));
        assert!(starts_with_method(&packet(&whole)), "{rest_text:?}");
        assert!(continues_method(first, &packet(rest)), "{rest_text:?}");
        assert!(!starts_with_method(&packet(rest)), "{rest_text:?}");
    }
    for (first, rest) in [
        (b'G', &b"GET / HTTP/1.1\r\n"[..]),
        (b'X', b"ET / HTTP/1.1\r\n"),
        (b'g', b"ET / HTTP/1.1\r\n"),
        (b'P', b"ET / HTTP/1.1\r\n"),
        (b'G', b"ETX / HTTP/1.1\r\n"),
        (b'G', b"ET"),
        (b'G', b""),
        (b'H', b"TTP/1.1 200 OK\r\n"),
    ] {
        assert!(
            !continues_method(first, &packet(rest)),
            "{:?} then {:?}",
            first as char,
            String::from_utf8_lossy(rest)
        );
    }
}

#[test]
fn status_lines() {
    assert!(starts_with_status_line(&packet(b"HTTP/1.1 200 OK\r\n")));
    assert!(starts_with_status_line(&packet(b"HTTP/1.0 404 x")));
    assert!(!starts_with_status_line(&packet(b"HTTP/2 200")));
    assert!(!starts_with_status_line(&packet(b"HTTP/1")));
}

#[test]
fn newlines_are_found_in_every_position_of_a_step() {
    let word = |bytes: [u8; 8]| u64::from_le_bytes(bytes);
    assert!(!has_newline(word(*b"abcdefgh")));
    for at in 0..8 {
        let mut bytes = *b"abcdefgh";
        bytes[at] = b'\n';
        assert!(has_newline(word(bytes)), "newline at {at}");
    }
    // Bytes next to '\n' in value must not look like it.
    assert!(!has_newline(word([
        0x0b,
        0x09,
        0x8a,
        0x0a ^ 0x80,
        0,
        0xff,
        0x0c,
        0x1a
    ])));
}

#[test]
fn a_complete_head_and_its_lines() {
    let head = b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
    let (ends, end) = lines_of(head);
    assert_eq!(ends, vec![16, 25, 38, 40]);
    assert_eq!(end, head.len());
    let mut lines = empty_lines();
    find_lines(&packet(head), head.len(), &mut lines);
    assert_eq!(request_line_end(&packet(head), &lines), Some(17));
    assert_eq!(line_start(&lines, 1), 17);
    assert_eq!(line_start(&lines, 2), 26);
}

#[test]
fn the_head_ends_at_the_blank_line_whatever_follows() {
    let message = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\r\n\r\n";
    let (_, end) = lines_of(message);
    assert_eq!(end, message.len() - 9);
    // Bare LF heads end too (the request line check is what rejects them).
    let (_, end) = lines_of(b"GET / HTTP/1.1\nHost: x\n\nbody");
    assert_eq!(end, 24);
}

#[test]
fn split_and_oversized_heads_have_no_end() {
    for len in 1..40 {
        let head = b"GET /split HTTP/1.1\r\nHost: example\r\n\r\n";
        if len < head.len() {
            let (_, end) = lines_of(&head[..len]);
            assert_eq!(end, 0, "cut at {len}");
        }
    }
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(5000));
    assert_eq!(lines_of(big.as_bytes()).1, 0);
    let many: String = core::iter::once("GET / HTTP/1.1\r\n".to_string())
        .chain((0..40).map(|i| format!("X-{i}: v\r\n")))
        .chain(core::iter::once("\r\n".to_string()))
        .collect();
    let (ends, end) = lines_of(many.as_bytes());
    assert_eq!(ends.len(), MAX_LINES);
    assert_eq!(
        end, 0,
        "more lines than the table holds: not a complete head"
    );
}

#[test]
fn request_line_must_be_http1() {
    let check = |bytes: &[u8]| {
        let mut lines = empty_lines();
        find_lines(&packet(bytes), bytes.len(), &mut lines);
        request_line_end(&packet(bytes), &lines)
    };
    assert_eq!(check(b"GET / HTTP/1.1\r\n\r\n"), Some(16));
    assert_eq!(check(b"GET / HTTP/1.0\r\n\r\n"), Some(16));
    assert_eq!(check(b"GET key\r\n"), None);
    assert_eq!(check(b"GET / HTTP/2.0\r\n\r\n"), None);
    assert_eq!(check(b"GET / HTTP/1.1\n\n"), None, "bare LF");
    assert_eq!(check(b"GET / HTTP/1.2\r\n\r\n"), None);
    assert_eq!(check(b"GET /HTTP/1.1\r\n\r\n"), None);
    assert_eq!(check(b"GET / HTTP/1.1"), None, "no line yet");
}

#[test]
fn header_names_ignore_case() {
    let name = |s: &str| {
        let mut out = [0u8; NAME_WINDOW];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    };
    assert!(name_is(&name("traceparent: 00"), TRACEPARENT));
    assert!(name_is(&name("TraceParent:"), TRACEPARENT));
    assert!(name_is(&name("TRACEPARENT:"), TRACEPARENT));
    assert!(!name_is(&name("traceparents:"), TRACEPARENT));
    assert!(!name_is(&name("tracestate: a=b"), TRACEPARENT));
    assert!(!name_is(&name("traceparent :"), TRACEPARENT));
    assert!(name_is(&name("Content-Length: 5"), CONTENT_LENGTH));
    assert!(name_is(&name("TRANSFER-ENCODING:"), TRANSFER_ENCODING));
    assert!(!name_is(&name("Content-Type: x"), CONTENT_LENGTH));
}

#[test]
fn content_length_values() {
    let parse = |value: &str| {
        let line = format!("content-length:{value}\r\n\r\n");
        parse_decimal(&packet(line.as_bytes()), CONTENT_LENGTH.len())
    };
    assert_eq!(parse(" 42"), Some(42));
    assert_eq!(parse("0"), Some(0));
    assert_eq!(parse("\t\t 7"), Some(7));
    assert_eq!(parse(" 1125899906842624"), Some(1 << 50));
    assert_eq!(parse(" 1125899906842625"), None, "over the limit");
    assert_eq!(parse(" 12345678901234567"), None, "too many digits");
    assert_eq!(parse(" 12a"), None);
    assert_eq!(parse(" -1"), None);
    assert_eq!(parse(" "), None);
    assert_eq!(parse(" 4 2"), None);
    // Cut before the CR: not known to be complete.
    assert_eq!(parse_decimal(&packet(b"content-length: 42"), 15), None);
}

fn parse_value(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut raw = [0u8; TRACEPARENT_BUF];
    let bytes = value.as_bytes();
    let n = bytes.len().min(TRACEPARENT_COPY);
    raw[..n].copy_from_slice(&bytes[..n]);
    let (mut trace, mut span, mut flags) = ([0u8; 16], [0u8; 8], 0u8);
    parse_traceparent(&raw, &mut trace, &mut span, &mut flags).then_some((trace, span, flags))
}

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_valid_traceparent_is_parsed() {
    for prefix in ["", " ", "\t", "  "] {
        let (trace, span, flags) =
            parse_value(&format!("{prefix}{VALID}\r\n")).expect("valid traceparent");
        assert_eq!(
            trace,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(span, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(flags, 1);
    }
    assert!(
        parse_value(&format!(" {VALID} \r\n")).is_some(),
        "trailing space"
    );
    // A later version may add fields after the flags.
    let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra\r\n";
    assert_eq!(parse_value(future).map(|(_, _, f)| f), Some(9));
}

#[test]
fn invalid_traceparents_are_ignored() {
    for bad in [
        VALID.to_uppercase(),
        VALID.replacen("00-", "ff-", 1),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736x00f067aa0ba902b7-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g".into(),
        format!("{VALID}-extra"),
        format!("   {VALID}"),
        String::new(),
    ] {
        assert!(
            parse_value(&format!("{bad}\r\n")).is_none(),
            "{bad:?} must not parse"
        );
    }
}

#[test]
fn hex_is_lowercase_and_complete() {
    let mut out = [b'.'; 8];
    write_hex::<3>(&mut out, 1, &[0x00, 0xab, 0x9f]);
    assert_eq!(&out, b".00ab9f.");
    // Never writes past the buffer.
    let mut short = [0u8; 3];
    write_hex::<2>(&mut short, 1, &[0xff, 0xff]);
    assert_eq!(&short, &[0, b'f', b'f']);
}

#[test]
fn map_reads_never_wrap_past_the_window() {
    let mut buf = Box::new([0u8; 8192]);
    buf[..4].copy_from_slice(b"GET ");
    let map = MapBytes {
        buf: &buf,
        len: 4096,
    };
    assert!(map.array::<4>(0).is_some());
    assert_eq!(map.array::<4>(4094), None);
    assert_eq!(map.array::<4>(4096), None, "not bytes 0..4 again");
    let mut out = [0u8; 8];
    assert!(!map.copy_into(4100, 4, &mut out));
    assert_eq!(map.byte(4096), None);
}
