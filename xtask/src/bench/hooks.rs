//! The agent's hooks without the agent: an empty program on every tracepoint the agent
//! attaches to, so a round can measure what the kernel's tracepoint mechanism alone costs
//! the services (`--host-tax`).
//!
//! Attaching any syscall tracepoint sends every syscall of every process through the
//! kernel's slower syscall path, and each hooked syscall then calls into its program. That
//! part of the overhead belongs to the probe mechanism, not to what loupe's programs do;
//! on a kernel without kprobes and fentry, syscall tracepoints are the only hook there is.
//! The mode runs `r0 = 0; exit` where the agent runs its programs, so "hooks only" against
//! "without" is that floor, and "agent tracing nothing" against "hooks only" is what the
//! agent's early exit adds to it.

use std::os::fd::OwnedFd;

use anyhow::{Context, Result, bail};

use super::stats_floor::{self, TRACEFS};

const BPF_TASK_FD_QUERY: libc::c_long = 20;
/// `BPF_FD_TYPE_TRACEPOINT` from `linux/bpf.h`.
const FD_TYPE_TRACEPOINT: u32 = 1;
/// Room for a tracepoint's name; the longest syscall tracepoint is about 30 bytes.
const NAME_ROOM: usize = 128;

/// The tracepoints process `pid` has eBPF programs attached to, one entry per attachment
/// (a tracepoint with two of its programs appears twice), found through its fds: a perf
/// link names its tracepoint in its fdinfo (`tp_name`, Linux 6.12 and later), and a perf
/// event with a program answers `BPF_TASK_FD_QUERY` (Linux 4.18).
pub fn attached_tracepoints(pid: u32) -> Result<Vec<String>> {
    let dir = format!("/proc/{pid}/fd");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let linked = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .ok()
            .and_then(|text| linked_tracepoint(&text));
        if let Some(name) = linked.or_else(|| queried_tracepoint(pid, fd)) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The tracepoint a perf link's fdinfo names, when it is one.
fn linked_tracepoint(fdinfo: &str) -> Option<String> {
    let field = |key: &str| {
        fdinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim())
        })
    };
    if field("link_type")? != "perf" || field("event_type")? != "tracepoint" {
        return None;
    }
    field("tp_name")
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
}

/// The tracepoint behind fd `fd` of process `pid`, when it is a perf event with an eBPF
/// program on a tracepoint; `None` for any other fd, or one closed meanwhile.
fn queried_tracepoint(pid: u32, fd: u32) -> Option<String> {
    let mut name = [0u8; NAME_ROOM];
    // `task_fd_query` of `union bpf_attr`: pid, fd, flags, buf_len, buf; then prog_id,
    // fd_type, probe_offset and probe_addr, which the kernel fills in.
    let mut attr = [0u8; 48];
    attr[0..4].copy_from_slice(&pid.to_ne_bytes());
    attr[4..8].copy_from_slice(&fd.to_ne_bytes());
    attr[12..16].copy_from_slice(&(NAME_ROOM as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(name.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: the attribute and the name buffer outlive the call; the kernel writes at
    // most buf_len bytes into the buffer and the output fields of the attribute.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_TASK_FD_QUERY, attr.as_mut_ptr(), 48) };
    if rc != 0 {
        return None;
    }
    let fd_type = u32::from_ne_bytes(attr[28..32].try_into().ok()?);
    if fd_type != FD_TYPE_TRACEPOINT {
        return None;
    }
    let end = name.iter().position(|&b| b == 0)?;
    String::from_utf8(name[..end].to_vec()).ok()
}

/// tracefs's id for the tracepoint `name`: syscall tracepoints under `syscalls`, any
/// other found by looking through the categories.
fn tracepoint_id(name: &str) -> Option<u64> {
    if name.starts_with("sys_enter_") || name.starts_with("sys_exit_") {
        return stats_floor::read_id(&format!("events/syscalls/{name}/id"));
    }
    TRACEFS.iter().find_map(|root| {
        std::fs::read_dir(format!("{root}/events"))
            .ok()?
            .filter_map(|category| category.ok())
            .find_map(|category| {
                let path = category.path().join(name).join("id");
                std::fs::read_to_string(path).ok()?.trim().parse().ok()
            })
    })
}

/// One empty program attached where the agent's programs were; detached on drop.
pub struct EmptyHooks {
    _program: OwnedFd,
    _events: Vec<OwnedFd>,
}

impl EmptyHooks {
    /// Attaches the empty program to each of `tracepoints`.
    pub fn attach(tracepoints: &[String]) -> Result<Self> {
        if tracepoints.is_empty() {
            bail!("no tracepoints to hook");
        }
        let program = stats_floor::load_empty().context("loading an empty program")?;
        let mut events = Vec::with_capacity(tracepoints.len());
        for name in tracepoints {
            let id = tracepoint_id(name)
                .with_context(|| format!("no tracepoint {name} under {TRACEFS:?}"))?;
            let event = stats_floor::attach(&program, id)
                .with_context(|| format!("attaching an empty program to {name}"))?;
            events.push(event);
        }
        Ok(Self {
            _program: program,
            _events: events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perf_links_fdinfo_names_its_tracepoint() {
        let link = "pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t1044\nlink_type:\tperf\n\
                    link_id:\t41\nprog_tag:\t2ba76846e71f7166\nprog_id:\t65\n\
                    tp_name:\tsys_exit_accept\nevent_type:\ttracepoint\ncookie:\t0\n";
        assert_eq!(linked_tracepoint(link).as_deref(), Some("sys_exit_accept"));
        let uprobe = link.replace("event_type:\ttracepoint", "event_type:\tuprobe");
        assert_eq!(linked_tracepoint(&uprobe), None);
        let raw = link.replace("link_type:\tperf", "link_type:\traw_tracepoint");
        assert_eq!(linked_tracepoint(&raw), None);
        // An older kernel's perf link, which does not name its tracepoint.
        let older = "link_type:\tperf\nlink_id:\t41\nprog_id:\t65\n";
        assert_eq!(linked_tracepoint(older), None);
        assert_eq!(linked_tracepoint("pos:\t0\nflags:\t02\n"), None);
    }

    /// Attaches real programs; needs root, as the bench does, and is skipped without it.
    #[test]
    fn the_hooks_of_a_process_are_found_and_copied() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let wanted = [
            "sys_enter_getppid".to_owned(),
            "sys_exit_getppid".to_owned(),
        ];
        let hooks = EmptyHooks::attach(&wanted).expect("attach");
        let found = attached_tracepoints(std::process::id()).expect("query");
        // Other tests of this process may hold hooks of their own at the same time.
        for name in &wanted {
            assert!(found.contains(name), "{name} not among {found:?}");
        }
        assert!(
            !found.iter().any(|n| n == "sys_enter_getpid"),
            "{found:?} names a tracepoint nothing attached to"
        );
        drop(hooks);
        let after = attached_tracepoints(std::process::id()).expect("query");
        assert!(
            after.iter().filter(|n| wanted.contains(n)).count()
                < found.iter().filter(|n| wanted.contains(n)).count(),
            "detaching left {after:?}"
        );
        assert!(tracepoint_id("sched_process_exec").is_some());
        assert!(tracepoint_id("no_such_tracepoint").is_none());
        assert!(EmptyHooks::attach(&[]).is_err());
    }
}
