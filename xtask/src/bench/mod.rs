//! `cargo xtask bench`: the agent's overhead on nginx, measured side by side in one run.
//!
//! Each round runs the same load in each mode: without the agent, with it started fresh,
//! and with `--host-tax` also with it running but tracing nothing. Each mode has a
//! closed-loop phase (wrk: throughput) and a fixed-rate phase (our paced client: latency at
//! a set rate, and spans exported per request). Alternating within one run, in reverse
//! order every other round, keeps machine drift out of the ratios. Agent CPU counts from
//! `/readyz` on, so start-up is not charged to requests. Progress goes to stderr, the
//! report to stdout.
//!
//! `--completeness` measures something else instead: how many requests through three
//! traced services come out as exactly the expected trace (see `completeness`); `--all`
//! measures both.

pub(crate) mod agent;
mod completeness;
pub(crate) mod http;
mod load;
mod nginx;
pub(crate) mod process;
mod procfs;
mod prom;
mod report;
pub(crate) mod services;
mod stats;
mod wrk;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{is_root, which};
use crate::workspace::Workspace;
use crate::{build, setup};

use agent::{Agent, Sink};
use nginx::Nginx;
use report::{AgentRun, ModeRun, Round, Settings};

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
    /// Requests per second in the fixed-rate phase.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Keep-alive connections sharing the fixed rate.
    #[arg(long, default_value_t = 32)]
    pub rate_connections: u32,
    /// Seconds of unmeasured load before the first round.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Add a third mode per round: the agent running but tracing no process, which shows
    /// what its syscall tracepoints cost processes it does not trace.
    #[arg(long)]
    pub host_tax: bool,
    /// Instead of the overhead, measure trace completeness: the share of requests through
    /// Node -> Python -> nginx whose spans form exactly the expected tree.
    #[arg(long, conflicts_with = "baseline_only")]
    pub completeness: bool,
    /// Measure the overhead and then trace completeness.
    #[arg(long, conflicts_with = "baseline_only")]
    pub all: bool,
    /// Completeness: requests per concurrency level.
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// Completeness: concurrency levels (keep-alive client connections), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 10])]
    pub concurrency: Vec<u32>,
    /// Completeness: the Node frontends to measure, comma-separated: `immediate` calls
    /// upstream straight from its handler, `deferred` after a short timer.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [completeness::Frontend::Immediate])]
    pub frontend: Vec<completeness::Frontend>,
}

/// An executable name no process has, so the agent selects nothing.
const UNTRACED_EXE: &str = "loupe-bench-traces-nothing";

impl BenchArgs {
    fn validate(&self) -> Result<()> {
        ensure!(self.duration >= 1, "--duration must be at least 1 second");
        ensure!(self.rounds >= 1, "--rounds must be at least 1");
        ensure!(
            self.connections >= 2,
            "--connections must be at least 2 (wrk runs 2 threads)"
        );
        ensure!(self.rate >= 1, "--rate must be at least 1");
        ensure!(
            (1..=4096).contains(&self.rate_connections),
            "--rate-connections must be between 1 and 4096"
        );
        ensure!(
            self.rate >= u64::from(self.rate_connections),
            "--rate must be at least --rate-connections"
        );
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

    fn settings(&self) -> Settings {
        Settings {
            duration_s: self.duration,
            rounds: self.rounds,
            connections: self.connections,
            rate: self.rate,
            rate_connections: self.rate_connections,
        }
    }
}

/// The built programs the measured rounds need.
struct Binaries {
    agent: PathBuf,
    /// Only the overhead rounds export to the sink.
    sink: Option<PathBuf>,
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
    let overhead = args.all || !args.completeness;
    let completeness = args.all || args.completeness;
    if overhead {
        for tool in ["nginx", "wrk"] {
            if which(tool).is_none() {
                bail!("{tool} not found on PATH: run `cargo xtask setup`");
            }
        }
    }
    let binaries = if args.baseline_only {
        None
    } else {
        Some(prepare_binaries(&ws, args, overhead)?)
    };
    let mut texts = Vec::new();
    let mut values = serde_json::Map::new();
    if overhead {
        let (text, value) = measure_overhead(args, binaries.as_ref(), scratch)?;
        texts.push(text);
        values.insert("overhead".to_owned(), value);
    }
    if let Some(b) = binaries.as_ref().filter(|_| completeness) {
        let settings = completeness::Settings {
            requests: args.requests,
            levels: args.concurrency.clone(),
            frontends: args.frontend.clone(),
        };
        let results = completeness::run(&ws.root, &b.agent, scratch.path(), &settings)?;
        let chain = &completeness::CHAIN;
        texts.push(completeness::report::table(chain, args.requests, &results));
        values.insert(
            "completeness".to_owned(),
            completeness::report::json(chain, args.requests, &results),
        );
    }
    let text = if args.json {
        // One measurement prints as before; both nest under their names.
        let value = match (values.len(), values.values().next()) {
            (1, Some(only)) => only.clone(),
            _ => serde_json::Value::Object(values),
        };
        serde_json::to_string_pretty(&value)? + "\n"
    } else {
        texts.join("\n")
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

/// The overhead rounds; returns the report as text and as JSON.
fn measure_overhead(
    args: &BenchArgs,
    binaries: Option<&Binaries>,
    scratch: &process::TempDir,
) -> Result<(String, serde_json::Value)> {
    let mut nginx = Nginx::start(scratch.path())?;
    eprintln!("bench: nginx on {}", nginx.url());
    let sink = match binaries.and_then(|b| b.sink.as_ref()) {
        Some(bin) => {
            let sink = Sink::start(bin, scratch.path())?;
            eprintln!("bench: OTLP sink on {}", sink.grpc());
            Some(sink)
        }
        None => None,
    };
    let _bpf_stats = if args.bpf_stats {
        match procfs::BpfStatsSwitch::enable() {
            Ok(switch) => Some(switch),
            Err(err) => {
                eprintln!("bench: warning: cannot enable kernel.bpf_stats_enabled: {err}");
                None
            }
        }
    } else {
        None
    };

    if args.warmup > 0 {
        eprintln!("bench: warm-up, {} s", args.warmup);
        wrk::run(&nginx.url(), args.connections, args.warmup)?;
    }
    let mut rounds = Vec::new();
    let agent_bins = binaries.zip(sink.as_ref());
    for round in 1..=args.rounds {
        let mut modes = vec![Mode::Without];
        if agent_bins.is_some() {
            modes.push(Mode::With);
            if args.host_tax {
                modes.push(Mode::Untraced);
            }
        }
        // Every other round runs its modes in reverse, so a drift in the machine over the
        // run does not always favour the same mode.
        if round % 2 == 0 {
            modes.reverse();
        }
        let (mut without, mut with, mut untraced) = (None, None, None);
        for mode in modes {
            eprintln!("bench: round {round}/{}: {}", args.rounds, mode.describe());
            let agent = match (mode.exe(), agent_bins) {
                (Some(exe), Some((b, sink))) => {
                    let log = format!("agent-{}-{round}", mode.label());
                    Some((
                        Agent::start(&b.agent, exe, sink, scratch.path(), &log)?,
                        sink,
                    ))
                }
                _ => None,
            };
            let run = measure(args, &mut nginx, agent)?;
            progress(&run);
            match mode {
                Mode::Without => without = Some(run),
                Mode::With => with = Some(run),
                Mode::Untraced => untraced = Some(run),
            }
        }
        let Some(without) = without else {
            bail!("round {round} has no baseline measurement");
        };
        rounds.push(Round {
            without,
            with,
            untraced,
        });
    }

    let settings = args.settings();
    let summary = report::summarize(&rounds);
    let text = report::table(&settings, &rounds, &summary);
    let value = report::json(&settings, &rounds, &summary);
    Ok((text, value))
}

#[derive(Clone, Copy)]
enum Mode {
    Without,
    With,
    Untraced,
}

impl Mode {
    /// The executable the agent is told to trace, if the agent runs at all.
    fn exe(self) -> Option<&'static str> {
        match self {
            Mode::Without => None,
            Mode::With => Some("nginx"),
            Mode::Untraced => Some(UNTRACED_EXE),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Without => "without",
            Mode::With => "with",
            Mode::Untraced => "untraced",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Without => "without the agent",
            Mode::With => "with the agent tracing nginx",
            Mode::Untraced => "with the agent tracing nothing",
        }
    }
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

/// One mode of one round: closed loop, then fixed rate, with the agent read between.
fn measure(args: &BenchArgs, nginx: &mut Nginx, agent: Option<(Agent, &Sink)>) -> Result<ModeRun> {
    let before = agent.as_ref().map(|(a, sink)| a.snapshot(sink));
    let closed = wrk::run(&nginx.url(), args.connections, args.duration)?;
    nginx.check_alive()?;
    let middle = agent.as_ref().map(|(a, sink)| a.settle(sink));
    check_interrupted()?;
    let fixed = load::run(&load::PacedConfig {
        addr: nginx.addr(),
        rate: args.rate,
        connections: args.rate_connections,
        duration: Duration::from_secs(args.duration),
    });
    check_interrupted()?;
    nginx.check_alive()?;
    let agent_run = match agent {
        Some((mut agent, sink)) => {
            let after = agent.settle(sink);
            agent.check_alive()?;
            let peak_rss_kib = agent.peak_rss_kib();
            let (before, middle) = (before.unwrap_or_default(), middle.unwrap_or_default());
            let run = AgentRun {
                closed: middle.since(&before),
                fixed: after.since(&middle),
                peak_rss_kib,
            };
            match agent.stop() {
                Some(status) if !status.success() => {
                    eprintln!(
                        "bench: warning: the agent did not exit cleanly on SIGTERM ({status})"
                    );
                }
                None => eprintln!("bench: warning: the agent had to be killed"),
                Some(_) => {}
            }
            Some(run)
        }
        None => None,
    };
    Ok(ModeRun {
        closed,
        fixed,
        agent: agent_run,
    })
}

fn check_interrupted() -> Result<()> {
    if process::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn progress(mode: &ModeRun) {
    let p99 = mode
        .fixed
        .p99_us
        .map_or_else(|| "n/a".to_owned(), |us| format!("{us} us"));
    eprintln!(
        "bench:   wrk {:.0} req/s (p99 {:.0} us); fixed rate {:.0} req/s achieved, p99 {p99}, \
         {} errors",
        mode.closed.requests_per_sec,
        mode.closed.latency.p99_us,
        mode.fixed.achieved_rate(),
        mode.fixed.errors,
    );
    if let Some(agent) = &mode.agent {
        let exported = agent
            .fixed
            .spans_exported
            .map_or_else(|| "n/a".to_owned(), |n| format!("{n:.0}"));
        eprintln!(
            "bench:   agent: fixed-rate spans exported {exported} for {} requests sent",
            mode.fixed.sent
        );
    }
}
