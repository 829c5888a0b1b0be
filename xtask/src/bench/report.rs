//! What a benchmark run measured, summarised as ratios of "with the agent" to "without",
//! and printed as a table or JSON. It reports; it asserts nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::OtlpProtocol;
use super::load::PacedResult;
use super::programs::{self, ProgramPhase};
use super::stats::sum_present;
pub use super::summary::{Summary, summarize};
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
    /// CPU the OTLP sink used: what the stand-in collector cost the host, not loupe.
    pub sink_cpu_seconds: Option<f64>,
    /// Kernel time spent in the agent's eBPF programs (only with --bpf-stats).
    pub bpf_run_ns: Option<f64>,
    pub bpf_runs: Option<f64>,
    /// The same by program (only with --bpf-stats).
    pub programs: BTreeMap<String, ProgramPhase>,
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
    /// CPU seconds the service used during the fixed-rate phase: its own work, with
    /// whatever the agent's probes add to its syscalls.
    pub fixed_service_cpu_s: Option<f64>,
    pub agent: Option<AgentRun>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub without: ModeRun,
    pub with: Option<ModeRun>,
    /// The agent running but selecting no process (`--host-tax`).
    pub untraced: Option<ModeRun>,
    /// No agent, an empty program on each of its tracepoints (`--host-tax`).
    pub hooks: Option<ModeRun>,
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
            .chain(round.untraced.as_ref().map(|m| ("untraced", m)))
            .chain(round.hooks.as_ref().map(|m| ("hooks", m)));
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
         in the kernel; sp drop: spans lost by the export queue{})",
        if rounds.iter().any(|r| r.hooks.is_some()) {
            "; hooks: no agent, an empty program on each tracepoint it attaches to"
        } else {
            ""
        }
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
            "service CPU per request at the fixed rate, with/without".into(),
            format!(
                "{}  ({} / {} us)",
                opt(s.service_cpu_ratio, 3),
                opt(s.service_cpu_us_with, 1),
                opt(s.service_cpu_us_without, 1)
            ),
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
            "OTLP sink CPU s per 100k requests at the fixed rate (not loupe's)".into(),
            opt(s.sink_cpu_s_per_100k_fixed, 3),
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
    ];
    rows.extend(programs::text_rows(&s.programs));
    rows.push(("client errors".into(), s.client_errors.to_string()));
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
            "untraced service CPU per request ratio at the fixed rate".into(),
            opt(s.untraced_service_cpu_ratio, 3),
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
    if rounds.iter().any(|r| r.hooks.is_some()) {
        rows.push((
            "hooks-only throughput ratio (empty programs, no agent)".into(),
            opt(s.hooks_throughput_ratio, 3),
        ));
        rows.push((
            "hooks-only p99 latency ratio at the fixed rate".into(),
            opt(s.hooks_fixed_p99_ratio, 3),
        ));
        rows.push((
            "hooks-only service CPU per request ratio at the fixed rate".into(),
            opt(s.hooks_service_cpu_ratio, 3),
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
            "sink_cpu_seconds": p.sink_cpu_seconds,
            "bpf_run_ns": p.bpf_run_ns,
            "bpf_runs": p.bpf_runs,
            "bpf_by_program": programs::phase_json(&p.programs),
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
            "service_cpu_seconds": mode.fixed_service_cpu_s,
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
    let mut value = json!({
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
            "service_cpu_us_per_request_without": s.service_cpu_us_without,
            "service_cpu_us_per_request_with": s.service_cpu_us_with,
            "service_cpu_ratio": s.service_cpu_ratio,
            "untraced_service_cpu_ratio": s.untraced_service_cpu_ratio,
            "agent_cpu_s_per_100k_requests": s.cpu_s_per_100k,
            "agent_cpu_s_per_100k_requests_fixed_rate": s.cpu_s_per_100k_fixed,
            "sink_cpu_s_per_100k_requests_fixed_rate": s.sink_cpu_s_per_100k_fixed,
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
            "bpf_by_program": programs::json_rows(&s.programs),
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
            "hooks": r.hooks.as_ref().map(mode_json),
        })).collect::<Vec<_>>(),
    });
    // Added apart: one more key in the literal above passes json!'s recursion limit.
    for (key, figure) in [
        ("hooks_throughput_ratio", s.hooks_throughput_ratio),
        ("hooks_fixed_rate_p99_ratio", s.hooks_fixed_p99_ratio),
        ("hooks_service_cpu_ratio", s.hooks_service_cpu_ratio),
    ] {
        value["summary"][key] = json!(figure);
    }
    value
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
