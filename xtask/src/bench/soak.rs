//! `cargo xtask bench --soak SECONDS`: whether the agent's memory stays flat under steady
//! load. One agent traces the service at a fixed rate for the whole run and its RSS is
//! read every 5 s. The first 30 s (a third of a shorter run) are warm-up: maps, buffers and
//! the allocator's pools fill then, and that is not growth.
//!
//! The run counts as flat when RSS grew by less than max(2 MiB, 5% of the start), both
//! from the first to the last sample and along the least-squares line through all of
//! them, so neither one noisy sample nor a slow creep hidden in noise decides alone.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::agent::{Agent, Sink};
use super::load::{self, PacedResult};
use super::overhead::stop;
use super::procfs::{self, RssSample};
use super::report::{AgentPhase, opt};
use super::stats::{least_squares_slope, ratio};
use super::target::{ServiceKind, Target, rate_for};
use super::{BenchArgs, Binaries, check_interrupted};

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_secs(30);
/// Growth below this is flat however small the agent is.
const MIN_LIMIT_KIB: f64 = 2048.0;
/// Growth below this share of the starting RSS is flat.
const LIMIT_SHARE: f64 = 0.05;

/// What the RSS samples after warm-up show.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub samples_used: usize,
    pub start_kib: u64,
    pub end_kib: u64,
    pub max_kib: u64,
    /// Of the least-squares line through the samples; `None` for a single sample.
    pub slope_kib_per_min: Option<f64>,
    /// Last sample minus first.
    pub growth_kib: i64,
    /// The line's rise from the first sample's time to the last's.
    pub fitted_growth_kib: Option<f64>,
    pub limit_kib: f64,
    pub flat: bool,
}

impl Analysis {
    pub fn verdict(&self) -> &'static str {
        if self.flat { "flat" } else { "growing" }
    }
}

/// Warm-up for a run of `total`: 30 s, or a third of a shorter run.
pub fn warmup_for(total: Duration) -> Duration {
    WARMUP.min(total / 3)
}

/// Judges the samples taken at or after `warmup`; `None` when there are none.
pub fn analyze(samples: &[RssSample], warmup: Duration) -> Option<Analysis> {
    let used: Vec<&RssSample> = samples.iter().filter(|s| s.at >= warmup).collect();
    let (first, last) = (used.first()?, used.last()?);
    let points: Vec<(f64, f64)> = used
        .iter()
        .map(|s| (s.at.as_secs_f64() / 60.0, s.kib as f64))
        .collect();
    let slope = least_squares_slope(&points);
    let minutes = (last.at.saturating_sub(first.at)).as_secs_f64() / 60.0;
    let fitted_growth_kib = slope.map(|m| m * minutes);
    let growth_kib =
        i64::try_from(last.kib).unwrap_or(i64::MAX) - i64::try_from(first.kib).unwrap_or(i64::MAX);
    let limit_kib = MIN_LIMIT_KIB.max(first.kib as f64 * LIMIT_SHARE);
    let flat = (growth_kib as f64) < limit_kib && fitted_growth_kib.is_none_or(|g| g < limit_kib);
    Some(Analysis {
        samples_used: used.len(),
        start_kib: first.kib,
        end_kib: last.kib,
        max_kib: used.iter().map(|s| s.kib).max().unwrap_or(0),
        slope_kib_per_min: slope,
        growth_kib,
        fitted_growth_kib,
        limit_kib,
        flat,
    })
}

/// Everything one soak measured.
pub struct Soak {
    pub service: ServiceKind,
    pub seconds: u64,
    pub rate: u64,
    pub connections: u32,
    pub warmup: Duration,
    pub load: PacedResult,
    pub agent: AgentPhase,
    pub peak_rss_kib: Option<u64>,
    pub samples: Vec<RssSample>,
    pub analysis: Option<Analysis>,
}

/// Runs the soak on `service`; returns the report as text and as JSON.
pub fn run(
    args: &BenchArgs,
    seconds: u64,
    service: ServiceKind,
    root: &Path,
    binaries: &Binaries,
    scratch: &Path,
) -> Result<(String, Value)> {
    let dir = scratch.join(format!("soak-{}", service.name()));
    let mut target = Target::start(service, root, &dir)?;
    let sink_bin = binaries
        .sink
        .as_ref()
        .context("the soak needs the OTLP sink")?;
    let sink = Sink::start(sink_bin, &dir, args.sink_priority, args.otlp_protocol)?;
    let mut agent = Agent::start(&binaries.agent, service.exe(), &sink, &dir, "agent-soak")?;
    let rate = rate_for(&args.rate, service);
    let total = Duration::from_secs(seconds);
    eprintln!(
        "bench: soak: {} at {rate} req/s for {seconds} s, agent RSS every {} s",
        service.name(),
        SAMPLE_EVERY.as_secs()
    );
    let config = load::PacedConfig {
        addr: target.addr(),
        rate,
        connections: args.rate_connections,
        duration: total,
        list_late: args.late_log.is_some(),
    };
    let before = agent.snapshot(&sink);
    let mut count = 0u64;
    let per_minute = 60 / SAMPLE_EVERY.as_secs();
    let report_progress = |s: &RssSample| {
        if count.is_multiple_of(per_minute) {
            eprintln!(
                "bench:   {:>4} s: agent RSS {:.1} MiB",
                s.at.as_secs(),
                s.kib as f64 / 1024.0
            );
        }
        count += 1;
    };
    let (load, samples) =
        procfs::sample_rss_during(agent.pid(), SAMPLE_EVERY, report_progress, || {
            load::run(&config)
        });
    // Written before any check: an interrupted soak's late requests are what its user
    // may want to look at.
    if let Some(path) = &args.late_log {
        write_late_log(path, &load)?;
    }
    check_interrupted()?;
    target.check_alive()?;
    agent.check_alive()?;
    let after = agent.settle(&sink);
    let peak_rss_kib = agent.peak_rss_kib();
    stop(agent);
    let warmup = warmup_for(total);
    let soak = Soak {
        service,
        seconds,
        rate,
        connections: args.rate_connections,
        warmup,
        analysis: analyze(&samples, warmup),
        load,
        agent: after.since(&before),
        peak_rss_kib,
        samples,
    };
    Ok((table(&soak), json(&soak)))
}

/// See `--late-log`.
fn write_late_log(path: &Path, load: &PacedResult) -> Result<()> {
    if load.late_count > load.late.len() as u64 {
        eprintln!(
            "bench: warning: {} requests were late; {} lists the first {}",
            load.late_count,
            path.display(),
            load.late.len()
        );
    }
    let mut text = String::with_capacity(load.late.len() * 32);
    for request in &load.late {
        let _ = writeln!(
            text,
            "{} {} {}",
            request.due_us, request.latency_us, request.done_monotonic_us
        );
    }
    std::fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

pub fn table(soak: &Soak) -> String {
    let mut out = String::new();
    let load = &soak.load;
    let agent = &soak.agent;
    let _ = writeln!(
        out,
        "loupe soak on {}: {} s at {} req/s over {} connections, agent RSS read every {} s",
        soak.service.describe(),
        soak.seconds,
        soak.rate,
        soak.connections,
        SAMPLE_EVERY.as_secs()
    );
    let _ = writeln!(
        out,
        "load: {} sent, {} completed ({:.0} req/s), {} errors, p50 {} us, p99 {} us, \
         {} answered over {} us after they were due",
        load.sent,
        load.completed,
        load.achieved_rate(),
        load.errors,
        opt(load.p50_us.map(f64::from), 0),
        opt(load.p99_us.map(f64::from), 0),
        load.late_count,
        load::LATE_AFTER_US,
    );
    let per_100k = |cpu| ratio(cpu, Some(load.completed as f64)).map(|r| r * 1e5);
    let _ = writeln!(
        out,
        "agent: {} CPU s per 100k requests; spans exported / requests sent {}; \
         ring buffer drops {}; spans dropped {}",
        opt(per_100k(agent.cpu_seconds), 3),
        opt(ratio(agent.spans_exported, Some(load.sent as f64)), 4),
        opt(agent.ringbuf_drops, 0),
        opt(agent.spans_dropped, 0),
    );
    let _ = writeln!(
        out,
        "OTLP sink (standing in for a collector, not loupe's cost): {} CPU s per 100k requests",
        opt(per_100k(agent.sink_cpu_seconds), 3),
    );
    let by_minute: Vec<String> = soak
        .samples
        .iter()
        .step_by(usize::try_from(60 / SAMPLE_EVERY.as_secs()).unwrap_or(1))
        .map(|s| format!("{:.1}", s.kib as f64 / 1024.0))
        .collect();
    let _ = writeln!(out, "RSS each minute (MiB): {}", by_minute.join(" "));
    let Some(a) = &soak.analysis else {
        let _ = writeln!(out, "RSS: no samples after the warm-up; no verdict");
        return out;
    };
    let _ = writeln!(
        out,
        "RSS after {} s warm-up ({} samples): start {}, end {}, max {}; peak (VmHWM) {}",
        soak.warmup.as_secs(),
        a.samples_used,
        mib(a.start_kib as f64),
        mib(a.end_kib as f64),
        mib(a.max_kib as f64),
        soak.peak_rss_kib
            .map_or_else(|| "n/a".to_owned(), |k| mib(k as f64)),
    );
    let anon: Vec<u64> = soak
        .samples
        .iter()
        .filter(|s| s.at >= soak.warmup)
        .filter_map(|s| s.anon_kib)
        .collect();
    if let (Some(first), Some(last)) = (anon.first(), anon.last()) {
        let _ = writeln!(
            out,
            "anonymous RSS (heap, no ring buffer): start {}, end {}",
            mib(*first as f64),
            mib(*last as f64)
        );
    }
    let _ = writeln!(
        out,
        "slope {} KiB/min (least squares); growth {} KiB end - start, {} KiB along the line",
        opt(a.slope_kib_per_min, 1),
        a.growth_kib,
        opt(a.fitted_growth_kib, 0),
    );
    let _ = writeln!(
        out,
        "verdict: {} (limit max(2 MiB, 5% of start) = {})",
        a.verdict(),
        mib(a.limit_kib)
    );
    out
}

pub fn json(soak: &Soak) -> Value {
    let load = &soak.load;
    let agent = &soak.agent;
    json!({
        "settings": {
            "service": soak.service.name(),
            "seconds": soak.seconds,
            "rate": soak.rate,
            "rate_connections": soak.connections,
            "sample_every_s": SAMPLE_EVERY.as_secs(),
            "warmup_s": soak.warmup.as_secs(),
        },
        "load": {
            "sent": load.sent,
            "completed": load.completed,
            "errors": load.errors,
            "achieved_rate": load.achieved_rate(),
            "p50_us": load.p50_us,
            "p99_us": load.p99_us,
        },
        "agent": {
            "cpu_seconds": agent.cpu_seconds,
            "cpu_s_per_100k_requests":
                ratio(agent.cpu_seconds, Some(load.completed as f64)).map(|r| r * 1e5),
            "spans_exported": agent.spans_exported,
            "sink_cpu_seconds": agent.sink_cpu_seconds,
            "ringbuf_drops": agent.ringbuf_drops,
            "spans_dropped": agent.spans_dropped,
            "peak_rss_kib": soak.peak_rss_kib,
        },
        "rss": soak.analysis.as_ref().map(|a| json!({
            "start_kib": a.start_kib,
            "end_kib": a.end_kib,
            "max_kib": a.max_kib,
            "slope_kib_per_min": a.slope_kib_per_min,
            "growth_kib": a.growth_kib,
            "fitted_growth_kib": a.fitted_growth_kib,
            "limit_kib": a.limit_kib,
            "verdict": a.verdict(),
        })),
        "samples": soak.samples.iter().map(|s| json!({
            "t_s": s.at.as_secs_f64(),
            "rss_kib": s.kib,
            "anon_rss_kib": s.anon_kib,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(kib: impl Fn(u64) -> u64) -> Vec<RssSample> {
        (0..=120)
            .map(|i| RssSample {
                at: Duration::from_secs(i * 5),
                kib: kib(i),
                anon_kib: None,
            })
            .collect()
    }

    #[test]
    fn a_steady_agent_is_flat_despite_warm_up_and_noise() {
        // Warm-up climbs to 20 MiB, then it wobbles by 300 KiB.
        let s = samples(|i| {
            if i < 6 {
                10_000 + i * 1_000
            } else {
                20_480 + (i % 3) * 150
            }
        });
        let a = analyze(&s, WARMUP);
        assert!(a.as_ref().is_some_and(|a| a.flat), "{a:?}");
        let Some(a) = a else { return };
        assert_eq!(a.samples_used, 115);
        assert_eq!(a.start_kib, 20_480);
        assert_eq!(a.max_kib, 20_780);
        assert!(a.slope_kib_per_min.is_some_and(|m| m.abs() < 5.0));
        assert_eq!(a.limit_kib, 2048.0);
        assert_eq!(a.verdict(), "flat");
    }

    #[test]
    fn a_slow_leak_is_growing() {
        // 500 KiB a minute from 20 MiB: 4.6 MiB over the 9.5 measured minutes.
        let s = samples(|i| 20_480 + i * 500 / 12);
        let a = analyze(&s, WARMUP);
        assert!(a.as_ref().is_some_and(|a| !a.flat), "{a:?}");
        let Some(a) = a else { return };
        assert!(a.slope_kib_per_min.is_some_and(|m| (m - 500.0).abs() < 5.0));
        assert!(a.growth_kib > 4_500);
        assert_eq!(a.verdict(), "growing");
    }

    #[test]
    fn the_limit_grows_with_a_large_agent() {
        // 3 MiB of growth on 100 MiB is under 5%.
        let s = samples(|i| 102_400 + i * 3_072 / 120);
        let a = analyze(&s, WARMUP);
        assert!(
            a.as_ref().is_some_and(|a| a.flat && a.limit_kib > 5_000.0),
            "{a:?}"
        );
    }

    #[test]
    fn one_high_last_sample_is_not_enough_to_pass_or_fail_alone() {
        let mut s = samples(|_| 20_480);
        if let Some(last) = s.last_mut() {
            last.kib = 30_000;
        }
        assert!(analyze(&s, WARMUP).is_some_and(|a| !a.flat));
    }

    #[test]
    fn nothing_after_warm_up_gives_no_verdict() {
        let s = samples(|_| 1);
        assert_eq!(analyze(&s[..3], WARMUP), None);
        assert_eq!(analyze(&[], Duration::ZERO), None);
        assert_eq!(warmup_for(Duration::from_secs(600)), WARMUP);
        assert_eq!(warmup_for(Duration::from_secs(45)), Duration::from_secs(15));
    }
}
