//! What the kernel says about the agent process: CPU time, peak memory, and the run time
//! of the eBPF programs it holds.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProcError {
    #[error("no ')' closing the command name")]
    NoCommEnd,
    #[error("stat field {0} missing")]
    MissingField(usize),
    #[error("stat field {field} is not a number: {value:?}")]
    NotANumber { field: usize, value: String },
    #[error("no VmHWM line")]
    NoPeakRss,
}

/// User and system CPU time in clock ticks, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTicks {
    pub utime: u64,
    pub stime: u64,
}

impl CpuTicks {
    pub fn total(&self, ticks_per_second: u64) -> Duration {
        let ticks = self.utime.saturating_add(self.stime);
        let per_second = ticks_per_second.max(1);
        Duration::from_secs(ticks / per_second)
            + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
    }
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Result<CpuTicks, ProcError> {
    let after_comm = text.rfind(')').ok_or(ProcError::NoCommEnd)?;
    let fields: Vec<&str> = text[after_comm + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state): field n is fields[n - 3].
    let field = |n: usize| -> Result<u64, ProcError> {
        let value = fields.get(n - 3).ok_or(ProcError::MissingField(n))?;
        value.parse().map_err(|_| ProcError::NotANumber {
            field: n,
            value: (*value).to_owned(),
        })
    };
    Ok(CpuTicks {
        utime: field(14)?,
        stime: field(15)?,
    })
}

/// Peak resident set size in KiB (`VmHWM`) from `/proc/<pid>/status`.
pub fn parse_peak_rss_kib(status: &str) -> Result<u64, ProcError> {
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("VmHWM:")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .ok_or(ProcError::NoPeakRss)
}

/// Cumulative run time and run count of one eBPF program, from the fdinfo of a program fd.
/// The kernel counts these only while `kernel.bpf_stats_enabled` is 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Returns the program id and its stats when this fdinfo describes an eBPF program.
pub fn parse_prog_fdinfo(text: &str) -> Option<(u64, ProgStats)> {
    let mut is_prog = false;
    let mut id = None;
    let mut stats = ProgStats::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "prog_type" => is_prog = true,
            "prog_id" => id = value.parse().ok(),
            "run_time_ns" => stats.run_time_ns = value.parse().ok()?,
            "run_cnt" => stats.run_cnt = value.parse().ok()?,
            _ => {}
        }
    }
    if is_prog {
        id.map(|id| (id, stats))
    } else {
        None
    }
}

/// Kernel clock ticks per second, the unit of `/proc/<pid>/stat` CPU times.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).ok().map(|t| t.total(ticks_per_second()))
}

pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_peak_rss_kib(&text).ok()
}

/// Sums the stats of every distinct eBPF program the process holds an fd to.
pub fn bpf_prog_totals(pid: u32) -> Option<ProgStats> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut programs: BTreeMap<u64, ProgStats> = BTreeMap::new();
    for entry in entries.flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path())
            && let Some((id, stats)) = parse_prog_fdinfo(&text)
        {
            programs.insert(id, stats);
        }
    }
    if programs.is_empty() {
        return None;
    }
    Some(
        programs
            .values()
            .fold(ProgStats::default(), |acc, s| ProgStats {
                run_time_ns: acc.run_time_ns.saturating_add(s.run_time_ns),
                run_cnt: acc.run_cnt.saturating_add(s.run_cnt),
            }),
    )
}

/// Turns on the kernel's eBPF run-time accounting for as long as it lives, then puts the
/// old setting back.
pub struct BpfStatsSwitch {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsSwitch {
    pub fn enable() -> std::io::Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1")?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStatsSwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.previous.trim());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (loupe) S 1 4242 4242 0 -1 4194560 5000 0 0 0 \
                        731 129 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";

    #[test]
    fn stat_cpu_fields() {
        assert_eq!(
            parse_stat(STAT),
            Ok(CpuTicks {
                utime: 731,
                stime: 129
            })
        );
    }

    #[test]
    fn stat_command_names_with_spaces_and_parens() {
        let tricky = STAT.replace("(loupe)", "(lo) pe (x) 1 2)");
        assert_eq!(parse_stat(&tricky).map(|t| t.utime), Ok(731));
    }

    #[test]
    fn stat_truncated_or_garbled() {
        assert_eq!(parse_stat("4242 loupe S 1"), Err(ProcError::NoCommEnd));
        assert_eq!(
            parse_stat("4242 (loupe) S 1 4242 4242 0 -1 4194560 5000 0 0 0 731"),
            Err(ProcError::MissingField(15))
        );
        assert!(matches!(
            parse_stat(&STAT.replace(" 731 ", " x ")),
            Err(ProcError::NotANumber { field: 14, .. })
        ));
    }

    #[test]
    fn ticks_become_time() {
        let t = CpuTicks {
            utime: 150,
            stime: 100,
        };
        assert_eq!(t.total(100), Duration::from_millis(2500));
        assert_eq!(t.total(0), Duration::from_secs(250));
        assert!(ticks_per_second() > 0);
    }

    #[test]
    fn peak_rss_from_status() {
        let status =
            "Name:\tloupe\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_peak_rss_kib(status), Ok(51234));
        assert_eq!(
            parse_peak_rss_kib("Name:\tloupe\n"),
            Err(ProcError::NoPeakRss)
        );
        assert_eq!(
            parse_peak_rss_kib("VmHWM:\t kB\n"),
            Err(ProcError::NoPeakRss)
        );
    }

    #[test]
    fn prog_fdinfo_only_for_programs() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2077\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\tabcdef0123456789\nmemlock:\t4096\nprog_id:\t88\n\
                    run_time_ns:\t123456\nrun_cnt:\t1000\nrecursion_misses:\t0\nverified_insns:\t77\n";
        assert_eq!(
            parse_prog_fdinfo(prog),
            Some((
                88,
                ProgStats {
                    run_time_ns: 123456,
                    run_cnt: 1000
                }
            ))
        );
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t27\nmap_id:\t12\n";
        assert_eq!(parse_prog_fdinfo(map), None);
        let socket = "pos:\t0\nflags:\t02\nmnt_id:\t9\n";
        assert_eq!(parse_prog_fdinfo(socket), None);
        assert_eq!(
            parse_prog_fdinfo("prog_type:\t5\nrun_cnt:\tlots\nprog_id:\t1\n"),
            None
        );
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_time(pid).is_some());
        assert!(peak_rss_kib(pid).is_some_and(|kib| kib > 0));
        assert_eq!(bpf_prog_totals(pid), None);
    }
}
