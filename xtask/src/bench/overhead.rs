//! The overhead rounds on one service: each round runs the same load without the agent,
//! with it tracing the service, and (with `--host-tax`) with it tracing nothing and with
//! only its hooks: empty programs where the agent attaches its own (see `hooks`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::agent::{Agent, Sink};
use super::hooks::{self, EmptyHooks};
use super::procfs::{self, RssSample};
use super::report::{self, AgentRun, ModeRun, Round, Settings};
use super::stats::median;
use super::target::{ServiceKind, Target, explicit_rate, fitted_rate};
use super::{BenchArgs, Binaries, UNTRACED_EXE, check_interrupted, load, stats_floor, wrk};

/// How often the agent's RSS is read during a fixed-rate phase.
const RSS_EVERY: Duration = Duration::from_millis(500);
/// With `--bpf-stats`, how long the service idles before the fixed rate while the agent's
/// programs keep running for the rest of the machine: their cost then is subtracted.
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// The overhead rounds on `service`; returns the report as text and as JSON.
pub fn measure(
    args: &BenchArgs,
    service: ServiceKind,
    root: &Path,
    binaries: Option<&Binaries>,
    scratch: &Path,
) -> Result<(String, serde_json::Value)> {
    let dir = scratch.join(service.name());
    let mut target = Target::start(service, root, &dir)?;
    eprintln!("bench: {} on {}", service.name(), target.url());
    let sink = match binaries.and_then(|b| b.sink.as_ref()) {
        Some(bin) => {
            let sink = Sink::start(bin, &dir, args.sink_priority, args.otlp_protocol)?;
            eprintln!(
                "bench: OTLP sink on {} ({})",
                sink.addr(),
                args.otlp_protocol.otel_name()
            );
            Some(sink)
        }
        None => None,
    };
    let _bpf_stats = args.bpf_stats.then(enable_bpf_stats).flatten();
    let mut settings = args.settings(service);

    if args.warmup > 0 {
        eprintln!("bench: warm-up, {} s", args.warmup);
        let warm = wrk::run(&target.url(), args.connections, args.warmup)?;
        if explicit_rate(&args.rate, service).is_none() {
            let fitted = fitted_rate(
                settings.rate,
                warm.requests_per_sec,
                u64::from(args.rate_connections),
            );
            if fitted < settings.rate {
                eprintln!(
                    "bench: {} carried {:.0} req/s in the warm-up: fixed rate {fitted} req/s \
                     instead of {} (half its capacity at most)",
                    service.name(),
                    warm.requests_per_sec,
                    settings.rate
                );
                settings.rate = fitted;
            }
        }
    }
    let mut rounds = Vec::new();
    let agent_bins = binaries.zip(sink.as_ref());
    let hooked = match agent_bins {
        Some((b, sink)) if args.host_tax => agent_hooks(&b.agent, service, sink, &dir)?,
        _ => Vec::new(),
    };
    for round in 1..=args.rounds {
        let mut modes = vec![Mode::Without];
        if agent_bins.is_some() {
            modes.push(Mode::With);
            if args.host_tax {
                modes.push(Mode::Untraced);
                if !hooked.is_empty() {
                    modes.push(Mode::Hooks);
                }
            }
        }
        // Every other round runs its modes in reverse, so a drift in the machine over the
        // run does not always favour the same mode.
        if round % 2 == 0 {
            modes.reverse();
        }
        let (mut without, mut with, mut untraced, mut hooks_only) = (None, None, None, None);
        for mode in modes {
            eprintln!(
                "bench: {}: round {round}/{}: {}",
                service.name(),
                args.rounds,
                mode.describe()
            );
            let agent = match (mode.exe(service), agent_bins) {
                (Some(exe), Some((b, sink))) => {
                    let log = format!("agent-{}-{round}", mode.label());
                    Some((Agent::start(&b.agent, exe, sink, &dir, &log)?, sink))
                }
                _ => None,
            };
            let empty = match mode {
                Mode::Hooks => Some(EmptyHooks::attach(&hooked)?),
                _ => None,
            };
            let run = measure_mode(args, &settings, &mut target, agent)?;
            drop(empty);
            progress(&run);
            match mode {
                Mode::Without => without = Some(run),
                Mode::With => with = Some(run),
                Mode::Untraced => untraced = Some(run),
                Mode::Hooks => hooks_only = Some(run),
            }
        }
        let Some(without) = without else {
            bail!("round {round} has no baseline measurement");
        };
        rounds.push(Round {
            without,
            with,
            untraced,
            hooks: hooks_only,
        });
    }

    let summary = report::summarize(&rounds);
    let text = report::table(&settings, &rounds, &summary);
    let value = report::json(&settings, &rounds, &summary);
    Ok((text, value))
}

/// The tracepoints the agent attaches to when it traces `service`: started once, asked,
/// stopped. None, with a warning, when the kernel names none of them (perf links before
/// Linux 6.12 keep their tracepoint to themselves): the hooks-only mode is then left out.
fn agent_hooks(
    agent_bin: &Path,
    service: ServiceKind,
    sink: &Sink,
    dir: &Path,
) -> Result<Vec<String>> {
    let agent = Agent::start(agent_bin, service.exe(), sink, dir, "agent-hooks")?;
    let found = hooks::attached_tracepoints(agent.pid());
    stop(agent);
    let found = found?;
    if found.is_empty() {
        eprintln!(
            "bench: warning: the kernel names none of the agent's tracepoints; no hooks-only \
             mode"
        );
        return Ok(found);
    }
    eprintln!(
        "bench: the agent attaches {} programs to tracepoints; the hooks-only mode attaches \
         an empty program to each",
        found.len()
    );
    Ok(found)
}

/// Turns on the kernel's eBPF run-time accounting, or warns that it cannot.
pub fn enable_bpf_stats() -> Option<procfs::BpfStatsSwitch> {
    match procfs::BpfStatsSwitch::enable() {
        Ok(switch) => Some(switch),
        Err(err) => {
            eprintln!("bench: warning: cannot enable kernel.bpf_stats_enabled: {err}");
            None
        }
    }
}

/// What the run-time accounting records per run of an empty program, or a warning.
fn empty_run_ns() -> Option<f64> {
    match stats_floor::empty_program_ns() {
        Ok(ns) => Some(ns),
        Err(err) => {
            eprintln!("bench: warning: cannot measure the eBPF accounting's floor: {err}");
            None
        }
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Without,
    With,
    Untraced,
    /// No agent, an empty program on each of its tracepoints.
    Hooks,
}

impl Mode {
    /// The executable the agent is told to trace, if the agent runs at all.
    fn exe(self, service: ServiceKind) -> Option<&'static str> {
        match self {
            Mode::Without | Mode::Hooks => None,
            Mode::With => Some(service.exe()),
            Mode::Untraced => Some(UNTRACED_EXE),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Without => "without",
            Mode::With => "with",
            Mode::Untraced => "untraced",
            Mode::Hooks => "hooks",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Without => "without the agent",
            Mode::With => "with the agent tracing the service",
            Mode::Untraced => "with the agent tracing nothing",
            Mode::Hooks => "without the agent, an empty program on each of its tracepoints",
        }
    }
}

/// The median of what `field` reads off RSS samples, in KiB.
pub fn median_kib(samples: &[RssSample], field: fn(&RssSample) -> Option<u64>) -> Option<u64> {
    let kib: Vec<f64> = samples
        .iter()
        .filter_map(|s| field(s).map(|k| k as f64))
        .collect();
    median(&kib).map(|m| m.round() as u64)
}

/// One mode of one round: closed loop, then fixed rate, with the agent read between.
fn measure_mode(
    args: &BenchArgs,
    settings: &Settings,
    target: &mut Target,
    agent: Option<(Agent, &Sink)>,
) -> Result<ModeRun> {
    let before = agent.as_ref().map(|(a, sink)| a.snapshot(sink));
    let closed = wrk::run(&target.url(), args.connections, args.duration)?;
    target.check_alive()?;
    let middle = agent.as_ref().map(|(a, sink)| a.settle(sink));
    check_interrupted()?;
    let idle = match (&agent, &middle) {
        (Some((a, sink)), Some(middle)) if args.bpf_stats => {
            let started = Instant::now();
            std::thread::sleep(IDLE_WINDOW);
            let now = a.snapshot(sink);
            let idle = now.since(middle);
            let per_s = |v: Option<f64>| v.map(|v| v / started.elapsed().as_secs_f64());
            Some((now, per_s(idle.bpf_run_ns), per_s(idle.bpf_runs)))
        }
        _ => None,
    };
    let fixed_started = Instant::now();
    let config = load::PacedConfig {
        addr: target.addr(),
        rate: settings.rate,
        connections: settings.rate_connections,
        duration: Duration::from_secs(args.duration),
        list_late: false,
    };
    let service_cpu_before = target.cpu_time();
    let (fixed, rss) = match &agent {
        Some((a, _)) => {
            procfs::sample_rss_during(a.pid(), RSS_EVERY, |_| {}, || load::run(&config))
        }
        None => (load::run(&config), Vec::new()),
    };
    let fixed_service_cpu_s = target
        .cpu_time()
        .zip(service_cpu_before)
        .map(|(after, before)| after.saturating_sub(before).as_secs_f64());
    check_interrupted()?;
    target.check_alive()?;
    let agent_run = match agent {
        Some((mut agent, sink)) => {
            let after = agent.settle(sink);
            agent.check_alive()?;
            let fixed_window = fixed_started.elapsed().as_secs_f64();
            let (before, middle) = (before.unwrap_or_default(), middle.unwrap_or_default());
            let (fixed_start, background_ns_per_s, background_runs_per_s) = match idle {
                Some((snapshot, ns, runs)) => (snapshot, ns, runs),
                None => (middle.clone(), None, None),
            };
            // Measured while the agent still runs, so the host is as loaded as it was.
            let empty_run_ns = args.bpf_stats.then(empty_run_ns).flatten();
            let run = AgentRun {
                closed: middle.since(&before),
                fixed: after.since(&fixed_start),
                peak_rss_kib: agent.peak_rss_kib(),
                steady_rss_kib: median_kib(&rss, |s| Some(s.kib)),
                steady_anon_kib: median_kib(&rss, |s| s.anon_kib),
                bpf_background_ns: background_ns_per_s.map(|r| r * fixed_window),
                bpf_background_runs: background_runs_per_s.map(|r| r * fixed_window),
                bpf_empty_run_ns: empty_run_ns,
            };
            stop(agent);
            Some(run)
        }
        None => None,
    };
    Ok(ModeRun {
        closed,
        fixed,
        fixed_service_cpu_s,
        agent: agent_run,
    })
}

/// Stops the agent, warning when it did not exit cleanly.
pub fn stop(agent: Agent) {
    match agent.stop() {
        Some(status) if !status.success() => {
            eprintln!("bench: warning: the agent did not exit cleanly on SIGTERM ({status})");
        }
        None => eprintln!("bench: warning: the agent had to be killed"),
        Some(_) => {}
    }
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
        let count = |n: Option<f64>| n.map_or_else(|| "n/a".to_owned(), |n| format!("{n:.0}"));
        eprintln!(
            "bench:   agent: fixed-rate spans exported {} for {} requests sent; \
             dropped {} spans, {} ring-buffer records; RSS {} KiB",
            count(agent.fixed.spans_exported),
            mode.fixed.sent,
            count(agent.fixed.spans_dropped),
            count(agent.fixed.ringbuf_drops),
            agent
                .steady_rss_kib
                .map_or_else(|| "n/a".to_owned(), |k| k.to_string()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rss_is_the_median_sample() {
        let at = |s| Duration::from_secs(s);
        let mut samples = [
            RssSample {
                at: at(0),
                kib: 9_000,
                anon_kib: Some(1_000),
            },
            RssSample {
                at: at(1),
                kib: 12_000,
                anon_kib: Some(1_000),
            },
            RssSample {
                at: at(2),
                kib: 12_500,
                anon_kib: Some(1_000),
            },
            RssSample {
                at: at(3),
                kib: 30_000,
                anon_kib: Some(1_000),
            },
        ];
        let rss = |s: &RssSample| Some(s.kib);
        assert_eq!(median_kib(&samples, rss), Some(12_250));
        assert_eq!(median_kib(&samples[..3], rss), Some(12_000));
        assert_eq!(median_kib(&samples, |s| s.anon_kib), Some(1_000));
        assert_eq!(median_kib(&[], rss), None);
        samples[1].anon_kib = None;
        samples[2].anon_kib = Some(4_000);
        // Samples without the figure are left out, not counted as zero.
        assert_eq!(median_kib(&samples, |s| s.anon_kib), Some(1_000));
    }
}
