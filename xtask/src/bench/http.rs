//! Just enough HTTP/1.1 client for the benchmark: response framing for the paced load
//! generator's keep-alive connections, and one-shot GETs for `/readyz`, `/metrics` and the
//! sink's `/count`.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Bounds what one response may occupy in memory.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("bad Content-Length")]
    BadLength,
    #[error("malformed chunked body")]
    BadChunk,
    #[error("response body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("connection closed before the response was complete")]
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BodyKind {
    Length(usize),
    Chunked,
    /// No framing header: the body runs until the server closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head {
    pub status: u16,
    pub head_len: usize,
    pub body: BodyKind,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Parses a response head from the start of `buf`; `None` until it is complete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf).map_err(HttpError::Head)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or(0);
    let mut body = if status == 204 || status == 304 || (100..200).contains(&status) {
        BodyKind::Length(0)
    } else {
        BodyKind::UntilClose
    };
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            if body != BodyKind::Chunked {
                let len = value.parse().map_err(|_| HttpError::BadLength)?;
                body = BodyKind::Length(len);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().ends_with("chunked") {
                body = BodyKind::Chunked;
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                close = true;
            } else if value.contains("keep-alive") {
                close = false;
            }
        }
    }
    if body == BodyKind::UntilClose {
        close = true;
    }
    Ok(Some(Head {
        status,
        head_len,
        body,
        close,
    }))
}

/// Decodes a chunked body at the start of `buf`. Returns the body and the bytes consumed
/// (trailers included), or `None` until the last chunk has arrived.
pub fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[pos..]) else {
            return Ok(None);
        };
        let line =
            std::str::from_utf8(&buf[pos..pos + line_end]).map_err(|_| HttpError::BadChunk)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| HttpError::BadChunk)?;
        pos += line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(end) = find_crlf(&buf[pos..]) else {
                    return Ok(None);
                };
                pos += end + 2;
                if end == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(HttpError::BodyTooLarge);
        }
        let Some(chunk_end) = pos.checked_add(size) else {
            return Err(HttpError::BodyTooLarge);
        };
        if buf.len() < chunk_end + 2 {
            return Ok(None);
        }
        if &buf[chunk_end..chunk_end + 2] != b"\r\n" {
            return Err(HttpError::BadChunk);
        }
        body.extend_from_slice(&buf[pos..chunk_end]);
        pos = chunk_end + 2;
    }
}

fn get_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    request
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A complete response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Splits a whole response read until the server closed.
pub fn parse_whole(buf: &[u8]) -> Result<Response, HttpError> {
    let head = parse_head(buf)?.ok_or(HttpError::Truncated)?;
    let rest = &buf[head.head_len..];
    let body = match head.body {
        BodyKind::Length(len) => rest.get(..len).ok_or(HttpError::Truncated)?.to_vec(),
        BodyKind::Chunked => decode_chunked(rest)?.ok_or(HttpError::Truncated)?.0,
        BodyKind::UntilClose => rest.to_vec(),
    };
    Ok(Response {
        status: head.status,
        body,
    })
}

/// `GET path` on a fresh connection that the request asks the server to close.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, HttpError> {
    get_with(addr, path, &[], timeout)
}

/// `get` with extra request headers, each written as `name: value`.
pub fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = get_request(addr, path, headers);
    stream.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_HEAD + MAX_BODY).unwrap_or(u64::MAX);
    (&mut stream).take(limit).read_to_end(&mut buf)?;
    parse_whole(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_with_length_and_keep_alive() {
        let raw = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n";
        let head = parse_head(raw).ok().flatten();
        assert_eq!(
            head,
            Some(Head {
                status: 200,
                head_len: raw.len() - 3,
                body: BodyKind::Length(3),
                close: false
            })
        );
    }

    #[test]
    fn head_split_anywhere_is_partial_until_complete() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        for cut in 0..raw.len() - 3 {
            assert!(matches!(parse_head(&raw[..cut]), Ok(None)), "cut at {cut}");
        }
        assert!(matches!(parse_head(raw), Ok(Some(_))));
    }

    #[test]
    fn connection_close_http10_and_unframed_bodies_close() {
        let close =
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert!(close.is_ok_and(|h| h.is_some_and(|h| h.close)));
        let old = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(old.is_ok_and(|h| h.is_some_and(|h| h.close)));
        let unframed = parse_head(b"HTTP/1.1 200 OK\r\n\r\n").ok().flatten();
        assert!(unframed.is_some_and(|h| h.close && h.body == BodyKind::UntilClose));
        let no_body = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .ok()
            .flatten();
        assert!(no_body.is_some_and(|h| !h.close && h.body == BodyKind::Length(0)));
    }

    #[test]
    fn malformed_and_oversized_heads_are_errors() {
        assert!(parse_head(b"SMTP ready\r\n\r\n").is_err());
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(HttpError::BadLength)
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        assert!(matches!(parse_head(&huge), Err(HttpError::HeadTooLarge)));
    }

    #[test]
    fn chunked_bodies_decode_and_wait_for_the_end() {
        let raw = b"4\r\nloup\r\n1;ext=1\r\ne\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let decoded = decode_chunked(raw).ok().flatten();
        assert_eq!(decoded, Some((b"loupe".to_vec(), raw.len() - 4)));
        for cut in 0..raw.len() - 4 {
            assert!(
                matches!(decode_chunked(&raw[..cut]), Ok(None)),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            decode_chunked(b"zz\r\n"),
            Err(HttpError::BadChunk)
        ));
        assert!(matches!(
            decode_chunked(b"2\r\nabXX"),
            Err(HttpError::BadChunk)
        ));
        assert!(matches!(
            decode_chunked(b"ffffffffffffffff\r\n"),
            Err(HttpError::BodyTooLarge)
        ));
    }

    #[test]
    fn whole_responses_of_each_framing() {
        let length = parse_whole(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n42");
        assert!(length.is_ok_and(|r| r.status == 200 && r.body == b"42"));
        let chunked = parse_whole(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n42\r\n0\r\n\r\n",
        );
        assert!(chunked.is_ok_and(|r| r.body == b"42"));
        let until_close = parse_whole(b"HTTP/1.1 503 Busy\r\n\r\nnot yet");
        assert!(until_close.is_ok_and(|r| r.status == 503 && r.body == b"not yet"));
        let truncated = parse_whole(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n42");
        assert!(matches!(truncated, Err(HttpError::Truncated)));
        assert!(matches!(
            parse_whole(b"HTTP/1.1 200"),
            Err(HttpError::Truncated)
        ));
    }

    #[test]
    fn extra_headers_go_between_host_and_close() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 80));
        assert_eq!(
            get_request(addr, "/a", &[("traceparent", "00-ab-cd-01")]),
            "GET /a HTTP/1.1\r\nHost: 127.0.0.1:80\r\ntraceparent: 00-ab-cd-01\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn get_against_a_local_server() {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            panic!("bind");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("addr");
        };
        let server = std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n17\n");
            }
        });
        let response = get(addr, "/count", Duration::from_secs(5));
        assert!(response.is_ok_and(|r| r.status == 200 && r.body == b"17\n"));
        let _ = server.join();
    }
}
