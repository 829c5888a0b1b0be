//! The wire end of the injection tests: a server that records every request byte for
//! byte, a sink for non-HTTP bytes, and a client that controls exactly how its bytes are
//! split into writes.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use crate::support::wait_until;

const WAIT: Duration = Duration::from_secs(20);

/// One request as the server read it off the wire.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which accepted connection it came on, in accept order.
    pub conn: usize,
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    pub fn path(&self) -> String {
        self.head_text()
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    /// Values of every `traceparent` header, whatever its case.
    pub fn traceparents(&self) -> Vec<String> {
        self.head_text()
            .split("\r\n")
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("traceparent")
                    .then(|| value.trim().to_string())
            })
            .collect()
    }

    /// The one traceparent loupe added, checked to sit right after the request line,
    /// be the only one and be well-formed; returns (trace id, span id, flags).
    pub fn injected(&self) -> (String, String, String) {
        let text = self.head_text();
        let parents = self.traceparents();
        assert_eq!(parents.len(), 1, "exactly one traceparent in {text:?}");
        let second_line = text.split("\r\n").nth(1).unwrap_or_default();
        assert_eq!(
            second_line,
            format!("traceparent: {}", parents[0]),
            "the header goes right after the request line: {text:?}"
        );
        parse_traceparent(&parents[0])
    }

    /// The head with loupe's header line taken out: what the client wrote.
    pub fn head_without_injected(&self) -> Vec<u8> {
        let text = self.head_text();
        let (request_line, rest) = text.split_once("\r\n").expect("request line");
        let (injected, rest) = rest.split_once("\r\n").expect("second line");
        assert!(injected.starts_with("traceparent: 00-"), "{text:?}");
        format!("{request_line}\r\n{rest}").into_bytes()
    }
}

pub fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert_eq!(parts[0], "00", "version in {value:?}");
    assert!(
        hex(parts[1], 32) && parts[1] != "0".repeat(32),
        "trace id in {value:?}"
    );
    assert!(
        hex(parts[2], 16) && parts[2] != "0".repeat(16),
        "span id in {value:?}"
    );
    assert!(hex(parts[3], 2), "flags in {value:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// A keep-alive HTTP/1.1 server in this process that records what it reads and answers
/// every request with `200 ok`.
pub struct Recorder {
    pub port: u16,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let port = listener.local_addr().expect("recorder address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = seen.clone();
        thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let seen = shared.clone();
                thread::spawn(move || serve(conn, stream, &seen));
            }
        });
        Recorder { port, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The request for `path`, waiting for it to arrive.
    pub fn get(&self, path: &str) -> Recorded {
        let mut found = None;
        wait_until(&format!("the server to read {path}"), WAIT, || {
            found = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.path() == path)
                .cloned();
            found.is_some()
        });
        found.unwrap()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn serve(conn: usize, stream: TcpStream, seen: &Mutex<Vec<Recorded>>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        loop {
            let before = head.len();
            match reader.read_until(b'\n', &mut head) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if &head[before..] == b"\r\n" || head.len() > 64 * 1024 {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let header = |name: &str| {
            text.split("\r\n")
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let mut body = Vec::new();
        if header("transfer-encoding:").is_some() {
            // Chunks kept raw, sizes and CRLFs included; no trailers.
            loop {
                let mut size_line = Vec::new();
                if reader.read_until(b'\n', &mut size_line).unwrap_or(0) == 0 {
                    return;
                }
                body.extend_from_slice(&size_line);
                let size = usize::from_str_radix(String::from_utf8_lossy(&size_line).trim(), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0u8; size + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                body.extend_from_slice(&chunk);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(length) = header("content-length:").and_then(|v| v.parse().ok()) {
            body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        seen.lock().unwrap().push(Recorded { conn, head, body });
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// A server that reads whatever one connection at a time sends, keeping the bytes.
pub struct Sink {
    pub port: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Sink {
    pub fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let port = listener.local_addr().expect("sink address").port();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let shared = bytes.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    shared.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        });
        Sink { port, bytes }
    }

    pub fn wait_for(&self, expected: &[u8]) {
        wait_until("the sink to read everything", WAIT, || {
            self.bytes.lock().unwrap().len() >= expected.len()
        });
        assert_eq!(*self.bytes.lock().unwrap(), expected, "sent untouched");
    }
}

/// A client connection of this process that writes exactly the pieces it is given, one
/// write each.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        RawClient { stream }
    }

    /// Writes each piece with its own write, pausing between them so they stay apart.
    pub fn send(&mut self, pieces: &[&[u8]]) {
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                thread::sleep(Duration::from_millis(30));
            }
            self.stream.write_all(piece).expect("write");
        }
    }

    /// Data segments TCP has sent on this connection (`tcpi_data_segs_out`).
    pub fn data_segments_sent(&self) -> u32 {
        use std::os::fd::AsRawFd as _;
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: valid socket, pointer and length.
        let rc = unsafe {
            libc::getsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info.tcpi_data_segs_out
    }

    /// Reads one `200` response with a body of `length` bytes.
    pub fn responses_of_length(&mut self, length: usize) {
        let expected = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
        let mut buf = vec![0u8; expected.len() + length];
        self.stream.read_exact(&mut buf).expect("response");
        assert!(buf.starts_with(expected.as_bytes()));
    }

    /// Reads `n` of the server's fixed-size `200 ok` responses.
    pub fn responses(&mut self, n: usize) {
        const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut buf = vec![0u8; RESPONSE.len() * n];
        self.stream.read_exact(&mut buf).expect("responses");
        assert!(buf.chunks(RESPONSE.len()).all(|r| r == RESPONSE));
    }
}
