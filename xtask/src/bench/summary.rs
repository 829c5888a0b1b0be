//! The figures a run's rounds come to: medians and sums per mode, and their ratios.

use super::programs::{self, ProgramRow};
use super::report::{AgentPhase, AgentRun, ModeRun, Round};
use super::stats::{median, ratio, sum_present};

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
    /// Service CPU microseconds per fixed-rate request, over all rounds of a mode.
    pub service_cpu_us_without: Option<f64>,
    pub service_cpu_us_with: Option<f64>,
    pub service_cpu_ratio: Option<f64>,
    pub untraced_service_cpu_ratio: Option<f64>,
    pub fixed_rate_with: Option<f64>,
    pub cpu_s_per_100k: Option<f64>,
    pub cpu_s_per_100k_fixed: Option<f64>,
    /// The OTLP sink's, over the same fixed-rate phases.
    pub sink_cpu_s_per_100k_fixed: Option<f64>,
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
    /// In-kernel time per fixed-rate request by program, the costliest first.
    pub programs: Vec<ProgramRow>,
    pub client_errors: u64,
    pub untraced_throughput_ratio: Option<f64>,
    pub untraced_fixed_p99_ratio: Option<f64>,
    pub untraced_peak_rss_mib: Option<f64>,
    pub untraced_steady_rss_mib: Option<f64>,
    pub untraced_bpf_ns_per_request: Option<f64>,
    pub untraced_bpf_ns_per_request_net: Option<f64>,
    pub untraced_bpf_ns_per_request_own: Option<f64>,
    /// Empty programs on the agent's tracepoints against no hooks at all.
    pub hooks_throughput_ratio: Option<f64>,
    pub hooks_fixed_p99_ratio: Option<f64>,
    pub hooks_service_cpu_ratio: Option<f64>,
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

/// The service's CPU microseconds per fixed-rate request over these runs: total over
/// total, so that rounds count by their requests. `None` when any run lacks the reading.
fn service_cpu_us(modes: &[&ModeRun]) -> Option<f64> {
    let cpu: Option<f64> = modes.iter().map(|m| m.fixed_service_cpu_s).sum();
    let requests: f64 = modes.iter().map(|m| m.fixed.completed as f64).sum();
    ratio(cpu, Some(requests)).map(|s| s * 1e6)
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
    let hooks: Vec<&ModeRun> = rounds.iter().filter_map(|r| r.hooks.as_ref()).collect();
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

    let service_cpu_us_without = service_cpu_us(&without);
    let service_cpu_us_with = service_cpu_us(&with);
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
        service_cpu_us_without,
        service_cpu_us_with,
        service_cpu_ratio: ratio(service_cpu_us_with, service_cpu_us_without),
        untraced_service_cpu_ratio: ratio(service_cpu_us(&untraced), service_cpu_us_without),
        cpu_s_per_100k: per_100k(phases(|p| p.cpu_seconds, Which::Both), all_requests),
        cpu_s_per_100k_fixed: per_100k(phases(|p| p.cpu_seconds, Which::Fixed), fixed_requests),
        sink_cpu_s_per_100k_fixed: per_100k(
            phases(|p| p.sink_cpu_seconds, Which::Fixed),
            fixed_requests,
        ),
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
        programs: programs::breakdown(&with, &untraced),
        client_errors: without
            .iter()
            .chain(&with)
            .chain(&untraced)
            .chain(&hooks)
            .map(|m| m.fixed.errors + m.closed.socket_errors)
            .sum(),
        untraced_throughput_ratio: ratio(med(&untraced, rps), rps_without),
        untraced_fixed_p99_ratio: ratio(med(&untraced, fixed_p99), fixed_p99_without_us),
        untraced_peak_rss_mib,
        untraced_steady_rss_mib,
        untraced_bpf_ns_per_request,
        untraced_bpf_ns_per_request_net,
        untraced_bpf_ns_per_request_own,
        hooks_throughput_ratio: ratio(med(&hooks, rps), rps_without),
        hooks_fixed_p99_ratio: ratio(med(&hooks, fixed_p99), fixed_p99_without_us),
        hooks_service_cpu_ratio: ratio(service_cpu_us(&hooks), service_cpu_us_without),
    }
}

#[derive(Clone, Copy)]
enum Which {
    Closed,
    Fixed,
    Both,
}
