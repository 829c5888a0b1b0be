//! What the kernel's eBPF run-time accounting records for a program that does nothing.
//!
//! With `kernel.bpf_stats_enabled`, the kernel reads its clock before and after every
//! program run and adds the difference to the program's run time. That difference holds
//! part of the clock reads themselves (in a virtual machine a paravirtual clock read costs
//! tens of nanoseconds) and the call into the program, so even `return 0` is recorded as
//! taking time. The bench measures that floor on the host it runs on by loading such a
//! program on a syscall tracepoint, the same path the agent's programs run on, and
//! calling that syscall in a loop; the in-kernel figure is then reported also less one
//! floor per program run, which is what the agent's own instructions cost.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use super::procfs::{ProgStats, parse_prog_fdinfo};

/// `getppid` has no arguments, no side effects and is not a syscall the agent hooks.
const TRACEPOINT: &str = "events/syscalls/sys_enter_getppid/id";
pub const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// Enough runs for a stable mean, about a quarter of a second.
const CALLS: u32 = 500_000;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_ATTR_SIZE_VER0: usize = 64;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `PERF_EVENT_IOC_SET_BPF` and `PERF_EVENT_IOC_ENABLE` from `linux/perf_event.h`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("no syscall tracepoints under {0:?} (is tracefs mounted?)")]
    NoTracepoint([&'static str; 2]),
    #[error("loading an empty program failed: {0}")]
    Load(std::io::Error),
    #[error("attaching it to sys_enter_getppid failed: {0}")]
    Attach(std::io::Error),
    #[error("the kernel counted no runs: is kernel.bpf_stats_enabled on?")]
    NotCounted,
}

/// Nanoseconds the kernel's run-time accounting records per run of an empty tracepoint
/// program, measured now. Needs the accounting on, and the privileges to load and attach
/// a program.
pub fn empty_program_ns() -> Result<f64, FloorError> {
    let id = tracepoint_id().ok_or(FloorError::NoTracepoint(TRACEFS))?;
    let program = load_empty().map_err(FloorError::Load)?;
    let _event = attach(&program, id).map_err(FloorError::Attach)?;
    for _ in 0..CALLS {
        // SAFETY: getppid has no preconditions.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    let fdinfo = format!("/proc/self/fdinfo/{}", program.as_raw_fd());
    let stats = std::fs::read_to_string(fdinfo)
        .ok()
        .and_then(|text| parse_prog_fdinfo(&text))
        .map(|(_, stats)| stats);
    per_run(stats).ok_or(FloorError::NotCounted)
}

/// Mean recorded nanoseconds per run; none when nothing was counted.
pub fn per_run(stats: Option<ProgStats>) -> Option<f64> {
    let stats = stats.filter(|s| s.run_cnt > 0)?;
    Some(stats.run_time_ns as f64 / stats.run_cnt as f64)
}

/// The tracepoint's id, mounting tracefs at its usual place first when no tracefs is
/// mounted (a fresh machine on which the agent has not run yet).
fn tracepoint_id() -> Option<u64> {
    read_id(TRACEPOINT)
}

/// The number in the tracefs file `relative` (`events/CATEGORY/NAME/id`), mounting tracefs
/// first when it is not mounted.
pub fn read_id(relative: &str) -> Option<u64> {
    let read = || {
        TRACEFS.iter().find_map(|root| {
            let text = std::fs::read_to_string(format!("{root}/{relative}")).ok()?;
            text.trim().parse().ok()
        })
    };
    read().or_else(|| {
        // SAFETY: all arguments are valid NUL-terminated strings or null.
        let rc = unsafe {
            libc::mount(
                c"nodev".as_ptr(),
                c"/sys/kernel/tracing".as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 { read() } else { None }
    })
}

/// Result of a syscall returning a descriptor, as an owned fd or the error.
pub fn owned(ret: libc::c_long) -> std::io::Result<OwnedFd> {
    let fd = libc::c_int::try_from(ret)
        .ok()
        .filter(|&fd| fd >= 0)
        .ok_or_else(std::io::Error::last_os_error)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `r0 = 0; exit` as a tracepoint program.
pub fn load_empty() -> std::io::Result<OwnedFd> {
    // Two instructions of 8 bytes: opcode, registers, offset, immediate.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    // The leading fields of `union bpf_attr` for BPF_PROG_LOAD: prog_type, insn_cnt, insns,
    // license; everything after stays zero (no log, no name).
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: the attribute buffer and what it points at outlive the call; the kernel only
    // reads them.
    owned(unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) })
}

/// Attaches `program` to tracepoint `id` through a perf event, which detaches as it closes.
pub fn attach(program: &OwnedFd, id: u64) -> std::io::Result<OwnedFd> {
    let event = open_event(id)?;
    for (request, arg) in [
        (PERF_EVENT_IOC_SET_BPF, program.as_raw_fd()),
        (PERF_EVENT_IOC_ENABLE, 0),
    ] {
        // SAFETY: both requests take an int argument on a perf event descriptor.
        if unsafe { libc::ioctl(event.as_raw_fd(), request, arg) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(event)
}

/// A perf event on tracepoint `id`, with no program yet.
pub fn open_event(id: u64) -> std::io::Result<OwnedFd> {
    // `struct perf_event_attr` as of its first version (64 bytes, which every kernel
    // accepts): type, size, config, sample_period; the rest zero.
    let mut attr = [0u8; PERF_ATTR_SIZE_VER0];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&(PERF_ATTR_SIZE_VER0 as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes());
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes());
    // A tracepoint's programs run on every CPU, whichever CPU the event is opened on.
    // SAFETY: the attribute outlives the call; the kernel only reads it.
    owned(unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_what_was_counted() {
        let stats = ProgStats {
            run_time_ns: 4_650,
            run_cnt: 100,
        };
        assert_eq!(per_run(Some(stats)), Some(46.5));
        assert_eq!(per_run(Some(ProgStats::default())), None);
        assert_eq!(per_run(None), None);
    }

    /// Loads and runs a real program; needs root, as the bench does, and is skipped
    /// without it.
    #[test]
    fn an_empty_program_is_recorded_as_taking_time() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let _stats = super::super::procfs::BpfStatsSwitch::enable().expect("bpf stats");
        let ns = empty_program_ns().expect("calibration");
        assert!(ns > 0.0 && ns < 10_000.0, "{ns} ns per empty run");
    }
}
