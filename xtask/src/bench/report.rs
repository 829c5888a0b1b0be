//! What a benchmark run measured, summarised as ratios of "with the agent" to "without",
//! and printed as a table or JSON. It reports; it asserts nothing.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::OtlpProtocol;
use super::load::PacedResult;
use super::stats::{median, ratio, sum_present};
use super::wrk::WrkResult;

/// The agent's side of one load phase: differences between readings before and after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentPhase {
    pub cpu_seconds: Option<f64>,
    pub spans_exported: Option<f64>,
    pub spans_created: Option<f64>,
    pub ringbuf_drops: Option<f64>,
    /// Spans the agent made but lost: export queue full or export failed.
    pub spans_dropped: Option<f64>,
    pub sink_received: Option<f64>,
    /// Kernel time spent in the agent's eBPF programs (only with --bpf-stats).
    pub bpf_run_ns: Option<f64>,
    pub bpf_runs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRun {
    pub closed: AgentPhase,
    pub fixed: AgentPhase,
    pub peak_rss_kib: Option<u64>,
    /// Median of the RSS samples taken during the fixed-rate phase.
    pub steady_rss_kib: Option<u64>,
    /// The same of their anonymous part (`RssAnon`).
    pub steady_anon_kib: Option<u64>,
    /// The eBPF run time other processes' syscalls would have cost over the fixed-rate
    /// phase, at the rate measured while the service was idle just before it.
    pub bpf_background_ns: Option<f64>,
    /// The program runs those syscalls would have made, likewise.
    pub bpf_background_runs: Option<f64>,
    /// What the run-time accounting recorded per run of an empty program, measured right
    /// after the fixed-rate phase: its own clock reads and the call, charged to every run.
    pub bpf_empty_run_ns: Option<f64>,
}

/// One mode (with or without the agent) of one round: a closed-loop phase, then a
/// fixed-rate one.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeRun {
    pub closed: WrkResult,
    pub fixed: PacedResult,
    pub agent: Option<AgentRun>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub without: ModeRun,
    pub with: Option<ModeRun>,
    /// The agent running but selecting no process (`--host-tax`).
    pub untraced: Option<ModeRun>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `ServiceKind::name`.
    pub service: &'static str,
    /// `ServiceKind::describe`.
    pub service_desc: &'static str,
    pub duration_s: u64,
    pub rounds: u32,
    pub connections: u32,
    pub rate: u64,
    pub rate_connections: u32,
    /// The OTLP sink runs at idle CPU priority (`--sink-priority`).
    pub sink_idle: bool,
    /// How the agent exports to the sink (`--otlp-protocol`).
    pub otlp_protocol: OtlpProtocol,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub rps_without: Option<f64>,
    pub rps_with: Option<f64>,
    pub throughput_ratio: Option<f64>,
    pub closed_p99_ratio: Option<f64>,
    pub fixed_p99_without_us: Option<f64>,
    pub fixed_p99_with_us: Option<f64>,
    pub fixed_p99_ratio: Option<f64>,
    pub fixed_rate_without: Option<f64>,
    pub fixed_rate_with: Option<f64>,
    pub cpu_s_per_100k: Option<f64>,
    pub cpu_s_per_100k_fixed: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub steady_rss_mib: Option<f64>,
    pub steady_anon_mib: Option<f64>,
    pub fixed_sent: u64,
    pub fixed_exported: Option<f64>,
    pub spans_per_request: Option<f64>,
    pub sink_spans_per_request: Option<f64>,
    pub closed_spans_per_request: Option<f64>,
    pub ringbuf_drops: Option<f64>,
    pub spans_dropped: Option<f64>,
    pub bpf_ns_per_request: Option<f64>,
    pub bpf_ns_per_request_net: Option<f64>,
    /// The net figure less the accounting's floor for each program run in it.
    pub bpf_ns_per_request_own: Option<f64>,
    /// Median of the floors measured, ns per run.
    pub bpf_empty_run_ns: Option<f64>,
    pub client_errors: u64,
    pub untraced_throughput_ratio: Option<f64>,
    pub untraced_fixed_p99_ratio: Option<f64>,
    pub untraced_peak_rss_mib: Option<f64>,
    pub untraced_steady_rss_mib: Option<f64>,
    pub untraced_bpf_ns_per_request: Option<f64>,
    pub untraced_bpf_ns_per_request_net: Option<f64>,
    pub untraced_bpf_ns_per_request_own: Option<f64>,
}

/// In-kernel ns per fixed-rate request over these runs: all the agent's programs ran; that
/// less the idle background; and that less the accounting's floor (what it records for an
/// empty program) for each remaining run. Without kernel.bpf_stats_enabled the kernel
/// counts no runs and no time: no data, not zero.
fn bpf_per_request(modes: &[&ModeRun]) -> [Option<f64>; 3] {
    let runs: Vec<(&ModeRun, &AgentRun)> = modes
        .iter()
        .filter_map(|m| m.agent.as_ref().map(|a| (*m, a)))
        .collect();
    if sum_present(runs.iter().map(|(_, a)| a.fixed.bpf_runs)).is_none_or(|n| n <= 0.0) {
        return [None, None, None];
    }
    let requests = Some(runs.iter().map(|(m, _)| m.fixed.completed as f64).sum());
    let ns = sum_present(runs.iter().map(|(_, a)| a.fixed.bpf_run_ns));
    let background = sum_present(runs.iter().map(|(_, a)| a.bpf_background_ns));
    let net = ns.zip(background).map(|(n, b)| (n - b).max(0.0));
    // Each run's floor applies to that run: the host's clock costs what it cost then.
    let own: Option<f64> = runs
        .iter()
        .map(|(_, a)| {
            let net = a.fixed.bpf_run_ns? - a.bpf_background_ns?;
            let program_runs = a.fixed.bpf_runs? - a.bpf_background_runs?;
            Some((net - program_runs.max(0.0) * a.bpf_empty_run_ns?).max(0.0))
        })
        .sum();
    [
        ratio(ns, requests),
        ratio(net, requests),
        ratio(own, requests),
    ]
}

/// The median floor measured over these runs, ns per program run.
fn median_floor_ns(modes: &[&ModeRun]) -> Option<f64> {
    let floors: Vec<f64> = modes
        .iter()
        .filter_map(|m| m.agent.as_ref()?.bpf_empty_run_ns)
        .collect();
    median(&floors)
}

/// The agent's highest peak RSS, median steady RSS and median steady anonymous RSS over
/// these runs, in MiB.
fn rss_mib(modes: &[&ModeRun]) -> [Option<f64>; 3] {
    let agents = || modes.iter().filter_map(|m| m.agent.as_ref());
    let peak = agents().filter_map(|a| a.peak_rss_kib).max();
    let steady = |f: fn(&AgentRun) -> Option<u64>| {
        let kib: Vec<f64> = agents().filter_map(|a| f(a).map(|k| k as f64)).collect();
        median(&kib).map(|kib| kib / 1024.0)
    };
    [
        peak.map(|kib| kib as f64 / 1024.0),
        steady(|a| a.steady_rss_kib),
        steady(|a| a.steady_anon_kib),
    ]
}

pub fn summarize(rounds: &[Round]) -> Summary {
    let without: Vec<&ModeRun> = rounds.iter().map(|r| &r.without).collect();
    let with: Vec<&ModeRun> = rounds.iter().filter_map(|r| r.with.as_ref()).collect();
    let untraced: Vec<&ModeRun> = rounds.iter().filter_map(|r| r.untraced.as_ref()).collect();
    let agent: Vec<(&ModeRun, &AgentRun)> = with
        .iter()
        .filter_map(|m| m.agent.as_ref().map(|a| (*m, a)))
        .collect();

    let med = |modes: &[&ModeRun], f: fn(&ModeRun) -> Option<f64>| -> Option<f64> {
        median(&modes.iter().filter_map(|m| f(m)).collect::<Vec<_>>())
    };
    let rps = |m: &ModeRun| Some(m.closed.requests_per_sec);
    let closed_p99 = |m: &ModeRun| Some(m.closed.latency.p99_us);
    let fixed_p99 = |m: &ModeRun| m.fixed.p99_us.map(f64::from);
    let fixed_rate = |m: &ModeRun| Some(m.fixed.achieved_rate());

    let rps_without = med(&without, rps);
    let rps_with = med(&with, rps);
    let fixed_p99_without_us = med(&without, fixed_p99);
    let fixed_p99_with_us = med(&with, fixed_p99);

    let all_requests: f64 = agent
        .iter()
        .map(|(m, _)| m.closed.requests as f64 + m.fixed.completed as f64)
        .sum();
    let fixed_requests: f64 = agent.iter().map(|(m, _)| m.fixed.completed as f64).sum();
    let fixed_sent: u64 = agent.iter().map(|(m, _)| m.fixed.sent).sum();
    let closed_requests: f64 = agent.iter().map(|(m, _)| m.closed.requests as f64).sum();
    let phases = |f: fn(&AgentPhase) -> Option<f64>, which: Which| {
        sum_present(agent.iter().flat_map(|(_, a)| match which {
            Which::Closed => vec![f(&a.closed)],
            Which::Fixed => vec![f(&a.fixed)],
            Which::Both => vec![f(&a.closed), f(&a.fixed)],
        }))
    };
    let per_100k = |cpu: Option<f64>, requests: f64| ratio(cpu, Some(requests)).map(|r| r * 1e5);
    let fixed_exported = phases(|p| p.spans_exported, Which::Fixed);
    let [peak_rss_mib, steady_rss_mib, steady_anon_mib] = rss_mib(&with);
    let [untraced_peak_rss_mib, untraced_steady_rss_mib, _] = rss_mib(&untraced);
    let [
        bpf_ns_per_request,
        bpf_ns_per_request_net,
        bpf_ns_per_request_own,
    ] = bpf_per_request(&with);
    let [
        untraced_bpf_ns_per_request,
        untraced_bpf_ns_per_request_net,
        untraced_bpf_ns_per_request_own,
    ] = bpf_per_request(&untraced);

    Summary {
        rps_without,
        rps_with,
        throughput_ratio: ratio(rps_with, rps_without),
        closed_p99_ratio: ratio(med(&with, closed_p99), med(&without, closed_p99)),
        fixed_p99_without_us,
        fixed_p99_with_us,
        fixed_p99_ratio: ratio(fixed_p99_with_us, fixed_p99_without_us),
        fixed_rate_without: med(&without, fixed_rate),
        fixed_rate_with: med(&with, fixed_rate),
        cpu_s_per_100k: per_100k(phases(|p| p.cpu_seconds, Which::Both), all_requests),
        cpu_s_per_100k_fixed: per_100k(phases(|p| p.cpu_seconds, Which::Fixed), fixed_requests),
        peak_rss_mib,
        steady_rss_mib,
        steady_anon_mib,
        fixed_sent,
        fixed_exported,
        spans_per_request: ratio(fixed_exported, Some(fixed_sent as f64)),
        sink_spans_per_request: ratio(
            phases(|p| p.sink_received, Which::Fixed),
            Some(fixed_sent as f64),
        ),
        closed_spans_per_request: ratio(
            phases(|p| p.spans_exported, Which::Closed),
            Some(closed_requests),
        ),
        ringbuf_drops: phases(|p| p.ringbuf_drops, Which::Both),
        spans_dropped: phases(|p| p.spans_dropped, Which::Both),
        bpf_ns_per_request,
        bpf_ns_per_request_net,
        bpf_ns_per_request_own,
        bpf_empty_run_ns: median_floor_ns(&with),
        client_errors: without
            .iter()
            .chain(&with)
            .chain(&untraced)
            .map(|m| m.fixed.errors + m.closed.socket_errors)
            .sum(),
        untraced_throughput_ratio: ratio(med(&untraced, rps), rps_without),
        untraced_fixed_p99_ratio: ratio(med(&untraced, fixed_p99), fixed_p99_without_us),
        untraced_peak_rss_mib,
        untraced_steady_rss_mib,
        untraced_bpf_ns_per_request,
        untraced_bpf_ns_per_request_net,
        untraced_bpf_ns_per_request_own,
    }
}

#[derive(Clone, Copy)]
enum Which {
    Closed,
    Fixed,
    Both,
}

pub fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Two figures of the same kind, as `a / b`.
fn pair(a: Option<f64>, b: Option<f64>, decimals: usize) -> String {
    format!("{} / {}", opt(a, decimals), opt(b, decimals))
}

fn micros(us: Option<f64>) -> String {
    match us {
        None => "n/a".to_owned(),
        Some(us) if us >= 1000.0 => format!("{:.2} ms", us / 1000.0),
        Some(us) => format!("{us:.0} us"),
    }
}

pub fn table(settings: &Settings, rounds: &[Round], summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "loupe overhead on {}: {} round(s), {} s per phase; closed loop wrk -t2 -c{}; \
         fixed rate {} req/s over {} connections; OTLP/{} sink at {} CPU priority",
        settings.service_desc,
        settings.rounds,
        settings.duration_s,
        settings.connections,
        settings.rate,
        settings.rate_connections,
        match settings.otlp_protocol {
            OtlpProtocol::Http => "HTTP",
            OtlpProtocol::Grpc => "gRPC",
        },
        if settings.sink_idle { "idle" } else { "normal" }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<6} {:<8} {:>11} {:>10} {:>10} {:>10} {:>9} {:>7} {:>7} {:>10} {:>7} {:>7} {:>11}",
        "round",
        "agent",
        "wrk req/s",
        "wrk p99",
        "fixed p50",
        "fixed p99",
        "sent",
        "errors",
        "CPU s",
        "exported",
        "rb drop",
        "sp drop",
        "RSS MiB",
    );
    for (i, round) in rounds.iter().enumerate() {
        let modes = std::iter::once(("without", &round.without))
            .chain(round.with.as_ref().map(|m| ("with", m)))
            .chain(round.untraced.as_ref().map(|m| ("untraced", m)));
        for (name, mode) in modes {
            let agent = mode.agent.as_ref();
            let both = |f: fn(&AgentPhase) -> Option<f64>, decimals| {
                agent.map_or_else(
                    || "-".to_owned(),
                    |a| opt(sum_present([f(&a.closed), f(&a.fixed)]), decimals),
                )
            };
            let rss = agent.map_or_else(
                || "-".to_owned(),
                |a| {
                    let mib = |kib: Option<u64>| opt(kib.map(|k| k as f64 / 1024.0), 1);
                    format!("{}/{}", mib(a.steady_rss_kib), mib(a.peak_rss_kib))
                },
            );
            let _ = writeln!(
                out,
                "{:<6} {:<8} {:>11.0} {:>10} {:>10} {:>10} {:>9} {:>7} {:>7} {:>10} {:>7} {:>7} \
                 {:>11}",
                i + 1,
                name,
                mode.closed.requests_per_sec,
                micros(Some(mode.closed.latency.p99_us)),
                micros(mode.fixed.p50_us.map(f64::from)),
                micros(mode.fixed.p99_us.map(f64::from)),
                mode.fixed.sent,
                mode.fixed.errors + mode.closed.socket_errors,
                both(|p| p.cpu_seconds, 2),
                both(|p| p.spans_exported, 0),
                both(|p| p.ringbuf_drops, 0),
                both(|p| p.spans_dropped, 0),
                rss,
            );
        }
    }
    let _ = writeln!(
        out,
        "(RSS: median during the fixed-rate phase / peak; rb drop: ring-buffer records lost \
         in the kernel; sp drop: spans lost by the export queue)"
    );
    let _ = writeln!(out);
    let s = summary;
    let mut rows: Vec<(String, String)> = vec![
        (
            "throughput ratio, with/without (median wrk req/s)".into(),
            format!(
                "{}  ({} / {})",
                opt(s.throughput_ratio, 3),
                opt(s.rps_with, 0),
                opt(s.rps_without, 0)
            ),
        ),
        (
            format!("p99 latency ratio at {} req/s, with/without", settings.rate),
            format!(
                "{}  ({} / {})",
                opt(s.fixed_p99_ratio, 3),
                micros(s.fixed_p99_with_us),
                micros(s.fixed_p99_without_us)
            ),
        ),
        (
            "p99 latency ratio, closed loop".into(),
            opt(s.closed_p99_ratio, 3),
        ),
        (
            "achieved fixed rate, with / without (req/s)".into(),
            pair(s.fixed_rate_with, s.fixed_rate_without, 0),
        ),
        (
            "agent CPU s per 100k requests (all / fixed rate)".into(),
            pair(s.cpu_s_per_100k, s.cpu_s_per_100k_fixed, 3),
        ),
        (
            "agent RSS, steady / peak (MiB)".into(),
            pair(s.steady_rss_mib, s.peak_rss_mib, 1),
        ),
        (
            "agent anonymous RSS (heap, no ring buffer), steady (MiB)".into(),
            opt(s.steady_anon_mib, 1),
        ),
        (
            "spans exported / requests sent (fixed rate)".into(),
            format!(
                "{}  ({} / {})",
                opt(s.spans_per_request, 4),
                opt(s.fixed_exported, 0),
                s.fixed_sent
            ),
        ),
        (
            "spans received by the sink / requests sent".into(),
            opt(s.sink_spans_per_request, 4),
        ),
        (
            "spans exported / requests, closed loop".into(),
            opt(s.closed_spans_per_request, 4),
        ),
        ("ring buffer drops".into(), opt(s.ringbuf_drops, 0)),
        (
            "spans dropped (export queue full or export failed)".into(),
            opt(s.spans_dropped, 0),
        ),
        (
            "in-kernel ns per request, all / net of idle background".into(),
            pair(s.bpf_ns_per_request, s.bpf_ns_per_request_net, 0),
        ),
        (
            "  net less the accounting's floor per run (ns per request)".into(),
            opt(s.bpf_ns_per_request_own, 0),
        ),
        (
            "  the floor: ns recorded per run of an empty program".into(),
            opt(s.bpf_empty_run_ns, 1),
        ),
        ("client errors".into(), s.client_errors.to_string()),
    ];
    if rounds.iter().any(|r| r.untraced.is_some()) {
        rows.push((
            "untraced throughput ratio (agent tracing nothing)".into(),
            opt(s.untraced_throughput_ratio, 3),
        ));
        rows.push((
            "untraced p99 latency ratio at the fixed rate".into(),
            opt(s.untraced_fixed_p99_ratio, 3),
        ));
        rows.push((
            "untraced in-kernel ns per request, all / net".into(),
            pair(
                s.untraced_bpf_ns_per_request,
                s.untraced_bpf_ns_per_request_net,
                0,
            ),
        ));
        rows.push((
            "  untraced, net less the accounting's floor per run".into(),
            opt(s.untraced_bpf_ns_per_request_own, 0),
        ));
        rows.push((
            "untraced agent RSS, steady / peak (MiB)".into(),
            pair(s.untraced_steady_rss_mib, s.untraced_peak_rss_mib, 1),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

fn mode_json(mode: &ModeRun) -> Value {
    let phase = |p: &AgentPhase| {
        json!({
            "cpu_seconds": p.cpu_seconds,
            "spans_exported": p.spans_exported,
            "spans_created": p.spans_created,
            "ringbuf_drops": p.ringbuf_drops,
            "spans_dropped": p.spans_dropped,
            "sink_received": p.sink_received,
            "bpf_run_ns": p.bpf_run_ns,
            "bpf_runs": p.bpf_runs,
        })
    };
    json!({
        "closed_loop": {
            "requests": mode.closed.requests,
            "seconds": mode.closed.seconds,
            "requests_per_sec": mode.closed.requests_per_sec,
            "p50_us": mode.closed.latency.p50_us,
            "p75_us": mode.closed.latency.p75_us,
            "p90_us": mode.closed.latency.p90_us,
            "p99_us": mode.closed.latency.p99_us,
            "socket_errors": mode.closed.socket_errors,
            "non_2xx_3xx": mode.closed.non_2xx_3xx,
        },
        "fixed_rate": {
            "sent": mode.fixed.sent,
            "completed": mode.fixed.completed,
            "errors": mode.fixed.errors,
            "non_2xx": mode.fixed.non_2xx,
            "seconds": mode.fixed.seconds,
            "achieved_rate": mode.fixed.achieved_rate(),
            "p50_us": mode.fixed.p50_us,
            "p99_us": mode.fixed.p99_us,
            "max_us": mode.fixed.max_us,
        },
        "agent": mode.agent.as_ref().map(|a| json!({
            "closed_loop": phase(&a.closed),
            "fixed_rate": phase(&a.fixed),
            "peak_rss_kib": a.peak_rss_kib,
            "steady_rss_kib": a.steady_rss_kib,
            "steady_anon_rss_kib": a.steady_anon_kib,
            "bpf_background_ns": a.bpf_background_ns,
            "bpf_background_runs": a.bpf_background_runs,
            "bpf_empty_run_ns": a.bpf_empty_run_ns,
        })),
    })
}

pub fn json(settings: &Settings, rounds: &[Round], s: &Summary) -> Value {
    json!({
        "settings": {
            "service": settings.service,
            "duration_s": settings.duration_s,
            "rounds": settings.rounds,
            "connections": settings.connections,
            "rate": settings.rate,
            "rate_connections": settings.rate_connections,
            "otlp_protocol": settings.otlp_protocol.otel_name(),
        },
        "summary": {
            "throughput_ratio": s.throughput_ratio,
            "rps_without": s.rps_without,
            "rps_with": s.rps_with,
            "closed_loop_p99_ratio": s.closed_p99_ratio,
            "fixed_rate_p99_ratio": s.fixed_p99_ratio,
            "fixed_rate_p99_without_us": s.fixed_p99_without_us,
            "fixed_rate_p99_with_us": s.fixed_p99_with_us,
            "fixed_rate_achieved_without": s.fixed_rate_without,
            "fixed_rate_achieved_with": s.fixed_rate_with,
            "agent_cpu_s_per_100k_requests": s.cpu_s_per_100k,
            "agent_cpu_s_per_100k_requests_fixed_rate": s.cpu_s_per_100k_fixed,
            "agent_peak_rss_mib": s.peak_rss_mib,
            "agent_steady_rss_mib": s.steady_rss_mib,
            "agent_steady_anon_rss_mib": s.steady_anon_mib,
            "fixed_rate_requests_sent": s.fixed_sent,
            "fixed_rate_spans_exported": s.fixed_exported,
            "spans_exported_per_request": s.spans_per_request,
            "sink_spans_per_request": s.sink_spans_per_request,
            "closed_loop_spans_per_request": s.closed_spans_per_request,
            "ringbuf_drops": s.ringbuf_drops,
            "spans_dropped": s.spans_dropped,
            "bpf_ns_per_request": s.bpf_ns_per_request,
            "bpf_ns_per_request_net": s.bpf_ns_per_request_net,
            "bpf_ns_per_request_own": s.bpf_ns_per_request_own,
            "bpf_empty_run_ns": s.bpf_empty_run_ns,
            "untraced_bpf_ns_per_request": s.untraced_bpf_ns_per_request,
            "untraced_bpf_ns_per_request_net": s.untraced_bpf_ns_per_request_net,
            "untraced_bpf_ns_per_request_own": s.untraced_bpf_ns_per_request_own,
            "client_errors": s.client_errors,
            "untraced_throughput_ratio": s.untraced_throughput_ratio,
            "untraced_fixed_rate_p99_ratio": s.untraced_fixed_p99_ratio,
            "untraced_agent_peak_rss_mib": s.untraced_peak_rss_mib,
            "untraced_agent_steady_rss_mib": s.untraced_steady_rss_mib,
        },
        "rounds": rounds.iter().map(|r| json!({
            "without": mode_json(&r.without),
            "with": r.with.as_ref().map(mode_json),
            "untraced": r.untraced.as_ref().map(mode_json),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
