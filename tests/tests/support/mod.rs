//! Real processes for the integration tests: the agent, the servers it traces, curl.
//!
//! Every test here runs the real agent binary as root against unmodified programs on
//! loopback. `LOUPE_BIN` names the agent (set by `cargo xtask test`); otherwise the
//! release build in the workspace target directory is used.
#![allow(dead_code)]

pub mod servers;
pub mod spans;
pub mod tls;

use std::{
    collections::HashMap,
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests load eBPF programs and must run as root (cargo xtask test does)"
    );
}

pub fn loupe_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("LOUPE_BIN") {
        return PathBuf::from(bin);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/release/loupe");
    assert!(
        bin.exists(),
        "no agent binary at {}: run `cargo build --release -p loupe` or set LOUPE_BIN",
        bin.display()
    );
    bin
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

const SCRATCH_PREFIX: &str = "loupe-it-";
/// How long the scratch directories of ended test processes are kept.
const SCRATCH_KEPT: Duration = Duration::from_secs(3600);

/// A fresh scratch directory for one test. The directories of test processes that ended
/// over an hour ago are removed on the first call, so a failed test's logs stay for a
/// while (also while later test binaries of the same run go on) and the temporary
/// directory does not fill up (a guest image is 170 MB).
pub fn scratch_dir(name: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_ended_scratch_dirs);
    let dir = std::env::temp_dir().join(format!(
        "{SCRATCH_PREFIX}{}-{}-{}",
        name,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn sweep_ended_scratch_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = scratch_dir_owner(&name.to_string_lossy()) else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified.elapsed().unwrap_or_default() > SCRATCH_KEPT);
        if old && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The test process that made a scratch directory named `loupe-it-{name}-{pid}-{seq}`.
fn scratch_dir_owner(dir_name: &str) -> Option<u32> {
    let rest = dir_name.strip_prefix(SCRATCH_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    parts.next()?.parse::<u32>().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

#[test]
fn scratch_dirs_name_their_test_process() {
    assert_eq!(
        scratch_dir_owner("loupe-it-older-kernel-1798-0"),
        Some(1798)
    );
    assert_eq!(scratch_dir_owner("loupe-it-agent-25820-17"), Some(25820));
    assert_eq!(scratch_dir_owner("loupe-it-25820-17"), None);
    assert_eq!(scratch_dir_owner("loupe-bounded"), None);
    assert_eq!(scratch_dir_owner("loupe-it-x-y-17"), None);
}

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A plain HTTP/1.1 GET on a fresh connection; returns (status, body). Used for the
/// agent's admin endpoint, which is not traced.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The running agent.
pub struct Agent {
    child: Option<Child>,
    pub admin_port: u16,
    pub dir: PathBuf,
}

impl Agent {
    /// Starts the agent with `args` and extra environment, and waits until it is ready.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let admin_port = free_port();
        let dir = scratch_dir("agent");
        let stdout = fs::File::create(dir.join("stdout")).expect("stdout file");
        let stderr = fs::File::create(dir.join("stderr")).expect("stderr file");
        let mut command = Command::new(loupe_bin());
        command
            .args(args)
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_TRACES_EXPORTER")
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn loupe");
        let mut agent = Agent {
            child: Some(child),
            admin_port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = http_get(admin_port, "/readyz") {
                break;
            }
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "loupe exited before it was ready ({status}):\n{}",
                    agent.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "loupe not ready after 30 s:\n{}",
                agent.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// The agent's `/metrics`, as name -> value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let Some((200, body)) = http_get(self.admin_port, "/metrics") else {
            return HashMap::new();
        };
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.metrics().get(name).copied().unwrap_or(0.0)
    }

    /// A kernel counter from `/metrics`, once the agent's housekeeping (once a second) has
    /// read it; panics when it is not exported.
    pub fn kernel_counter(&self, name: &str) -> f64 {
        thread::sleep(Duration::from_millis(2_500));
        *self
            .metrics()
            .get(name)
            .unwrap_or_else(|| panic!("{name} is exported"))
    }

    /// SIGTERM, then wait; returns the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("agent already stopped");
        let started = Instant::now();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = started + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().expect("wait loupe");
                return (status, started.elapsed());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process killed when the test ends, whatever happens.
pub struct Guard(pub Child);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The whole process group (see `servers::spawn`): nginx's worker would otherwise
        // outlive a killed master.
        // SAFETY: plain syscall; a group that is gone already is harmless.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs curl and returns the HTTP status codes it printed, one per URL.
pub fn curl(args: &[&str]) -> Vec<u16> {
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\\n",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits until something accepts connections on the port.
pub fn wait_for_port(port: u16) {
    wait_until(
        &format!("a listener on port {port}"),
        Duration::from_secs(20),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// `clients` threads at once, each sending `per_client` GETs of `path(client, request)`
/// one after another on its own keep-alive connection to `port`; every answer must be 200.
pub fn concurrent_keep_alive_gets(
    port: u16,
    clients: usize,
    per_client: usize,
    path: fn(usize, usize) -> String,
) {
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                for i in 0..per_client {
                    assert_eq!(keep_alive_get(&mut stream, &path(c, i)), 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("client thread");
    }
}

/// [`concurrent_keep_alive_gets`], then what `receiver` got: asserts that every request
/// was exported as `spans_per_request` spans within 30 s.
pub fn concurrent_gets_exported(
    receiver: &loupe_integration_tests::otlp_receiver::OtlpReceiver,
    port: u16,
    (clients, per_client): (usize, usize),
    path: fn(usize, usize) -> String,
    spans_per_request: usize,
) -> Vec<loupe_integration_tests::otlp_receiver::ReceivedSpan> {
    concurrent_keep_alive_gets(port, clients, per_client, path);
    let expected = spans_per_request * clients * per_client;
    let spans = receiver.wait_for_spans(expected, Duration::from_secs(30));
    assert_eq!(
        spans.len(),
        expected,
        "every request exported as {spans_per_request} spans"
    );
    spans
}

/// Sends a GET on an open keep-alive connection and reads the whole response (framed by
/// Content-Length, or chunked without trailers); returns the status code.
pub fn keep_alive_get(stream: &mut TcpStream, path: &str) -> u16 {
    // One write, as HTTP clients send a request: `write!` on the stream sends each piece
    // of the format on its own, and Nagle's algorithm held the later pieces back until the
    // server's delayed ACK, 40 ms per request.
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: loupe-test\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    stream
        // Long enough for a connection a busy backend's full accept queue made retry.
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let length: Option<usize> = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    if let Some(length) = length {
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).expect("read body");
    } else {
        assert!(
            head.to_ascii_lowercase().contains("chunked"),
            "unframed: {head}"
        );
        let mut body = Vec::new();
        while !body.ends_with(b"0\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read chunked body");
            body.push(byte[0]);
        }
    }
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status")
}
