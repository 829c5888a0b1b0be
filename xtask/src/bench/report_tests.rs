use super::*;
use crate::bench::programs::ProgramPhase;
use crate::bench::wrk::Latency;

fn mode(rps: f64, closed_p99: f64, fixed_p99: u32, agent: Option<AgentRun>) -> ModeRun {
    ModeRun {
        closed: WrkResult {
            requests: (rps * 10.0) as u64,
            seconds: 10.0,
            requests_per_sec: rps,
            latency: Latency {
                p50_us: 100.0,
                p75_us: 150.0,
                p90_us: 200.0,
                p99_us: closed_p99,
            },
            socket_errors: 0,
            non_2xx_3xx: 0,
        },
        fixed: PacedResult {
            sent: 100_000,
            completed: 100_000,
            errors: 0,
            non_2xx: 0,
            seconds: 10.0,
            p50_us: Some(80),
            p99_us: Some(fixed_p99),
            max_us: Some(fixed_p99 * 2),
            late_count: 0,
            late: Vec::new(),
        },
        fixed_service_cpu_s: None,
        agent,
    }
}

fn agent(cpu_closed: f64, cpu_fixed: f64, exported_fixed: f64, rss_kib: u64) -> AgentRun {
    AgentRun {
        closed: AgentPhase {
            cpu_seconds: Some(cpu_closed),
            spans_exported: Some(500_000.0),
            ringbuf_drops: Some(2.0),
            spans_dropped: Some(5.0),
            ..AgentPhase::default()
        },
        fixed: AgentPhase {
            cpu_seconds: Some(cpu_fixed),
            spans_exported: Some(exported_fixed),
            sink_received: Some(exported_fixed),
            sink_cpu_seconds: Some(cpu_fixed / 5.0),
            ringbuf_drops: Some(0.0),
            ..AgentPhase::default()
        },
        peak_rss_kib: Some(rss_kib),
        steady_rss_kib: Some(rss_kib / 2),
        steady_anon_kib: Some(rss_kib / 4),
        bpf_background_ns: Some(10_000_000.0),
        bpf_background_runs: Some(40_000.0),
        bpf_empty_run_ns: Some(50.0),
    }
}

fn rounds() -> Vec<Round> {
    vec![
        Round {
            without: mode(100_000.0, 1000.0, 200, None),
            with: Some(mode(
                90_000.0,
                1500.0,
                300,
                Some(agent(1.0, 0.5, 100_000.0, 20_480)),
            )),
            untraced: None,
            hooks: None,
        },
        Round {
            without: mode(110_000.0, 1200.0, 220, None),
            with: Some(mode(
                80_000.0,
                1800.0,
                330,
                Some(agent(1.2, 0.5, 99_000.0, 30_720)),
            )),
            untraced: None,
            hooks: None,
        },
        Round {
            without: mode(90_000.0, 900.0, 180, None),
            with: Some(mode(
                85_000.0,
                1700.0,
                440,
                Some(agent(1.1, 0.5, 100_000.0, 25_600)),
            )),
            untraced: None,
            hooks: None,
        },
    ]
}

#[test]
fn summary_uses_medians_and_totals() {
    let s = summarize(&rounds());
    assert_eq!(s.rps_without, Some(100_000.0));
    assert_eq!(s.rps_with, Some(85_000.0));
    assert_eq!(s.throughput_ratio, Some(0.85));
    assert_eq!(s.closed_p99_ratio, Some(1.7));
    assert_eq!(s.fixed_p99_without_us, Some(200.0));
    assert_eq!(s.fixed_p99_with_us, Some(330.0));
    assert_eq!(s.fixed_p99_ratio, Some(1.65));
    // CPU 4.8 s over 2.55M closed-loop + 300k fixed-rate requests.
    let cpu = s.cpu_s_per_100k.unwrap_or(0.0);
    assert!((cpu - 4.8 / 2_850_000.0 * 1e5).abs() < 1e-9);
    assert_eq!(s.cpu_s_per_100k_fixed, Some(0.5));
    let sink_cpu = s.sink_cpu_s_per_100k_fixed.unwrap_or(0.0);
    assert!((sink_cpu - 0.1).abs() < 1e-9);
    assert_eq!(s.peak_rss_mib, Some(30.0));
    // Steady RSS is the median over rounds: 10, 15 and 12.5 MiB.
    assert_eq!(s.steady_rss_mib, Some(12.5));
    assert_eq!(s.steady_anon_mib, Some(6.25));
    assert_eq!(s.spans_dropped, Some(15.0));
    assert_eq!(s.fixed_sent, 300_000);
    assert_eq!(s.fixed_exported, Some(299_000.0));
    let spr = s.spans_per_request.unwrap_or(0.0);
    assert!((spr - 299_000.0 / 300_000.0).abs() < 1e-12);
    assert_eq!(s.sink_spans_per_request, s.spans_per_request);
    assert_eq!(s.ringbuf_drops, Some(6.0));
    assert_eq!(s.bpf_ns_per_request, None);
    // Stats switched off: the kernel reports zero runs, which is no figure.
    let mut off = rounds();
    for a in off
        .iter_mut()
        .filter_map(|r| r.with.as_mut()?.agent.as_mut())
    {
        a.fixed.bpf_runs = Some(0.0);
        a.fixed.bpf_run_ns = Some(0.0);
    }
    assert_eq!(summarize(&off).bpf_ns_per_request, None);
    let mut on = rounds();
    for a in on
        .iter_mut()
        .filter_map(|r| r.with.as_mut()?.agent.as_mut())
    {
        a.fixed.bpf_runs = Some(400_000.0);
        a.fixed.bpf_run_ns = Some(100_000_000.0);
    }
    // 300 ms in the kernel over 300k fixed-rate requests, 30 ms of it other processes'.
    assert_eq!(summarize(&on).bpf_ns_per_request, Some(1000.0));
    assert_eq!(summarize(&on).bpf_ns_per_request_net, Some(900.0));
    // Each round: 90 ms net over 360k runs net, 50 ns of each the accounting's own.
    assert_eq!(summarize(&on).bpf_ns_per_request_own, Some(720.0));
    assert_eq!(summarize(&on).bpf_empty_run_ns, Some(50.0));
    // A round without its floor leaves no floor-adjusted figure rather than a smaller one.
    if let Some(a) = on[1].with.as_mut().and_then(|m| m.agent.as_mut()) {
        a.bpf_empty_run_ns = None;
    }
    assert_eq!(summarize(&on).bpf_ns_per_request_own, None);
    assert_eq!(summarize(&on).bpf_ns_per_request_net, Some(900.0));
    assert_eq!(s.fixed_rate_with, Some(10_000.0));
}

#[test]
fn baseline_only_runs_leave_agent_figures_empty() {
    let baseline: Vec<Round> = rounds()
        .into_iter()
        .map(|r| Round {
            without: r.without,
            with: None,
            untraced: None,
            hooks: None,
        })
        .collect();
    let s = summarize(&baseline);
    assert_eq!(s.rps_without, Some(100_000.0));
    assert_eq!(s.throughput_ratio, None);
    assert_eq!(s.fixed_p99_ratio, None);
    assert_eq!(s.cpu_s_per_100k, None);
    assert_eq!(s.peak_rss_mib, None);
    assert_eq!(s.spans_per_request, None);
    assert_eq!(s.ringbuf_drops, None);
    assert_eq!(s.steady_rss_mib, None);
    assert_eq!(s.spans_dropped, None);
    let text = table(&settings(), &baseline, &s);
    assert!(text.contains("n/a"));
    assert!(text.lines().any(|l| l.starts_with("1      without")));
    assert!(!text.lines().any(|l| l.starts_with("1      with ")));
}

#[test]
fn missing_agent_metrics_stay_missing_not_zero() {
    let mut r = rounds();
    for round in &mut r {
        if let Some(with) = round.with.as_mut()
            && let Some(a) = with.agent.as_mut()
        {
            a.fixed.spans_exported = None;
            a.closed.spans_exported = None;
        }
    }
    let s = summarize(&r);
    assert_eq!(s.spans_per_request, None);
    assert_eq!(s.closed_spans_per_request, None);
    assert!(s.cpu_s_per_100k.is_some());
}

fn settings() -> Settings {
    Settings {
        service: "nginx",
        service_desc: "nginx (test)",
        duration_s: 10,
        rounds: 3,
        connections: 50,
        rate: 10_000,
        rate_connections: 32,
        sink_idle: true,
        otlp_protocol: OtlpProtocol::Http,
    }
}

#[test]
fn table_and_json_carry_the_summary() {
    let r = rounds();
    let s = summarize(&r);
    let text = table(&settings(), &r, &s);
    assert!(text.contains("throughput ratio"));
    assert!(text.contains("0.850"));
    assert!(text.contains("1.650"));
    assert!(text.contains("30.0"));
    assert!(text.contains("loupe overhead on nginx (test):"));
    assert!(text.contains("12.5 / 30.0"));
    // Round 1's agent: steady 10.0 MiB, peak 20.0 MiB.
    assert!(
        text.lines()
            .any(|l| l.starts_with("1      with") && l.ends_with("10.0/20.0"))
    );
    assert_eq!(text.lines().filter(|l| l.starts_with("2 ")).count(), 2);
    let v = json(&settings(), &r, &s);
    assert_eq!(v["summary"]["throughput_ratio"], json!(0.85));
    assert_eq!(v["summary"]["fixed_rate_requests_sent"], json!(300_000));
    assert_eq!(v["rounds"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        v["rounds"][0]["with"]["agent"]["peak_rss_kib"],
        json!(20_480)
    );
    assert_eq!(v["rounds"][0]["without"]["agent"], Value::Null);
    assert_eq!(v["settings"]["rate"], json!(10_000));
    assert_eq!(v["settings"]["service"], json!("nginx"));
    assert_eq!(v["summary"]["agent_steady_rss_mib"], json!(12.5));
    assert_eq!(v["summary"]["spans_dropped"], json!(15.0));
    assert_eq!(
        v["rounds"][0]["with"]["agent"]["closed_loop"]["spans_dropped"],
        json!(5.0)
    );
}

#[test]
fn durations_print_in_sensible_units() {
    assert_eq!(micros(Some(373.0)), "373 us");
    assert_eq!(micros(Some(3320.0)), "3.32 ms");
    assert_eq!(micros(None), "n/a");
}

#[test]
fn untraced_mode_is_compared_with_the_baseline_and_kept_out_of_agent_totals() {
    let mut r = rounds();
    for round in &mut r {
        round.untraced = Some(mode(
            95_000.0,
            1100.0,
            250,
            Some(agent(9.0, 9.0, 0.0, 99_999)),
        ));
    }
    let s = summarize(&r);
    assert_eq!(s.untraced_throughput_ratio, Some(0.95));
    assert_eq!(s.untraced_fixed_p99_ratio, Some(1.25));
    // The tracing-nothing agent's CPU, memory and spans are not the traced agent's.
    assert_eq!(s.cpu_s_per_100k_fixed, Some(0.5));
    assert_eq!(s.peak_rss_mib, Some(30.0));
    assert_eq!(s.fixed_exported, Some(299_000.0));
    // The untraced agent ran no programs here: no in-kernel figure for either mode.
    assert_eq!(s.untraced_bpf_ns_per_request, None);
    for a in r
        .iter_mut()
        .filter_map(|r| r.untraced.as_mut()?.agent.as_mut())
    {
        a.fixed.bpf_runs = Some(500_000.0);
        a.fixed.bpf_run_ns = Some(50_000_000.0);
    }
    let host_tax = summarize(&r);
    // 150 ms over 300k requests; 30 ms of it idle background.
    assert_eq!(host_tax.untraced_bpf_ns_per_request, Some(500.0));
    assert_eq!(host_tax.untraced_bpf_ns_per_request_net, Some(400.0));
    // 40 ms net per round, 23 ms of it the floor of 460k runs net at 50 ns each.
    assert_eq!(host_tax.untraced_bpf_ns_per_request_own, Some(170.0));
    assert_eq!(host_tax.bpf_ns_per_request, None);
    let untraced_peak = 99_999.0 / 1024.0;
    assert_eq!(s.untraced_peak_rss_mib, Some(untraced_peak));
    assert_eq!(s.untraced_steady_rss_mib, Some(49_999.0 / 1024.0));
    let text = table(&settings(), &r, &s);
    assert!(text.contains("untraced throughput ratio"));
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("3      untraced"))
            .count(),
        1
    );
    assert!(json(&settings(), &r, &s)["rounds"][2]["untraced"].is_object());
}

#[test]
fn service_cpu_per_request_is_total_over_total() {
    let mut r = rounds();
    // 100,000 requests per round: 2.0, 2.0 and 2.3 s without; 2.2, 2.4, 2.3 s with.
    for (round, (without, with)) in r.iter_mut().zip([(2.0, 2.2), (2.0, 2.4), (2.3, 2.3)]) {
        round.without.fixed_service_cpu_s = Some(without);
        round.with.as_mut().unwrap().fixed_service_cpu_s = Some(with);
    }
    let s = summarize(&r);
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
    assert!(close(s.service_cpu_us_without, 21.0), "{s:?}");
    assert!(close(s.service_cpu_us_with, 23.0), "{s:?}");
    assert!(close(s.service_cpu_ratio, 23.0 / 21.0), "{s:?}");
    let text = table(&settings(), &r, &s);
    let row = text
        .lines()
        .find(|l| l.starts_with("service CPU per request at the fixed rate, with/without"))
        .unwrap_or_else(|| panic!("no service CPU row in {text}"));
    assert!(row.ends_with("  1.095  (23.0 / 21.0 us)"), "{row}");
    assert_eq!(
        json(&settings(), &r, &s)["rounds"][0]["with"]["fixed_rate"]["service_cpu_seconds"],
        2.2
    );
    // One round without the reading leaves no figure rather than a wrong one.
    r[1].with.as_mut().unwrap().fixed_service_cpu_s = None;
    assert_eq!(summarize(&r).service_cpu_ratio, None);
    assert_eq!(summarize(&rounds()).service_cpu_us_without, None);
}

#[test]
fn in_kernel_time_by_program() {
    let phase = |programs: &[(&str, f64, f64)]| AgentPhase {
        programs: programs
            .iter()
            .map(|&(name, run_ns, runs)| (name.to_owned(), ProgramPhase { run_ns, runs }))
            .collect(),
        ..AgentPhase::default()
    };
    let with_programs = |fixed: AgentPhase| {
        let mut run = agent(1.0, 0.5, 100_000.0, 20_480);
        run.fixed = fixed;
        Some(mode(90_000.0, 1500.0, 300, Some(run)))
    };
    // Two rounds of 100,000 fixed-rate requests each.
    let traced = phase(&[
        ("loupe_read_exit", 60_000_000.0, 200_000.0),
        ("loupe_writev_exit", 70_000_000.0, 100_000.0),
        ("loupe_process_exec", 20_000.0, 10.0),
        ("loupe_dup_exit", 0.0, 0.0),
        ("loupe_write_sta", 30_000_000.0, 200_000.0),
    ]);
    let idle = phase(&[
        ("loupe_read_exit", 20_000_000.0, 200_000.0),
        ("loupe_writev_exit", 9_000_000.0, 100_000.0),
    ]);
    let round = || Round {
        without: mode(100_000.0, 1000.0, 200, None),
        with: with_programs(traced.clone()),
        untraced: with_programs(idle.clone()),
        hooks: None,
    };
    // A round whose agent gave no program readings counts neither its runs nor its
    // requests.
    let unread = Round {
        with: with_programs(AgentPhase::default()),
        ..round()
    };
    let rounds = vec![round(), round(), unread];
    let s = summarize(&rounds);
    let names: Vec<&str> = s.programs.iter().map(|r| r.name.as_str()).collect();
    // The costliest first; a program under half a nanosecond per request, or that never
    // ran, is left out.
    assert_eq!(
        names,
        ["loupe_writev_exit", "loupe_read_exit", "loupe_write_sta"]
    );
    // Not run at all while the agent traced nothing: it cost nothing then.
    assert_eq!(s.programs[2].untraced_ns_per_request, Some(0.0));
    let read = &s.programs[1];
    assert_eq!(read.runs_per_request, 2.0);
    assert_eq!(read.ns_per_run, 300.0);
    assert_eq!(read.ns_per_request, 600.0);
    assert_eq!(read.untraced_ns_per_request, Some(200.0));
    assert_eq!(s.programs[0].ns_per_request, 700.0);

    let text = table(&settings(), &rounds, &s);
    assert!(text.contains("by program at the fixed rate"), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("loupe_read_exit"))
        .expect("a row for the read exit");
    assert!(line.ends_with("2.00 x 300 = 600  (200)"), "{line}");
    let json = json(&settings(), &rounds, &s);
    assert_eq!(
        json["summary"]["bpf_by_program"][1]["ns_per_request"],
        600.0
    );
    assert_eq!(
        json["rounds"][0]["with"]["agent"]["fixed_rate"]["bpf_by_program"]["loupe_read_exit"]["runs"],
        200_000.0
    );

    // Without --bpf-stats nothing is counted: no breakdown, no heading.
    let plain = self::rounds();
    let s = summarize(&plain);
    assert!(s.programs.is_empty());
    assert!(!table(&settings(), &plain, &s).contains("by program"));
}

#[test]
fn hooks_only_mode_is_compared_with_the_baseline_and_reported_on_its_own_rows() {
    let mut r = rounds();
    let plain = table(&settings(), &r, &summarize(&r));
    assert!(!plain.contains("hooks"), "{plain}");
    for (round, cpu) in r.iter_mut().zip([2.1, 2.1, 2.4]) {
        let mut hooks = mode(97_000.0, 1000.0, 210, None);
        hooks.fixed_service_cpu_s = Some(cpu);
        round.without.fixed_service_cpu_s = Some(2.0);
        round.hooks = Some(hooks);
    }
    // One round with a client error, which the hooks-only run must not hide.
    r[1].hooks.as_mut().unwrap().fixed.errors = 2;
    let s = summarize(&r);
    assert_eq!(s.hooks_throughput_ratio, Some(0.97));
    assert_eq!(s.hooks_fixed_p99_ratio, Some(1.05));
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
    assert!(close(s.hooks_service_cpu_ratio, 1.1), "{s:?}");
    assert_eq!(s.client_errors, 2);
    // No agent ran in that mode: the agent's figures come from the traced rounds alone.
    assert_eq!(s.cpu_s_per_100k_fixed, Some(0.5));
    assert_eq!(s.untraced_throughput_ratio, None);
    let text = table(&settings(), &r, &s);
    let row = text
        .lines()
        .find(|l| l.starts_with("hooks-only throughput ratio"))
        .unwrap_or_else(|| panic!("no hooks-only row in {text}"));
    assert!(row.ends_with("  0.970"), "{row}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("2      hooks"))
            .count(),
        1
    );
    let v = json(&settings(), &r, &s);
    assert_eq!(v["summary"]["hooks_throughput_ratio"], json!(0.97));
    assert_eq!(v["rounds"][0]["hooks"]["agent"], Value::Null);
}
