//! Whether a server's first write buffer is a whole response head after which only that
//! response's body can follow: the condition for leaving the rest of the call uncopied.

/// Whether the first `len` bytes of `data` are a whole response head whose status may
/// carry a body: they begin like a status line (`HTTP/1.1 200 \r\n\r\n` is the shortest)
/// and end with the blank line, and the status is none of 1xx, 204 and 304. What follows
/// a response without a body (an interim 100 and then the final response, or the next
/// pipelined response) is no body, and must be copied.
#[inline(always)]
pub fn heads_a_body<const N: usize>(data: &[u8; N], len: usize) -> bool {
    if len < 17 || len > N {
        return false;
    }
    let [class, tens, units] = [data[9], data[10], data[11]];
    let bodiless = (class == b'2' || class == b'3') && tens == b'0' && units == b'4';
    if !(b'2'..=b'5').contains(&class) || bodiless {
        return false;
    }
    // black_box and the clamp: the verifier must see the bound, which LLVM could fold away.
    let last = core::hint::black_box(len) - 4;
    let last = if last > N - 4 { N - 4 } else { last };
    let tail = u32::from_ne_bytes([data[last], data[last + 1], data[last + 2], data[last + 3]]);
    let start = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
    tail == u32::from_ne_bytes(*b"\r\n\r\n") && start == u32::from_ne_bytes(*b"HTTP")
}

#[cfg(test)]
mod tests {
    use loupe_common::SMALL_CAPTURE;

    use super::heads_a_body;

    /// `bytes` at the start of a small record's data, as the probe copies a first buffer.
    fn holding(bytes: &[u8]) -> [u8; SMALL_CAPTURE] {
        let mut data = [0u8; SMALL_CAPTURE];
        data[..bytes.len()].copy_from_slice(bytes);
        data
    }

    #[test]
    fn only_a_whole_head_of_a_response_with_a_body_stops_the_copy() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
        assert!(heads_a_body(&holding(head), head.len()));
        let shortest = b"HTTP/1.1 200 \r\n\r\n";
        assert!(heads_a_body(&holding(shortest), shortest.len()));
        // The first buffer holds only part of the head (split inside the status line or
        // between headers): the rest must be copied.
        assert!(!heads_a_body(&holding(head), 12));
        assert!(!heads_a_body(&holding(head), head.len() - 2));
        // A request, a body that happens to end with a blank line, too little to tell.
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(!heads_a_body(&holding(request), request.len()));
        let chunk_end = b"5\r\nhello\r\n0\r\n\r\n";
        assert!(!heads_a_body(&holding(chunk_end), chunk_end.len()));
        assert!(!heads_a_body(&holding(b"HTTP\r\n\r\n"), 8));
        assert!(!heads_a_body(&holding(b""), 0));
        // Responses without a body: what follows them is another response.
        for status in [
            "100 Continue",
            "101 Switching Protocols",
            "204 No Content",
            "304 Not Modified",
        ] {
            let head = format!("HTTP/1.1 {status}\r\nServer: x\r\n\r\n");
            assert!(
                !heads_a_body(&holding(head.as_bytes()), head.len()),
                "{status}"
            );
        }
        for status in [
            "200 OK",
            "201 Created",
            "301 Moved",
            "404 Not Found",
            "503 Busy",
        ] {
            let head = format!("HTTP/1.1 {status}\r\nServer: x\r\n\r\n");
            assert!(
                heads_a_body(&holding(head.as_bytes()), head.len()),
                "{status}"
            );
        }
    }

    #[test]
    fn a_head_longer_than_the_buffer_is_not_whole() {
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(!heads_a_body(&holding(head), SMALL_CAPTURE + 1));
    }
}
