//! What the kernel says about the agent process: CPU time, peak memory, and the run time
//! of the eBPF programs it holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProcError {
    #[error("no ')' closing the command name")]
    NoCommEnd,
    #[error("stat field {0} missing")]
    MissingField(usize),
    #[error("stat field {field} is not a number: {value:?}")]
    NotANumber { field: usize, value: String },
    #[error("no {0} line")]
    NoStatusLine(&'static str),
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

/// The parent's pid (field 4) from `/proc/<pid>/stat`.
pub fn parse_ppid(text: &str) -> Option<u32> {
    let after_comm = text.rfind(')')?;
    text[after_comm + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Peak resident set size.
pub const PEAK_RSS: &str = "VmHWM";
/// Resident set size now.
pub const RSS: &str = "VmRSS";
/// The anonymous part of `RSS`: heap and stacks, without mapped files and without the
/// kernel ring buffer's mapping (whose data pages are mapped twice, so a 16 MiB buffer
/// adds 32 MiB to `RSS`).
pub const RSS_ANON: &str = "RssAnon";

/// A size in KiB, such as `VmHWM` or `VmRSS`, from `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, key: &'static str) -> Result<u64, ProcError> {
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .ok_or(ProcError::NoStatusLine(key))
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

/// The CPU time of process `pid` and of its children (nginx's workers under their
/// master), each with all its threads, living and exited; `None` when `pid` is gone. A
/// child that exits between two readings takes its time with it: the services measured
/// keep theirs.
pub fn family_cpu_time(pid: u32) -> Option<Duration> {
    let own = cpu_time(pid)?;
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parse_ppid(&stat))
                == Some(pid)
        });
    Some(own + children.filter_map(cpu_time).sum::<Duration>())
}

/// `key` (`PEAK_RSS` or `RSS`) of process `pid`, in KiB.
pub fn status_kib(pid: u32, key: &'static str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, key).ok()
}

/// The resident set size of a process at one moment of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RssSample {
    /// Since sampling began.
    pub at: Duration,
    pub kib: u64,
    pub anon_kib: Option<u64>,
}

/// Runs `work` while another thread reads the RSS of `pid` at once and then every `every`,
/// handing each sample to `on_sample`; returns what `work` returned and the samples.
pub fn sample_rss_during<T>(
    pid: u32,
    every: Duration,
    mut on_sample: impl FnMut(&RssSample) + Send,
    work: impl FnOnce() -> T,
) -> (T, Vec<RssSample>) {
    let done = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            let mut next = start;
            while !done.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    // Short naps so the sampler ends soon after the work does.
                    std::thread::sleep((next - now).min(Duration::from_millis(50)));
                    continue;
                }
                let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
                if let Ok(status) = status
                    && let Ok(kib) = parse_status_kib(&status, RSS)
                {
                    let sample = RssSample {
                        at: now - start,
                        kib,
                        anon_kib: parse_status_kib(&status, RSS_ANON).ok(),
                    };
                    on_sample(&sample);
                    samples.push(sample);
                }
                next += every.max(Duration::from_millis(10));
            }
            samples
        });
        let result = work();
        done.store(true, Ordering::Relaxed);
        let samples = sampler.join().unwrap_or_default();
        (result, samples)
    })
}

/// The stats of every distinct eBPF program the process holds an fd to, by program id;
/// `None` when it holds none.
pub fn bpf_programs(pid: u32) -> Option<BTreeMap<u64, ProgStats>> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut programs: BTreeMap<u64, ProgStats> = BTreeMap::new();
    for entry in entries.flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path())
            && let Some((id, stats)) = parse_prog_fdinfo(&text)
        {
            programs.insert(id, stats);
        }
    }
    (!programs.is_empty()).then_some(programs)
}

/// The sum of the stats of `programs`.
pub fn bpf_totals<'a>(programs: impl IntoIterator<Item = &'a ProgStats>) -> ProgStats {
    programs
        .into_iter()
        .fold(ProgStats::default(), |acc, s| ProgStats {
            run_time_ns: acc.run_time_ns.saturating_add(s.run_time_ns),
            run_cnt: acc.run_cnt.saturating_add(s.run_cnt),
        })
}

/// Turns on the kernel's eBPF run-time accounting for as long as it lives.
///
/// It holds a `BPF_ENABLE_STATS` descriptor where the kernel has it (5.8+): the kernel
/// counts those holders apart from the `kernel.bpf_stats_enabled` sysctl, so another
/// program that sets the sysctl back to 0 during the run does not stop the counting. Older
/// kernels get the sysctl, and the old setting back at the end.
pub enum BpfStatsSwitch {
    Held { _fd: std::os::fd::OwnedFd },
    Sysctl { previous: String },
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// `BPF_ENABLE_STATS` from `enum bpf_cmd`, and `BPF_STATS_RUN_TIME` from `enum bpf_stats_type`.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

impl BpfStatsSwitch {
    pub fn enable() -> std::io::Result<Self> {
        if let Ok(fd) = enable_stats_fd() {
            return Ok(Self::Held { _fd: fd });
        }
        let previous = std::fs::read_to_string(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1")?;
        Ok(Self::Sysctl { previous })
    }
}

fn enable_stats_fd() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // `union bpf_attr` for this command is `struct { __u32 type; }`, zero-padded.
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
    // SAFETY: the attribute buffer is valid for the size passed, and the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    let fd = libc::c_int::try_from(ret)
        .ok()
        .filter(|&fd| fd >= 0)
        .ok_or_else(std::io::Error::last_os_error)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

impl Drop for BpfStatsSwitch {
    fn drop(&mut self) {
        // A held descriptor turns the counting off as it closes.
        if let Self::Sysctl { previous } = self {
            let _ = std::fs::write(BPF_STATS, previous.trim());
        }
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
    fn stat_parent_pid() {
        let stat = STAT.replace("S 1 4242", "S 977 4242");
        assert_eq!(parse_ppid(&stat), Some(977));
        let tricky = stat.replace("(loupe)", "(lo) S 5 (x)");
        assert_eq!(parse_ppid(&tricky), Some(977));
        assert_eq!(parse_ppid("4242 (loupe) S"), None);
        assert_eq!(parse_ppid("4242 (loupe) S x"), None);
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
    fn rss_from_status() {
        let status =
            "Name:\tloupe\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_status_kib(status, PEAK_RSS), Ok(51234));
        assert_eq!(parse_status_kib(status, RSS), Ok(40000));
        assert_eq!(
            parse_status_kib("Name:\tloupe\n", PEAK_RSS),
            Err(ProcError::NoStatusLine(PEAK_RSS))
        );
        assert_eq!(
            parse_status_kib("VmHWM:\t kB\n", PEAK_RSS),
            Err(ProcError::NoStatusLine(PEAK_RSS))
        );
        // A longer key with the same start is another line.
        assert_eq!(
            parse_status_kib("VmRSSx:\t 5 kB\n", RSS),
            Err(ProcError::NoStatusLine(RSS))
        );
    }

    #[test]
    fn rss_is_sampled_while_the_work_runs() {
        let pid = std::process::id();
        let mut seen = 0;
        let (value, samples) = sample_rss_during(
            pid,
            Duration::from_millis(20),
            |_| seen += 1,
            || {
                std::thread::sleep(Duration::from_millis(130));
                7
            },
        );
        assert_eq!(value, 7);
        assert_eq!(seen, samples.len());
        assert!((4..=9).contains(&samples.len()), "{samples:?}");
        assert!(samples[0].at < Duration::from_millis(20));
        assert!(samples.windows(2).all(|w| w[0].at < w[1].at));
        assert!(samples.iter().all(|s| s.kib > 0));
        assert!(
            samples
                .iter()
                .all(|s| s.anon_kib.is_some_and(|a| a <= s.kib))
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
        assert!(status_kib(pid, PEAK_RSS).is_some_and(|kib| kib > 0));
        assert!(status_kib(pid, RSS).is_some_and(|kib| kib > 0));
        assert_eq!(bpf_programs(pid), None);
    }

    #[test]
    fn a_family_counts_its_childrens_cpu() {
        // A child that spins for 0.3 s of CPU, then waits to be read.
        let spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)";
        let mut child = std::process::Command::new("python3")
            .args(["-c", spin])
            .spawn()
            .expect("spawn python3");
        // The child's spin, however slow the host: up to 20 s to see it.
        let pid = std::process::id();
        let started = std::time::Instant::now();
        let (own, family) = loop {
            let own = cpu_time(pid).unwrap();
            let family = family_cpu_time(pid).unwrap();
            if family >= own + Duration::from_millis(200) || started.elapsed().as_secs() >= 20 {
                break (own, family);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            family >= own + Duration::from_millis(200),
            "family {family:?}, own {own:?}"
        );
        assert_eq!(family_cpu_time(u32::MAX), None);
    }
}
