//! Kernel connection entries that outlive their connection without a close the probes
//! see: a process that exits, or that calls exec, closes fds in the kernel alone. A new
//! program at the same tgid and fd number (a newer process that took the pid over, or the
//! exec'd program) opening a file there must not have the file read as the old connection.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use loupe_integration_tests::otlp_receiver::OtlpReceiver;
use support::{Agent, Guard, free_port, require_root, servers};

const WAIT: Duration = Duration::from_secs(30);

/// Opens `argv[2]` until it holds fd `argv[4]` once the file `argv[3]` exists, reads the
/// HTTP request written in it, writes a response after it, and prints `done`. Follows
/// the code that made the process.
const FILE_EXCHANGE: &str = r#"
import os, sys, time

def file_exchange():
    path, trigger, fd_wanted = sys.argv[2], sys.argv[3], int(sys.argv[4])
    while not os.path.exists(trigger):
        time.sleep(0.01)
    fd = os.open(path, os.O_RDWR)
    while fd < fd_wanted:
        fd = os.open(path, os.O_RDWR)
    assert fd == fd_wanted, (fd, fd_wanted)
    os.read(fd, 4096)
    os.write(fd, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    print("done", flush=True)
"#;

/// The agent's count of dropped stale entries.
fn pruned(agent: &Agent) -> f64 {
    agent.metric("loupe_kernel_connections_pruned_total")
}

/// Once the agent has dropped a stale entry since it counted `pruned_before`, has the new
/// program do its file exchange (`go`; `next_line` reads its output), flushes the agent
/// and returns the spans it exported, as `kind name url.path`. The wait for the prune is
/// not a deadline: an agent that keeps the entry shows in the spans.
fn spans_after_the_file_exchange(
    mut agent: Agent,
    pruned_before: f64,
    go: &Path,
    mut next_line: impl FnMut() -> String,
    receiver: &OtlpReceiver,
) -> Vec<String> {
    for _ in 0..60 {
        if pruned(&agent) > pruned_before {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    std::fs::write(go, b"").expect("write the trigger");
    assert_eq!(
        next_line(),
        "done",
        "the new program read and wrote its file"
    );
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    receiver
        .spans()
        .iter()
        .map(|s| format!("{} {} {:?}", s.kind, s.name, s.attr("url.path")))
        .collect()
}

/// Gives a new process, a fork that never calls exec, the pid `argv[1]`, where it does
/// the file exchange. Follows `servers::PYTHON_TAKE_PID` and [`FILE_EXCHANGE`].
const PID_TAKER_WITH_FILES: &str = r#"
take_pid(int(sys.argv[1]))
file_exchange()
"#;

/// The fd of the process's newest socket (an accepted connection comes after the listener).
fn newest_socket_fd(pid: u32) -> u32 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the server's fds")
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .max()
        .expect("the server has a socket")
}

/// A traced server killed with a connection open leaves the kernel's entry for that fd
/// (an exit closes fds without the close calls the probes see). A new traced process that
/// takes the pid over, a fork that never calls exec, opens a file at the same fd number:
/// the file's bytes, an HTTP exchange here, are not taken for the old connection's.
#[test]
fn a_dead_processs_connection_is_not_met_by_the_next_holder_of_its_pid() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let first = servers::python(port, &[("OTEL_SERVICE_NAME", "first")]);
    let pid = first.pid();
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start(
        &["--exe", "python3*"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    assert_eq!(support::keep_alive_get(&mut stream, "/before"), 200);
    receiver.wait_for_spans(1, WAIT);
    let fd = newest_socket_fd(pid);
    let pruned_before = pruned(&agent);
    drop(first);

    let dir = support::scratch_dir("pid-taker-files");
    let (script, request, trigger) = (
        dir.join("taker.py"),
        dir.join("request.txt"),
        dir.join("go"),
    );
    std::fs::write(
        &script,
        [
            servers::PYTHON_TAKE_PID,
            FILE_EXCHANGE,
            PID_TAKER_WITH_FILES,
        ]
        .concat(),
    )
    .expect("write taker.py");
    std::fs::write(&request, "GET /from-a-file HTTP/1.1\r\nHost: file\r\n\r\n")
        .expect("write the request file");
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .arg(pid.to_string())
        .arg(&request)
        .arg(&trigger)
        .arg(fd.to_string())
        .stdout(Stdio::piped())
        .process_group(0);
    let mut taker = Guard(command.spawn().expect("spawn taker.py"));
    let mut lines = BufReader::new(taker.0.stdout.take().expect("taker's stdout")).lines();
    let mut next_line = || lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(next_line(), pid.to_string(), "the new process has the pid");
    // The agent drops stale entries within one /proc scan of the takeover, or within its
    // 5-second prune.
    let spans = spans_after_the_file_exchange(agent, pruned_before, &trigger, next_line, &receiver);
    assert!(
        !spans.iter().any(|s| s.contains("from-a-file")),
        "the file's bytes were traced as the old connection's: {spans:#?}"
    );
    drop(taker);
}

/// Serves one request on a keep-alive connection (a close-on-exec socket) on port
/// `argv[1]`, prints that connection's fd, and once the file `argv[4]`
/// exists execs Python again into the file exchange at that fd. Follows
/// [`FILE_EXCHANGE`].
const EXECING_SERVER: &str = r#"
import socket

if sys.argv[1] != "exchange":
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(1)
    while True:  # the test's wait for the port connects and closes first
        accepted, _ = listener.accept()
        # Served from a high fd: the exec'd Python opens and closes its own files at the
        # lowest free fds, and a close would end the entry before the exchange.
        conn = socket.socket(fileno=os.dup2(accepted.fileno(), 100, inheritable=False))
        accepted.close()
        if conn.recv(4096):
            break
        conn.close()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    print(conn.fileno(), flush=True)
    while not os.path.exists(sys.argv[4]):
        time.sleep(0.01)
    os.execv(sys.executable, [sys.executable, sys.argv[0], "exchange",
                              sys.argv[2], sys.argv[3], str(conn.fileno())])
file_exchange()
"#;

/// A traced process that calls exec loses its close-on-exec connections in the kernel
/// alone. The new program opens a file at such a connection's fd number: the file's
/// bytes, an HTTP exchange here, are not taken for the old connection's.
#[test]
fn an_exec_ends_the_connections_it_closes() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start(
        &["--exe", "python3*"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let port = free_port();
    let dir = support::scratch_dir("execing-server");
    let (script, request, go, exec_now) = (
        dir.join("server.py"),
        dir.join("request.txt"),
        dir.join("go"),
        dir.join("exec-now"),
    );
    std::fs::write(&script, FILE_EXCHANGE.to_owned() + EXECING_SERVER).expect("write server.py");
    std::fs::write(&request, "GET /from-a-file HTTP/1.1\r\nHost: file\r\n\r\n")
        .expect("write the request file");
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .arg(port.to_string())
        .arg(&request)
        .arg(&go)
        .arg(&exec_now)
        .stdout(Stdio::piped())
        .process_group(0);
    let mut server = Guard(command.spawn().expect("spawn server.py"));
    let mut lines = BufReader::new(server.0.stdout.take().expect("server's stdout")).lines();
    let mut next_line = || lines.next().and_then(Result::ok).unwrap_or_default();
    support::wait_for_port(port);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    assert_eq!(support::keep_alive_get(&mut stream, "/before"), 200);
    let fd = next_line();
    assert!(fd.parse::<u32>().is_ok(), "the connection's fd: {fd:?}");
    receiver.wait_for_spans(1, WAIT);
    let pruned_before = pruned(&agent);
    std::fs::write(&exec_now, b"").expect("write the exec trigger");
    // The agent drops the connection's entry once it hears of the exec.
    let spans = spans_after_the_file_exchange(agent, pruned_before, &go, next_line, &receiver);
    assert!(
        spans.iter().any(|s| s.contains("/before")),
        "the connection was traced before the exec: {spans:#?}"
    );
    assert!(
        !spans.iter().any(|s| s.contains("from-a-file")),
        "the file's bytes were traced as the old connection's: {spans:#?}"
    );
    drop(stream);
}
