//! Request and response heads (start line and header lines) parsed from arbitrary bytes.
//!
//! Input layout: byte 0 picks the limits, byte 1 where to cut the head for the streaming
//! check, the rest is the head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe::protocol::http1::head::{
    Head, HeadParse, MAX_BEGINNING, RequestHead, ResponseHead, could_begin_message,
    looks_like_request_start, looks_like_response_start,
};
use loupe::protocol::http1::{HeaderField, Http1Limits, KeepHeaders, MAX_HEADER_VALUE_BYTES};

fn limits(selector: u8) -> Http1Limits {
    match selector % 4 {
        0 => Http1Limits::default(),
        1 => Http1Limits {
            max_header_bytes: 64,
            max_headers: 2,
            max_pending_requests: 1,
            keep_headers: KeepHeaders::All,
        },
        2 => Http1Limits {
            max_header_bytes: 512,
            max_headers: 0,
            max_pending_requests: 1,
            keep_headers: KeepHeaders::All,
        },
        _ => Http1Limits {
            max_header_bytes: usize::MAX,
            max_headers: usize::MAX,
            max_pending_requests: usize::MAX,
            keep_headers: KeepHeaders::All,
        },
    }
}

/// What both head kinds must satisfy; `fields` gives the headers of a parsed head.
fn check<H: Head + std::fmt::Debug>(
    buf: &[u8],
    split: usize,
    limits: &Http1Limits,
    fields: impl Fn(&H) -> &[HeaderField],
) {
    match H::parse(buf, limits) {
        HeadParse::Complete(head, len) => {
            assert!(len <= buf.len(), "head longer than its input");
            assert!(len <= limits.max_header_bytes, "head over the byte limit");
            let headers = fields(&head);
            assert!(headers.len() <= limits.max_headers);
            for (name, value) in headers {
                assert!(name.len() <= MAX_HEADER_VALUE_BYTES);
                assert!(value.len() <= MAX_HEADER_VALUE_BYTES);
                assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name}");
            }
            // The head alone parses the same, and a head cut anywhere is incomplete rather
            // than wrong: the stream parser relies on both when heads span syscalls.
            assert!(matches!(H::parse(&buf[..len], limits), HeadParse::Complete(_, l) if l == len));
            if len > 0 {
                // Near the start, near the end (where the empty line is) and in proportion.
                for cut in [split % len, len - 1 - split % len, split * len / 256] {
                    let prefix = H::parse(&buf[..cut], limits);
                    assert!(
                        matches!(prefix, HeadParse::Partial),
                        "prefix of {cut} bytes of a {len}-byte head: {prefix:?}"
                    );
                }
            }
        }
        HeadParse::Partial | HeadParse::Invalid(_) => {}
    }
    // Salvaging a cut head must never panic; what it returns is marked as cut.
    let _ = H::salvage(buf, limits);
}

fuzz_target!(|data: &[u8]| {
    let [selector, split, buf @ ..] = data else {
        return;
    };
    let limits = limits(*selector);
    let split = usize::from(*split);
    check::<RequestHead>(buf, split, &limits, |h| &h.request.headers);
    check::<ResponseHead>(buf, split, &limits, |h| &h.response.headers);
    if let Some(head) = RequestHead::salvage(buf, &limits) {
        assert!(head.request.head_truncated);
        assert!(head.request.headers.len() <= limits.max_headers);
    }
    if let Some(head) = ResponseHead::salvage(buf, &limits) {
        assert!(head.response.head_truncated);
    }
    // A chunk cannot start both a request and a response.
    assert!(!(looks_like_request_start(buf) && looks_like_response_start(buf)));
    // What detection holds back for the next chunk is a short beginning without a line end
    // that neither check took: held pieces stay bounded however the writes are split.
    if could_begin_message(buf) {
        assert!(!looks_like_request_start(buf) && !looks_like_response_start(buf));
        let start = buf.iter().position(|&b| b != b'\r' && b != b'\n');
        let rest = &buf[start.expect("a beginning has bytes")..];
        assert!(
            rest.len() <= MAX_BEGINNING && !rest.contains(&b'\n'),
            "{rest:?}"
        );
    }
});
