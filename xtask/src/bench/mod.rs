//! `cargo xtask bench`: the agent's overhead on nginx and on a Python service, measured
//! side by side in one run.
//!
//! Each round runs the same load in each mode: without the agent, with it started fresh,
//! and with `--host-tax` also with it running but tracing nothing and with only its hooks
//! (see `overhead`). Each
//! mode has a closed-loop phase (wrk: throughput) and a fixed-rate phase (our paced
//! client: latency at a set rate, and spans exported per request). Alternating within one
//! run, in reverse order every other round, keeps machine drift out of the ratios. Agent
//! CPU counts from `/readyz` on, so start-up is not charged to requests, and between
//! phases the agent is left to finish its backlog. The agent runs with its default export
//! settings. Progress goes to stderr, the report to stdout.
//!
//! `--completeness` measures something else instead: how many requests through three
//! traced services come out as exactly the expected trace (see `completeness`); `--all`
//! measures both. `--soak` measures whether the agent's memory stays flat over a long
//! steady load (see `soak`). `--instructions` counts the agent's own instructions per
//! request on replayed traffic, a figure the host's load does not move (see
//! `instructions`).

pub(crate) mod agent;
mod completeness;
mod hooks;
pub(crate) mod http;
mod instructions;
mod load;
mod nginx;
mod overhead;
pub(crate) mod process;
mod procfs;
mod programs;
mod prom;
mod report;
pub(crate) mod services;
mod soak;
mod stats;
mod stats_floor;
mod summary;
mod target;
mod wrk;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{is_root, which};
use crate::workspace::Workspace;
use crate::{build, setup};

use report::Settings;
use target::{RateSpec, ServiceKind, parse_rate, rate_for};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds per load phase (each mode of a round has two: closed loop, then fixed
    /// rate).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Rounds of without/with.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// wrk connections in the closed-loop phase.
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// The services to measure, comma-separated; each gets its own table.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ServiceKind::Nginx])]
    pub service: Vec<ServiceKind>,
    /// Requests per second in the fixed-rate phase: `N` for every service, or
    /// `SERVICE=N` for one, comma-separated. Defaults: nginx 10000, python 6000; the
    /// overhead rounds lower each to half of what the service carried in the warm-up when
    /// the host is slower than that (latency near saturation measures queueing, not the
    /// agent); the soak and a run with `--warmup 0` use them as they are.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
    pub rate: Vec<RateSpec>,
    /// Keep-alive connections sharing the fixed rate.
    #[arg(long, default_value_t = 32)]
    pub rate_connections: u32,
    /// Seconds of unmeasured load before the first round.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (the text still goes to stdout).
    #[arg(long, value_name = "PATH")]
    pub json_file: Option<PathBuf>,
    /// Measure nginx alone (no agent, no sink): checks the harness without the agent.
    #[arg(long)]
    pub baseline_only: bool,
    /// Skip setup and building; use the binaries already in the target directory.
    #[arg(long)]
    pub no_build: bool,
    /// Turn on kernel.bpf_stats_enabled during the run to report in-kernel ns per request
    /// (the accounting itself costs a little).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Keep the scratch directory (configs and logs) after the run.
    #[arg(long)]
    pub keep_temp: bool,
    /// Measure this agent binary instead of building target/release/loupe.
    #[arg(long, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
    /// Use this OTLP sink binary instead of building the integration tests' otlp-sink.
    #[arg(long, value_name = "PATH")]
    pub sink_bin: Option<PathBuf>,
    /// CPU priority of the OTLP sink, which stands in for a collector. 'idle' (SCHED_IDLE,
    /// the default) keeps its work on every export (over HTTP inflating and counting, over
    /// gRPC decoding) off the cores the service needs, so the figures are loupe's own;
    /// 'normal' shows a collector sharing those cores. The bench reports the sink's CPU
    /// apart from the agent's.
    #[arg(long, value_name = "LEVEL", value_enum, default_value = "idle")]
    pub sink_priority: SinkPriority,
    /// How the agent exports to the sink. 'http' (OTLP/HTTP protobuf) is the agent's own
    /// default; 'grpc' costs the agent a little more CPU per span, because HTTP/2 writes
    /// every 16 KiB frame of an export with its own syscall.
    #[arg(long, value_name = "PROTOCOL", value_enum, default_value = "http")]
    pub otlp_protocol: OtlpProtocol,
    /// Add two modes per round: the agent running but tracing no process, which shows what
    /// its syscall tracepoints cost processes it does not trace; and no agent but an empty
    /// program on each tracepoint the agent attaches to, which shows how much of that is
    /// the kernel's tracepoint mechanism itself.
    #[arg(long)]
    pub host_tax: bool,
    /// Instead of the overhead, measure trace completeness: the share of requests through
    /// Node -> Python -> nginx whose spans form exactly the expected tree.
    #[arg(long, conflicts_with = "baseline_only")]
    pub completeness: bool,
    /// Measure the overhead and then trace completeness.
    #[arg(long, conflicts_with = "baseline_only")]
    pub all: bool,
    /// Instead of the overhead, run one agent at the fixed rate (`--rate`) for this many
    /// seconds and report whether its RSS stays flat.
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["baseline_only", "completeness", "all"])]
    pub soak: Option<u64>,
    /// With --soak: write each request answered more than 1.5 ms after it was due to this
    /// file, one per line: when it was due (µs from the start of the load), its latency
    /// (µs) and when its response completed (µs on CLOCK_MONOTONIC, the clock of ftrace's
    /// `trace_clock` `mono`), to line up the stalls behind a p99 with a trace of the
    /// scheduler.
    #[arg(long, value_name = "PATH", requires = "soak")]
    pub late_log: Option<PathBuf>,
    /// Instead of the overhead, count the instructions the agent's own code takes per
    /// request, under callgrind, on the service's traffic replayed through the pipeline
    /// and the OTLP encoder without the kernel: repeatable on a busy host, where CPU
    /// seconds are not. Needs valgrind (`cargo xtask setup`); with --no-build, not root.
    #[arg(long, conflicts_with_all = ["baseline_only", "completeness", "all", "soak"])]
    pub instructions: bool,
    /// Completeness: requests per concurrency level.
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// Completeness: concurrency levels (keep-alive client connections), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 10])]
    pub concurrency: Vec<u32>,
    /// Completeness: the Node frontends to measure, comma-separated: `immediate` calls
    /// upstream straight from its handler, `deferred` after a short timer, `awaits` after
    /// awaiting a check of the request at nginx, `store` after awaiting a lookup in a
    /// store over a binary protocol loupe does not parse.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [completeness::Frontend::Immediate])]
    pub frontend: Vec<completeness::Frontend>,
    /// Completeness: run the agent with `--inject-traceparent`, so the context the kernel
    /// follows and writes on the wire decides each CLIENT span's parent.
    #[arg(long)]
    pub inject_traceparent: bool,
}

/// An executable name no process has, so the agent selects nothing.
pub(crate) const UNTRACED_EXE: &str = "loupe-bench-traces-nothing";

impl BenchArgs {
    fn validate(&self) -> Result<()> {
        ensure!(self.duration >= 1, "--duration must be at least 1 second");
        ensure!(self.rounds >= 1, "--rounds must be at least 1");
        ensure!(
            self.connections >= 2,
            "--connections must be at least 2 (wrk runs 2 threads)"
        );
        ensure!(
            (1..=4096).contains(&self.rate_connections),
            "--rate-connections must be between 1 and 4096"
        );
        ensure!(!self.service.is_empty(), "--service needs a service");
        for &service in &self.service {
            ensure!(
                rate_for(&self.rate, service) >= u64::from(self.rate_connections),
                "the {} rate must be at least --rate-connections",
                service.name()
            );
        }
        if let Some(seconds) = self.soak {
            ensure!(seconds >= 10, "--soak must be at least 10 seconds");
        }
        ensure!(self.requests >= 1, "--requests must be at least 1");
        ensure!(
            !self.concurrency.is_empty() && self.concurrency.iter().all(|c| (1..=1024).contains(c)),
            "--concurrency takes levels between 1 and 1024"
        );
        ensure!(
            !self.frontend.is_empty(),
            "--frontend needs at least one frontend"
        );
        Ok(())
    }

    fn settings(&self, service: ServiceKind) -> Settings {
        Settings {
            service: service.name(),
            service_desc: service.describe(),
            duration_s: self.duration,
            rounds: self.rounds,
            connections: self.connections,
            rate: rate_for(&self.rate, service),
            rate_connections: self.rate_connections,
            sink_idle: self.sink_priority == SinkPriority::Idle,
            otlp_protocol: self.otlp_protocol,
        }
    }
}

/// See [`BenchArgs`]'s `--sink-priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkPriority {
    Idle,
    Normal,
}

/// See [`BenchArgs`]'s `--otlp-protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    Http,
    Grpc,
}

impl OtlpProtocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn otel_name(self) -> &'static str {
        match self {
            OtlpProtocol::Http => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

/// The built programs the measured rounds need.
pub(crate) struct Binaries {
    pub(crate) agent: PathBuf,
    /// Only the overhead rounds and the soak export to the sink.
    pub(crate) sink: Option<PathBuf>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    args.validate()?;
    process::catch_interrupts();
    let scratch =
        process::TempDir::create("bench", args.keep_temp).context("no scratch directory")?;
    let result = bench(args, &scratch);
    let wrote_logs = std::fs::read_dir(scratch.path()).is_ok_and(|mut d| d.next().is_some());
    if result.is_err() && wrote_logs && !args.keep_temp {
        eprintln!("bench: the logs go with the scratch directory; --keep-temp keeps them");
    }
    result
}

fn bench(args: &BenchArgs, scratch: &process::TempDir) -> Result<()> {
    let ws = Workspace::locate()?;
    if !args.no_build {
        setup::run(&mut std::io::stderr())?;
    }
    if args.instructions {
        return count_instructions(args, &ws, scratch);
    }
    let overhead = args.soak.is_none() && (args.all || !args.completeness);
    let completeness = args.all || args.completeness;
    if overhead || args.soak.is_some() {
        if overhead && which("wrk").is_none() {
            bail!("wrk not found on PATH: run `cargo xtask setup`");
        }
        for service in &args.service {
            service.check_installed()?;
        }
    }
    let binaries = if args.baseline_only {
        None
    } else {
        Some(prepare_binaries(
            &ws,
            args,
            overhead || args.soak.is_some(),
        )?)
    };
    let mut texts = Vec::new();
    let mut values = serde_json::Map::new();
    if overhead {
        let mut by_service = serde_json::Map::new();
        for &service in &args.service {
            let (text, value) =
                overhead::measure(args, service, &ws.root, binaries.as_ref(), scratch.path())?;
            texts.push(text);
            by_service.insert(service.name().to_owned(), value);
        }
        values.insert("overhead".to_owned(), one_or_all(by_service));
    }
    if let (Some(seconds), Some(b)) = (args.soak, binaries.as_ref()) {
        let mut by_service = serde_json::Map::new();
        for &service in &args.service {
            let (text, value) = soak::run(args, seconds, service, &ws.root, b, scratch.path())?;
            texts.push(text);
            by_service.insert(service.name().to_owned(), value);
        }
        values.insert("soak".to_owned(), one_or_all(by_service));
    }
    if let Some(b) = binaries.as_ref().filter(|_| completeness) {
        let settings = completeness::Settings {
            requests: args.requests,
            levels: args.concurrency.clone(),
            frontends: args.frontend.clone(),
            inject_traceparent: args.inject_traceparent,
        };
        let results = completeness::run(&ws.root, &b.agent, scratch.path(), &settings)?;
        texts.push(completeness::report::table(&settings, &results));
        values.insert(
            "completeness".to_owned(),
            completeness::report::json(&settings, &results),
        );
    }
    // One measurement prints as before; both nest under their names.
    let json = serde_json::to_string_pretty(&one_or_all(values))? + "\n";
    if let Some(path) = &args.json_file {
        std::fs::write(path, &json)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    let text = if args.json { json } else { texts.join("\n") };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn count_instructions(args: &BenchArgs, ws: &Workspace, scratch: &process::TempDir) -> Result<()> {
    let replay = instructions::prepare(ws, !args.no_build)?;
    let mut counts = Vec::new();
    for &service in &args.service {
        counts.push((
            service,
            instructions::measure(&replay, service, scratch.path())?,
        ));
    }
    let (text, value) = instructions::report(&counts);
    let json = serde_json::to_string_pretty(&value)? + "\n";
    if let Some(path) = &args.json_file {
        std::fs::write(path, &json)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    let text = if args.json { json } else { text };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

/// The one value alone, or all of them by name.
fn one_or_all(values: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    if values.len() == 1
        && let Some(only) = values.values().next()
    {
        return only.clone();
    }
    serde_json::Value::Object(values)
}

/// Builds (unless told not to) and finds the agent, and the OTLP sink when `sink` is
/// wanted, with advice when either is missing.
fn prepare_binaries(ws: &Workspace, args: &BenchArgs, sink: bool) -> Result<Binaries> {
    if !is_root() {
        bail!("the agent loads eBPF programs: run the benchmark as root, or pass --baseline-only");
    }
    let hint = "(`--baseline-only` measures nginx alone without it)";
    let build = !args.no_build;
    if build && args.agent_bin.is_none() {
        build::agent(ws, true).with_context(|| format!("building the agent failed {hint}"))?;
    }
    if sink && build && args.sink_bin.is_none() {
        let cmd = ws.cargo().args([
            "build",
            "--release",
            "-p",
            "loupe-integration-tests",
            "--bin",
            "otlp-sink",
        ]);
        eprintln!("==> {}", cmd.shown());
        cmd.run()
            .with_context(|| format!("building the OTLP sink failed {hint}"))?;
    }
    let binaries = Binaries {
        agent: args
            .agent_bin
            .clone()
            .unwrap_or_else(|| ws.release_bin("loupe")),
        sink: sink.then(|| {
            args.sink_bin
                .clone()
                .unwrap_or_else(|| ws.release_bin("otlp-sink"))
        }),
    };
    require(&binaries.agent, "the agent", hint)?;
    if let Some(bin) = &binaries.sink {
        require(bin, "the OTLP sink", hint)?;
    }
    Ok(binaries)
}

fn require(path: &Path, what: &str, hint: &str) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        bail!(
            "{what} is missing: {} does not exist; build it (run without --no-build) \
             or point at one with --agent-bin / --sink-bin {hint}",
            path.display()
        )
    }
}

pub(crate) fn check_interrupted() -> Result<()> {
    if process::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}
