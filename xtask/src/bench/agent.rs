//! The agent under test and the OTLP sink it exports to, and readings of both taken
//! before and after each load phase.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::http;
use super::process::{Guard, free_port, interrupted, log_tail, loopback, poll_until};
use super::procfs::{self, ProgStats};
use super::programs;
use super::prom;
use super::report::AgentPhase;
use super::{OtlpProtocol, SinkPriority};

const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a settle waits for the agent to go quiet. The default `OTEL_BSP_SCHEDULE_DELAY`
/// holds a partial batch 5 s; after a closed-loop phase the agent may also still be
/// working through a backlog in the ring buffer.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
const SETTLE_POLL: Duration = Duration::from_millis(500);
/// The agent counts as idle when it used less than this share of a core between two
/// readings (CPU time comes in 10 ms ticks; this allows a few for its own timers).
const IDLE_CPU_SHARE: f64 = 0.1;
/// Loading the kernel programs and reading BTF is quick, but a cold first start can page in
/// a lot; a generous limit keeps a slow machine from failing the bench.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// The OTLP receiver from the integration tests, counting the spans it is sent.
pub struct Sink {
    guard: Guard,
    grpc: SocketAddr,
    http: SocketAddr,
    protocol: OtlpProtocol,
    log: PathBuf,
}

impl Sink {
    /// Starts the sink; agents export to it over `protocol`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        priority: SinkPriority,
        protocol: OtlpProtocol,
    ) -> Result<Self> {
        let grpc = loopback(free_port()?);
        let http = loopback(free_port()?);
        let log = dir.join("otlp-sink.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--grpc-addr")
            .arg(grpc.to_string())
            .arg("--http-addr")
            .arg(http.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if priority == SinkPriority::Idle {
            // SAFETY: runs between fork and exec and only calls sched_setscheduler, which
            // is async-signal-safe; every thread the sink starts inherits the policy.
            unsafe {
                cmd.pre_exec(|| {
                    let param = libc::sched_param { sched_priority: 0 };
                    if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let guard = Guard::spawn("otlp-sink", cmd, libc::SIGTERM, Duration::from_secs(3))
            .with_context(|| format!("could not start {}", bin.display()))?;
        let mut sink = Self {
            guard,
            grpc,
            http,
            protocol,
            log,
        };
        if poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
            sink.count()
        })
        .is_none()
        {
            let state = match sink.guard.exited() {
                Some(status) => format!("the OTLP sink exited ({status})"),
                None => format!("the OTLP sink did not answer GET http://{http}/count"),
            };
            bail!("{state}\n{}", log_tail(&sink.log, 20));
        }
        Ok(sink)
    }

    /// The address agents export to.
    pub fn addr(&self) -> SocketAddr {
        match self.protocol {
            OtlpProtocol::Grpc => self.grpc,
            OtlpProtocol::Http => self.http,
        }
    }

    /// The agent's OTLP settings for exporting here.
    pub fn agent_env(&self) -> Vec<(&'static str, String)> {
        otlp_env(&format!("http://{}", self.addr()), self.protocol)
    }

    /// CPU time the sink has used so far.
    pub fn cpu(&self) -> Option<Duration> {
        procfs::cpu_time(self.guard.pid())
    }

    /// Spans received so far.
    pub fn count(&self) -> Option<u64> {
        let response = http::get(self.http, "/count", HTTP_TIMEOUT).ok()?;
        if response.status != 200 {
            return None;
        }
        parse_count(&response.body)
    }
}

/// The sink's `/count` body: a number, perhaps with a newline.
pub fn parse_count(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body).ok()?.trim().parse().ok()
}

/// Everything read off the agent at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    cpu: Option<Duration>,
    exported: Option<f64>,
    created: Option<f64>,
    drops: Option<f64>,
    dropped_spans: Option<f64>,
    /// Spans accepted for export and not yet delivered or dropped.
    queued: Option<f64>,
    sink: Option<u64>,
    sink_cpu: Option<Duration>,
    bpf: Option<ProgStats>,
    /// The same by program name.
    programs: BTreeMap<String, ProgStats>,
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> AgentPhase {
        fn delta(now: Option<f64>, then: Option<f64>) -> Option<f64> {
            Some(now? - then?)
        }
        let cpu = |s: &Snapshot| s.cpu.map(|d| d.as_secs_f64());
        let sink_cpu = |s: &Snapshot| s.sink_cpu.map(|d| d.as_secs_f64());
        let sink = |s: &Snapshot| s.sink.map(|n| n as f64);
        let bpf_ns = |s: &Snapshot| s.bpf.map(|b| b.run_time_ns as f64);
        let bpf_runs = |s: &Snapshot| s.bpf.map(|b| b.run_cnt as f64);
        AgentPhase {
            cpu_seconds: delta(cpu(self), cpu(earlier)),
            spans_exported: delta(self.exported, earlier.exported),
            spans_created: delta(self.created, earlier.created),
            ringbuf_drops: delta(self.drops, earlier.drops),
            spans_dropped: delta(self.dropped_spans, earlier.dropped_spans),
            sink_received: delta(sink(self), sink(earlier)),
            sink_cpu_seconds: delta(sink_cpu(self), sink_cpu(earlier)),
            bpf_run_ns: delta(bpf_ns(self), bpf_ns(earlier)),
            bpf_runs: delta(bpf_runs(self), bpf_runs(earlier)),
            programs: programs::since(&self.programs, &earlier.programs),
        }
    }
}

/// Whether the agent did nothing between two readings `interval` apart: its export queue
/// is empty, it made and exported no spans, the sink received none, and it used next to
/// no CPU. A reading it does not offer counts as quiet, so an older agent still settles.
pub fn quiet(before: &Snapshot, after: &Snapshot, interval: Duration) -> bool {
    let drained = after.queued.is_none_or(|q| q == 0.0);
    let still = after.created == before.created
        && after.exported == before.exported
        && after.sink == before.sink;
    let idle = match (before.cpu, after.cpu) {
        (Some(then), Some(now)) => {
            now.saturating_sub(then).as_secs_f64() <= interval.as_secs_f64() * IDLE_CPU_SHARE
        }
        _ => true,
    };
    drained && still && idle
}

/// `OTEL_*` variables that would change what the agent exports or where.
const INHERITED_OTEL: &[&str] = &[
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
];

/// How to start the agent.
pub struct Launch<'a> {
    pub bin: &'a Path,
    /// Arguments besides `--admin-addr`, which the launch picks.
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
    /// Receives stderr, and stdout unless `pass_stdout`.
    pub log: PathBuf,
    /// Let the agent write its stdout (the console exporter's traces) to ours.
    pub pass_stdout: bool,
}

/// Export over `protocol` to `endpoint`, batching as the agent does by default.
fn otlp_env(endpoint: &str, protocol: OtlpProtocol) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            protocol.otel_name().to_owned(),
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
    ]
}

/// `otlp_env` with batches large and frequent enough that a burst of spans is neither
/// dropped nor held long: for checks that want every span soon, not default behaviour.
pub fn otlp_env_fast_flush(endpoint: &str) -> Vec<(&'static str, String)> {
    // The completeness receiver listens for gRPC.
    let mut env = otlp_env(endpoint, OtlpProtocol::Grpc);
    env.extend([
        ("OTEL_BSP_MAX_QUEUE_SIZE", "65536".to_owned()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
    ]);
    env
}

pub struct Agent {
    guard: Guard,
    admin: SocketAddr,
    log: PathBuf,
    warned_metrics: std::cell::Cell<bool>,
    /// Names of the agent's eBPF programs by id, read once they are loaded.
    program_names: std::cell::RefCell<BTreeMap<u64, String>>,
}

impl Agent {
    /// Starts `loupe --exe <exe>` exporting to the sink, and waits for `/readyz`.
    pub fn start(bin: &Path, exe: &str, sink: &Sink, dir: &Path, name: &str) -> Result<Self> {
        Self::launch(&Launch {
            bin,
            args: vec!["--exe".to_owned(), exe.to_owned()],
            env: sink.agent_env(),
            log: dir.join(format!("{name}.log")),
            pass_stdout: false,
        })
    }

    /// Starts the agent as `launch` says, with its own admin address, and waits for
    /// `/readyz`.
    pub fn launch(launch: &Launch<'_>) -> Result<Self> {
        let admin = loopback(free_port()?);
        let log = launch.log.clone();
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(launch.bin);
        cmd.args(&launch.args)
            .arg("--admin-addr")
            .arg(admin.to_string())
            .stdin(Stdio::null())
            .stderr(out.try_clone()?);
        // The agent's own settings come from `launch` alone, not from whatever the
        // calling shell exported.
        for key in INHERITED_OTEL {
            cmd.env_remove(key);
        }
        for (key, value) in &launch.env {
            cmd.env(key, value);
        }
        if launch.pass_stdout {
            cmd.stdout(Stdio::inherit());
        } else {
            cmd.stdout(out);
        }
        let guard = Guard::spawn("loupe", cmd, libc::SIGTERM, Duration::from_secs(10))
            .with_context(|| format!("could not start {}", launch.bin.display()))?;
        let mut agent = Self {
            guard,
            admin,
            log,
            warned_metrics: std::cell::Cell::new(false),
            program_names: std::cell::RefCell::default(),
        };
        let ready = poll_until(READY_LIMIT, Duration::from_millis(100), || {
            if agent.guard.exited().is_some() {
                return Some(false);
            }
            http::get(admin, "/readyz", HTTP_TIMEOUT)
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| true)
        });
        if ready != Some(true) {
            let state = match agent.guard.exited() {
                Some(status) => format!("the agent exited before it was ready ({status})"),
                None if interrupted() => "interrupted".to_owned(),
                None => format!(
                    "the agent was not ready within {} s (GET http://{admin}/readyz)",
                    READY_LIMIT.as_secs()
                ),
            };
            bail!("{state}\n{}", log_tail(&agent.log, 30));
        }
        Ok(agent)
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The last lines the agent logged, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 30)
    }

    /// `stats` by program name, reading the names of programs not seen before.
    fn by_name(&self, stats: &BTreeMap<u64, ProgStats>) -> BTreeMap<String, ProgStats> {
        let mut names = self.program_names.borrow_mut();
        if stats.keys().any(|id| !names.contains_key(id)) {
            *names = programs::names_of(stats.keys().copied());
        }
        programs::by_name(stats, &names)
    }

    pub fn snapshot(&self, sink: &Sink) -> Snapshot {
        let pid = self.guard.pid();
        let metrics = self.metrics();
        let get = |name: &str| metrics.as_ref().and_then(|m| m.get(name));
        let programs = procfs::bpf_programs(pid);
        Snapshot {
            cpu: procfs::cpu_time(pid),
            exported: get("loupe_spans_exported_total"),
            created: get("loupe_spans_created_total"),
            drops: get("loupe_ringbuf_drops_total"),
            dropped_spans: get("loupe_spans_dropped_total"),
            queued: get("loupe_export_queue_spans"),
            sink: sink.count(),
            sink_cpu: sink.cpu(),
            bpf: programs.as_ref().map(|p| procfs::bpf_totals(p.values())),
            programs: programs.map_or_else(BTreeMap::new, |p| self.by_name(&p)),
        }
    }

    /// Waits until the agent has finished with what the last phase produced (at least a
    /// second, then until it is quiet: see `quiet`), and reads. Otherwise a backlog from
    /// one phase would be charged to the next one's CPU, latency and spans.
    pub fn settle(&self, sink: &Sink) -> Snapshot {
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let mut last = self.snapshot(sink);
        loop {
            if interrupted() {
                return last;
            }
            if started.elapsed() >= SETTLE_LIMIT {
                eprintln!(
                    "bench: warning: the agent was still busy {} s after the phase; the next \
                     phase's figures include the rest of its backlog",
                    SETTLE_LIMIT.as_secs()
                );
                return last;
            }
            std::thread::sleep(SETTLE_POLL);
            let now = self.snapshot(sink);
            let done = quiet(&last, &now, SETTLE_POLL);
            last = now;
            if done {
                return last;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn peak_rss_kib(&self) -> Option<u64> {
        procfs::status_kib(self.guard.pid(), procfs::PEAK_RSS)
    }

    /// Fails when the agent died during a phase: its numbers would mean nothing.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.guard.exited() {
            bail!(
                "the agent exited during the run ({status})\n{}",
                log_tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// SIGTERM, and the exit status if it stopped within the grace period.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.guard.stop()
    }

    /// The agent's `/metrics`, or `None` when it cannot be read.
    pub fn metrics(&self) -> Option<prom::Metrics> {
        let response = http::get(self.admin, "/metrics", HTTP_TIMEOUT).ok()?;
        if response.status != 200 {
            return None;
        }
        match prom::parse(&String::from_utf8_lossy(&response.body)) {
            Ok(metrics) => Some(metrics),
            Err(err) => {
                if !self.warned_metrics.replace(true) {
                    eprintln!("bench: warning: the agent's /metrics is unreadable: {err}");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::programs::ProgramPhase;

    #[test]
    fn sink_count_body() {
        assert_eq!(parse_count(b"1234\n"), Some(1234));
        assert_eq!(parse_count(b" 0 "), Some(0));
        assert_eq!(parse_count(b""), None);
        assert_eq!(parse_count(b"-1"), None);
        assert_eq!(parse_count(b"\xff"), None);
    }

    #[test]
    fn quiet_means_drained_still_and_idle() {
        let second = Duration::from_secs(1);
        let before = Snapshot {
            cpu: Some(Duration::from_millis(2_000)),
            created: Some(100.0),
            exported: Some(100.0),
            queued: Some(0.0),
            sink: Some(100),
            ..Snapshot::default()
        };
        let same = Snapshot {
            cpu: Some(Duration::from_millis(2_050)),
            ..before.clone()
        };
        assert!(quiet(&before, &same, second));
        let busy = Snapshot {
            cpu: Some(Duration::from_millis(2_400)),
            ..before.clone()
        };
        assert!(!quiet(&before, &busy, second));
        let creating = Snapshot {
            created: Some(150.0),
            ..same.clone()
        };
        assert!(!quiet(&before, &creating, second));
        let queued = Snapshot {
            queued: Some(3.0),
            ..same.clone()
        };
        assert!(!quiet(&before, &queued, second));
        let arriving = Snapshot {
            sink: Some(101),
            ..same.clone()
        };
        assert!(!quiet(&before, &arriving, second));
        // Nothing readable: nothing to wait for.
        assert!(quiet(&Snapshot::default(), &Snapshot::default(), second));
    }

    #[test]
    fn snapshot_deltas_need_both_ends() {
        let before = Snapshot {
            cpu: Some(Duration::from_millis(500)),
            exported: Some(100.0),
            created: None,
            drops: Some(1.0),
            dropped_spans: Some(0.0),
            queued: Some(12.0),
            sink: Some(90),
            sink_cpu: Some(Duration::from_millis(200)),
            bpf: Some(ProgStats {
                run_time_ns: 1_000,
                run_cnt: 10,
            }),
            programs: BTreeMap::from([
                ("loupe_read_exit".to_owned(), stats(600, 6)),
                // Reloaded in between: its counters start again.
                ("loupe_write_exit".to_owned(), stats(400, 4)),
            ]),
        };
        let after = Snapshot {
            cpu: Some(Duration::from_millis(1750)),
            exported: Some(10_100.0),
            created: Some(5.0),
            drops: Some(1.0),
            dropped_spans: Some(30.0),
            queued: Some(0.0),
            sink: Some(10_090),
            sink_cpu: None,
            bpf: Some(ProgStats {
                run_time_ns: 51_000,
                run_cnt: 110,
            }),
            programs: BTreeMap::from([
                ("loupe_read_exit".to_owned(), stats(40_600, 86)),
                ("loupe_write_exit".to_owned(), stats(100, 1)),
                // Loaded in between: no reading to start from.
                ("loupe_close_enter".to_owned(), stats(9_000, 20)),
            ]),
        };
        let phase = after.since(&before);
        assert_eq!(phase.cpu_seconds, Some(1.25));
        assert_eq!(phase.spans_exported, Some(10_000.0));
        assert_eq!(phase.spans_created, None);
        assert_eq!(phase.ringbuf_drops, Some(0.0));
        assert_eq!(phase.spans_dropped, Some(30.0));
        assert_eq!(phase.sink_received, Some(10_000.0));
        assert_eq!(phase.sink_cpu_seconds, None);
        assert_eq!(phase.bpf_run_ns, Some(50_000.0));
        assert_eq!(phase.bpf_runs, Some(100.0));
        assert_eq!(
            phase.programs,
            BTreeMap::from([(
                "loupe_read_exit".to_owned(),
                ProgramPhase {
                    run_ns: 40_000.0,
                    runs: 80.0
                }
            )])
        );
    }

    fn stats(run_time_ns: u64, run_cnt: u64) -> ProgStats {
        ProgStats {
            run_time_ns,
            run_cnt,
        }
    }
}
