//! The agent as an operator meets it: startup errors, the console exporter, a collector
//! that is down, and a clean flush on SIGTERM.

mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use loupe_integration_tests::otlp_receiver::OtlpReceiver;
use support::{Agent, curl, free_port, loupe_bin, require_root, servers, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// Runs the agent expecting it to refuse to start; returns its stderr.
fn refuses(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(loupe_bin());
    command
        .args(args)
        .stdin(Stdio::null())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run loupe");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "loupe should have refused: {stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "one clear error line: {stderr}"
    );
    stderr
}

#[test]
fn startup_errors_are_one_clear_line() {
    require_root();
    let admin = format!("127.0.0.1:{}", free_port());
    let stderr = refuses(&["--pid", "999999999", "--admin-addr", &admin], &[]);
    assert!(
        stderr.contains("999999999") && stderr.contains("no such process"),
        "{stderr}"
    );

    let stderr = refuses(
        &["--admin-addr", &admin],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")],
    );
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{stderr}");

    let stderr = refuses(&["--admin-addr", &admin, "--route", "orders/{id}"], &[]);
    assert!(stderr.contains("orders/{id}"), "{stderr}");

    // The admin port is taken by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let stderr = refuses(&["--admin-addr", &taken_addr], &[]);
    assert!(stderr.contains("admin address"), "{stderr}");

    // Not root: run as nobody.
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(loupe_bin())
        .args(["--admin-addr", &admin])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("root"),
        "{stderr}"
    );
}

#[test]
fn console_exporter_prints_trace_trees_by_default() {
    require_root();
    let port = free_port();
    let _server = servers::python(port, &[("OTEL_SERVICE_NAME", "console-demo")]);
    let mut agent = Agent::start(&["--exe", "python3*", "--port", &port.to_string()], &[]);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        curl(&[&format!("{base}/ok"), &format!("{base}/fail")]),
        vec![200, 500]
    );
    wait_until("spans to be built", WAIT, || {
        agent.metric("loupe_spans_created_total") >= 2.0
    });
    let (status, elapsed) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    assert!(elapsed < Duration::from_secs(5), "exit took {elapsed:?}");
    let out = agent.stdout();
    let ok_line = out
        .lines()
        .find(|l| l.contains("GET /ok"))
        .unwrap_or_else(|| panic!("no GET /ok in console output:\n{out}"));
    assert!(ok_line.contains("console-demo"), "{ok_line}");
    let fail_line = out
        .lines()
        .find(|l| l.contains("GET /fail"))
        .expect("GET /fail line");
    assert!(fail_line.contains("ERROR 500"), "{fail_line}");
    assert!(out.contains("trace "), "{out}");
}

#[test]
fn collector_down_is_counted_not_fatal() {
    require_root();
    let port = free_port();
    let dead_collector = format!("http://127.0.0.1:{}", free_port());
    let _server = servers::python(port, &[]);
    let mut agent = Agent::start(
        &["--exe", "python3*", "--port", &port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &dead_collector),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "1000"),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(curl(&[&format!("{base}/ok")]), vec![200]);
    wait_until("export failures to be counted", WAIT, || {
        agent.metric("loupe_export_failures_total") >= 1.0
    });
    wait_until("the span to be counted as dropped", WAIT, || {
        agent.metric("loupe_spans_dropped_total") >= 1.0
    });
    // Still tracing.
    assert_eq!(curl(&[&format!("{base}/ok")]), vec![200]);
    wait_until("the second span", WAIT, || {
        agent.metric("loupe_spans_created_total") >= 2.0
    });
    assert_eq!(agent.metric("loupe_spans_exported_total"), 0.0);
    let (status, elapsed) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    assert!(elapsed < Duration::from_secs(5), "exit took {elapsed:?}");
}

#[test]
fn sigterm_flushes_finished_spans() {
    flush_on_sigterm(false);
}

#[test]
fn sigterm_flushes_finished_spans_on_a_saturated_host() {
    flush_on_sigterm(true);
}

/// Five finished spans wait in a batch for a minute; SIGTERM must flush them within
/// five seconds, also when every CPU is busy (`saturated`) and the agent runs, as by
/// default, at idle priority.
fn flush_on_sigterm(saturated: bool) {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let _server = servers::python(port, &[("OTEL_SERVICE_NAME", "flush-me")]);
    let endpoint = receiver.grpc_endpoint();
    let mut agent = Agent::start(
        &["--exe", "python3*", "--port", &port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            // Nothing would be exported for a minute but for the flush on exit.
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    let urls: Vec<String> = (0..5).map(|i| format!("{base}/ok?i={i}")).collect();
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert_eq!(curl(&args), vec![200; 5]);
    wait_until("5 spans built", WAIT, || {
        agent.metric("loupe_spans_created_total") >= 5.0
    });
    assert!(
        receiver.spans().is_empty(),
        "nothing exported before the flush"
    );
    let _busy = saturated.then(SaturatedHost::start);
    let (status, elapsed) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    assert!(elapsed < Duration::from_secs(5), "exit took {elapsed:?}");
    let spans = receiver.spans();
    assert_eq!(spans.len(), 5, "every finished span flushed on SIGTERM");
    // Query values never leave the agent: keys stay, values are replaced.
    assert!(
        spans
            .iter()
            .all(|s| s.attributes.get("url.query").map(String::as_str) == Some("i=REDACTED"))
    );
}

#[test]
fn garbage_on_a_traced_socket_is_counted() {
    require_root();
    let port = free_port();
    let _server = servers::python(port, &[]);
    let agent = Agent::start(&["--exe", "python3*", "--port", &port.to_string()], &[]);
    // Something that starts like HTTP and then is not.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::Write as _;
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\x00\x01\x02 garbage\r\n\r\n")
        .unwrap();
    drop(stream);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(curl(&[&format!("{base}/ok")]), vec![200]);
    wait_until("the good request's span", WAIT, || {
        agent.metric("loupe_spans_created_total") >= 1.0
    });
    wait_until("the parse error to be counted", WAIT, || {
        agent.metric("loupe_parse_errors_total") >= 1.0
    });
}

/// (name, niceness, scheduling policy) of every thread of `pid`, from fields 19 and 41 of
/// /proc/PID/task/TID/stat.
fn thread_scheduling(pid: u32) -> Vec<(String, i64, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let path = entry.expect("task entry").path();
        let stat = std::fs::read_to_string(path.join("stat")).expect("stat");
        // The command name is in parentheses and may hold spaces: fields follow the ')'.
        let (name, rest) = stat
            .split_once(" (")
            .and_then(|(_, r)| r.rsplit_once(") "))
            .expect("stat format");
        let fields: Vec<&str> = rest.split(' ').collect();
        let nice = fields[16].parse().expect("nice field");
        let policy = fields[38].parse().expect("policy field");
        found.push((name.to_owned(), nice, policy));
    }
    found
}

#[test]
fn every_thread_runs_at_the_configured_cpu_priority() {
    require_root();
    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;
    let select = ["--exe", "loupe-test-no-such-exe"];
    for (level, nice, policy) in [
        (None, 0, SCHED_IDLE),
        (Some("low"), 10, SCHED_OTHER),
        (Some("normal"), 0, SCHED_OTHER),
    ] {
        let mut args = select.to_vec();
        if let Some(level) = level {
            args.extend(["--cpu-priority", level]);
        }
        let mut agent = Agent::start(&args, &[("OTEL_TRACES_EXPORTER", "none")]);
        let threads = thread_scheduling(agent.pid());
        assert!(
            threads.len() >= 3,
            "reader, selector and runtime threads: {threads:?}"
        );
        assert!(
            threads.iter().all(|t| t.1 == nice && t.2 == policy),
            "{level:?}: {threads:?}"
        );
        agent.terminate();
    }
}

/// Busy loops at normal priority, one per CPU, until dropped.
struct SaturatedHost(Vec<std::process::Child>);

impl SaturatedHost {
    fn start() -> SaturatedHost {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        SaturatedHost(
            (0..cpus)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for SaturatedHost {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_saturated_host_does_not_keep_the_agent_from_starting() {
    require_root();
    const SCHED_IDLE: u32 = 5;
    let _busy = SaturatedHost::start();
    // Agent::start fails the test when the agent is not ready within 30 s: under SCHED_IDLE
    // from its first instruction, loading and verifying its programs would get almost no CPU.
    let mut agent = Agent::start(
        &["--exe", "loupe-test-no-such-exe"],
        &[("OTEL_TRACES_EXPORTER", "none")],
    );
    let threads = thread_scheduling(agent.pid());
    assert!(
        threads.iter().all(|t| t.2 == SCHED_IDLE),
        "ready, then every thread at idle priority: {threads:?}"
    );
    agent.terminate();
}

/// Gives a new process, a fork that never calls exec, the pid `argv[1]` and serves HTTP
/// there on `argv[2]`. Follows `servers::PYTHON_TAKE_PID` and `servers::PYTHON_SERVE_OK`.
const PID_TAKER: &str = r#"
take_pid(int(sys.argv[1]))
serve_ok(int(sys.argv[2]))
"#;

/// How the agent selects the server `first`.
enum Selected {
    ByPid,
    ByExe,
}

/// A Python server named `first`, traced by a new agent until one span of it arrived,
/// then killed: its pid is free to take over.
fn first_traced_then_killed(selected: Selected) -> (OtlpReceiver, Agent, u32) {
    require_root();
    let receiver = OtlpReceiver::start().unwrap();
    let port = free_port();
    let first = servers::python(port, &[("OTEL_SERVICE_NAME", "first")]);
    let pid = first.pid();
    let pid_arg = pid.to_string();
    let select = match selected {
        Selected::ByPid => ["--pid", pid_arg.as_str()],
        Selected::ByExe => ["--exe", "python3*"],
    };
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start(
        &select,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{port}/first")]),
        vec![200]
    );
    let spans = receiver.wait_for_spans(1, WAIT);
    assert_eq!(spans[0].service_name(), Some("first"), "{spans:#?}");
    drop(first);
    (receiver, agent, pid)
}

/// Gives the pid of the process that just died to a new process, a fork of a `python3`
/// that never calls exec, serving HTTP on `port` with `env`; waits until it listens.
fn take_pid_and_serve(pid: u32, port: u16, env: &[(&str, &str)]) -> support::Guard {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    let script = support::scratch_dir("pid-taker").join("taker.py");
    std::fs::write(
        &script,
        [
            servers::PYTHON_TAKE_PID,
            servers::PYTHON_SERVE_OK,
            PID_TAKER,
        ]
        .concat(),
    )
    .expect("write taker.py");
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .arg(pid.to_string())
        .arg(port.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .process_group(0);
    let mut taker = support::Guard(command.spawn().expect("spawn taker.py"));
    let mut line = String::new();
    std::io::BufReader::new(taker.0.stdout.take().expect("taker's stdout"))
        .read_line(&mut line)
        .expect("read the taken pid");
    assert_eq!(line.trim(), pid.to_string(), "the new process has the pid");
    support::wait_for_port(port);
    taker
}

/// The tracing of a `--pid` ends with its process: a new process that takes the pid
/// over (here a fork that never calls exec, so the agent hears of no exec, given the pid
/// on purpose) is judged anew, and nobody selected it.
#[test]
fn a_pid_taken_over_by_an_unselected_process_is_not_traced() {
    let (receiver, mut agent, pid) = first_traced_then_killed(Selected::ByPid);
    let taker_port = free_port();

    let taker = take_pid_and_serve(pid, taker_port, &[]);
    wait_until("the agent to stop tracing the pid", WAIT, || {
        agent.metric("loupe_traced_processes") == 0.0
    });
    // Over three of the agent's /proc scans (every 2 s): a verdict that a later scan
    // turned back would show.
    for _ in 0..24 {
        assert_eq!(
            curl(&[&format!("http://127.0.0.1:{taker_port}/taken-over")]),
            vec![200]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    let spans = receiver.spans();
    let taken: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("url.path") == Some("/taken-over"))
        .collect();
    assert!(taken.is_empty(), "{taken:#?}");
    drop(taker);
}

/// A traced server's pid taken over by another traced process, a fork that never calls
/// exec (the kernel traces it as the child of a traced process): the newcomer's spans
/// carry its own service name, not the one of the process that had the pid before.
#[test]
fn a_pid_taken_over_by_another_traced_process_gets_its_own_resource() {
    let (receiver, mut agent, pid) = first_traced_then_killed(Selected::ByExe);
    let taker_port = free_port();

    let taker = take_pid_and_serve(pid, taker_port, &[("OTEL_SERVICE_NAME", "second")]);
    // The agent checks every few seconds whether its processes are still the ones it
    // knew; until then the newcomer's spans may carry the old name.
    let url = format!("http://127.0.0.1:{taker_port}/taken-over");
    let named = |name: &str| {
        receiver
            .spans()
            .iter()
            .filter(|s| s.attr("url.path") == Some("/taken-over"))
            .filter(|s| s.service_name() == Some(name))
            .count()
    };
    wait_until("a span of the newcomer under its own name", WAIT, || {
        assert_eq!(curl(&[&url]), vec![200]);
        std::thread::sleep(Duration::from_millis(250));
        named("second") > 0
    });
    // From then on, every span of it is its own.
    let before = named("first");
    for _ in 0..3 {
        assert_eq!(curl(&[&url]), vec![200]);
    }
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    assert_eq!(
        named("first"),
        before,
        "spans under the old name after the check"
    );
    assert!(named("second") >= 4, "the three requests after it too");
    drop(taker);
}
