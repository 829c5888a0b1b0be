//! Keeps the kernel's set of traced processes up to date.
//!
//! A process is traced when its pid was named with `--pid`, when its executable matches an
//! `--exe` name or glob, or when its parent is traced (workers of a traced master). New
//! processes are checked as soon as the kernel reports their exec, and a periodic scan of
//! /proc catches everything else; processes that exit are removed. A process is its pid
//! and its start time: a pid that a new process took over is judged anew, so a process
//! nobody selected never inherits the tracing of the one that had its pid before.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::Receiver,
    },
    time::{Duration, Instant},
};

use loupe_common::{COMM_LEN, CommPrefix, ConnKey, MAX_EXEC_PREFIXES};

use crate::{
    probes::{KernelConnections, TgidSet},
    telemetry::metrics::Metrics,
};

use super::{ignored_connections, procfs, stale_connections};

/// The /proc scan is the backstop for what exec events and the kernel's fork rule miss
/// (and how exits are noticed); each pass reads every process's directory, so it runs
/// seldom.
const SCAN_INTERVAL: Duration = Duration::from_secs(2);
const PRUNE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error("--exe {pattern:?} is not a valid name or glob: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("--pid {0}: no such process")]
    UnknownPid(u32),
}

/// What the user asked to trace.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The processes named with `--pid`, by pid and start time.
    pids: HashMap<u32, u64>,
    exe_patterns: Vec<glob::Pattern>,
}

impl Selection {
    pub fn new(pids: &[u32], exes: &[String]) -> Result<Self, SelectionError> {
        let mut selected = HashMap::new();
        for &pid in pids {
            let start_time = procfs::is_process(pid)
                .then(|| procfs::start_time(pid))
                .flatten()
                .ok_or(SelectionError::UnknownPid(pid))?;
            selected.insert(pid, start_time);
        }
        let exe_patterns = exes
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|e| SelectionError::BadPattern {
                    pattern: p.clone(),
                    reason: e.msg.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pids: selected,
            exe_patterns,
        })
    }

    /// With no `--pid` and no `--exe`, every process but loupe is traced.
    pub fn traces_everything(&self) -> bool {
        self.pids.is_empty() && self.exe_patterns.is_empty()
    }

    /// The part of the selection the kernel can check by itself at exec: exact command
    /// names and `name*` prefixes (command names are cut to 15 bytes by the kernel).
    /// Other globs and paths are matched only here, a few milliseconds after the exec.
    pub fn exec_hints(&self) -> ExecHints {
        let mut hints = ExecHints::default();
        for pattern in &self.exe_patterns {
            let text = pattern.as_str();
            if text.contains('/') {
                continue;
            }
            let (literal, is_prefix) = match text.strip_suffix('*') {
                Some(prefix) => (prefix, true),
                None => (text, false),
            };
            if literal.is_empty() || literal.contains(['*', '?', '[', ']']) {
                continue;
            }
            let bytes = literal.as_bytes();
            let len = bytes.len().min(COMM_LEN - 1);
            let mut comm = [0u8; COMM_LEN];
            comm[..len].copy_from_slice(&bytes[..len]);
            if is_prefix || bytes.len() > len {
                hints.prefixes.push(CommPrefix {
                    bytes: comm,
                    len: len as u32,
                    _pad: 0,
                });
            } else {
                hints.names.push(comm);
            }
        }
        hints.prefixes.truncate(MAX_EXEC_PREFIXES as usize);
        hints
    }

    /// Whether the process `pid` that started at `start_time` is selected. A `--pid` names
    /// the process that had that pid when loupe started, not later ones that reuse it. A
    /// pattern with a '/' is matched against the full executable path, one without against
    /// the executable's file name and the process's command name.
    pub fn matches(
        &self,
        pid: u32,
        start_time: u64,
        exe: Option<&Path>,
        comm: Option<&str>,
    ) -> bool {
        if self.pids.get(&pid) == Some(&start_time) {
            return true;
        }
        self.exe_patterns.iter().any(|pattern| {
            if pattern.as_str().contains('/') {
                exe.is_some_and(|p| pattern.matches_path(p))
            } else {
                let name = exe.and_then(|p| p.file_name()).and_then(|n| n.to_str());
                name.is_some_and(|n| pattern.matches(n)) || comm.is_some_and(|c| pattern.matches(c))
            }
        })
    }
}

/// Command names and prefixes for the kernel's exec-time check.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecHints {
    pub names: Vec<[u8; COMM_LEN]>,
    pub prefixes: Vec<CommPrefix>,
}

/// What the pipeline tells the selector's thread, which keeps the kernel's tables.
#[derive(Debug, Clone, Copy)]
pub enum Notice {
    Exec(ExecNotice),
    /// The connection `conn_id` at `key` carries no HTTP/1.x: the probes may stop
    /// capturing it.
    NotHttp {
        key: ConnKey,
        conn_id: u64,
    },
}

/// A process called exec, as the pipeline heard it from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct ExecNotice {
    pub tgid: u32,
    /// When, on the monotonic clock the probes stamp connections with.
    pub at_ns: u64,
    /// The pipeline had seen connections of the process before the exec.
    pub had_connections: bool,
}

/// Facts about one process as of the last scan.
#[derive(Debug, Clone, Copy)]
struct Known {
    start_time: u64,
    traced: bool,
}

pub struct Selector {
    selection: Selection,
    agent_pid: u32,
    processes: TgidSet,
    connections: KernelConnections,
    metrics: Arc<Metrics>,
    known: HashMap<u32, Known>,
}

impl Selector {
    pub fn new(
        selection: Selection,
        processes: TgidSet,
        connections: KernelConnections,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            selection,
            agent_pid: std::process::id(),
            processes,
            connections,
            metrics,
            known: HashMap::new(),
        }
    }

    /// One full pass over /proc. Run once before tracing starts so that processes that
    /// already exist are traced from the first event.
    pub fn scan(&mut self) {
        if self.selection.traces_everything() {
            return;
        }
        let Ok(pids) = procfs::all_pids() else {
            return;
        };
        let alive: HashSet<u32> = pids.iter().copied().collect();
        // Forget the dead, and pids that were reused by a new process.
        let gone: Vec<u32> = self
            .known
            .keys()
            .copied()
            .filter(|pid| !alive.contains(pid))
            .collect();
        for pid in gone {
            self.forget(pid);
        }
        // A traced pid that names another process now: the kernel still has its bit, and
        // its connections' entries would match the new process's fds.
        let reused = reused(&self.known, procfs::start_time);
        for pid in &reused {
            self.known.remove(pid);
            self.metrics.reused_pids.inc();
        }
        if !reused.is_empty() {
            self.prune_connections();
        }
        for pid in pids {
            if !self.known.contains_key(&pid) {
                self.check(pid);
            }
        }
        self.prune_threads();
        self.metrics
            .traced_processes
            .set(self.known.values().filter(|k| k.traced).count() as u64);
    }

    /// Re-evaluates one process, e.g. after it called exec.
    pub fn check(&mut self, pid: u32) {
        if pid == self.agent_pid || self.selection.traces_everything() {
            return;
        }
        let Some(start_time) = procfs::start_time(pid) else {
            self.forget(pid);
            return;
        };
        let exe = procfs::exe_path(pid);
        let comm = procfs::comm(pid);
        let parent_traced = parent_of(pid)
            .and_then(|ppid| self.known.get(&ppid))
            .is_some_and(|k| k.traced);
        let traced = parent_traced
            || self
                .selection
                .matches(pid, start_time, exe.as_deref(), comm.as_deref());
        self.known.insert(pid, Known { start_time, traced });
        if traced {
            if !self.processes.insert(pid) {
                log::warn!("cannot trace process {pid}: its id is beyond the kernel's pid limit");
            }
        } else {
            self.processes.remove(pid);
        }
    }

    fn forget(&mut self, pid: u32) {
        if let Some(known) = self.known.remove(&pid)
            && known.traced
        {
            self.processes.remove(pid);
        }
    }

    /// The kernel adds every task a traced process forks, threads included; keep only
    /// real processes, and record those children as traced.
    fn prune_threads(&mut self) {
        for id in self.processes.tgids() {
            if self.known.get(&id).is_some_and(|k| k.traced) {
                continue;
            }
            if procfs::is_process(id) {
                if let Some(start_time) = procfs::start_time(id) {
                    self.known.insert(
                        id,
                        Known {
                            start_time,
                            traced: true,
                        },
                    );
                }
            } else {
                self.processes.remove(id);
            }
        }
    }

    /// Drops kernel connection entries, and cache slots, of processes that exited without
    /// closing them or whose pid a newer process took over.
    fn prune_connections(&mut self) {
        let dropped = stale_connections::prune(&mut self.connections);
        ignored_connections::forget_unanswered(&mut self.connections);
        self.metrics.kernel_connections_pruned.add(dropped);
    }

    /// Runs until `stop` is set, reacting to exec notifications at once.
    pub fn run(mut self, notices: Receiver<Notice>, stop: &AtomicBool) {
        let mut last_scan = Instant::now();
        let mut last_prune = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // Sleep until the next scan is due: a stop comes as the notice channel's close,
            // when the pipeline that holds the sender ends.
            let wait = SCAN_INTERVAL
                .saturating_sub(last_scan.elapsed())
                .max(Duration::from_millis(1));
            match notices.recv_timeout(wait) {
                Ok(Notice::NotHttp { key, conn_id }) => {
                    if ignored_connections::ask(&mut self.connections, key, conn_id) {
                        self.metrics.connections_ignored.inc();
                    }
                }
                Ok(Notice::Exec(exec)) => {
                    let pid = exec.tgid;
                    // An exec replaces the program: the old verdict no longer holds. A
                    // process that started after the one loupe knew took its pid over.
                    let known = self.known.get(&pid).copied();
                    let taken_over =
                        known.is_some_and(|k| procfs::start_time(pid) != Some(k.start_time));
                    // An exec closes the process's close-on-exec fds without close calls
                    // the probes see, and a taken-over pid's entries are its predecessor's:
                    // the new program's files at those fd numbers must not be taken for
                    // the old connections.
                    if exec.had_connections || (taken_over && known.is_some_and(|k| k.traced)) {
                        let dropped = stale_connections::forget_before(
                            &mut self.connections,
                            pid,
                            exec.at_ns,
                        );
                        self.metrics.kernel_connections_pruned.add(dropped);
                    }
                    if taken_over {
                        if known.is_some_and(|k| k.traced) {
                            self.metrics.reused_pids.inc();
                        }
                        self.forget(pid);
                    }
                    self.check(pid);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if last_scan.elapsed() >= SCAN_INTERVAL {
                self.scan();
                last_scan = Instant::now();
            }
            if last_prune.elapsed() >= PRUNE_INTERVAL {
                self.prune_connections();
                last_prune = Instant::now();
            }
        }
    }
}

/// The traced pids in `known` whose process is not the one that was traced: `start_time`
/// gives another start (a new process took the pid over) for them. Pids that are gone
/// are left to the caller.
fn reused(known: &HashMap<u32, Known>, start_time: impl Fn(u32) -> Option<u64>) -> Vec<u32> {
    known
        .iter()
        .filter(|(_, k)| k.traced)
        .filter(|&(&pid, k)| start_time(pid).is_some_and(|now| now != k.start_time))
        .map(|(&pid, _)| pid)
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(pids: &[u32], exes: &[&str]) -> Selection {
        let exes: Vec<String> = exes.iter().map(|s| s.to_string()).collect();
        Selection::new(pids, &exes).unwrap()
    }

    #[test]
    fn matches_by_name_glob_and_path() {
        let s = selection(&[], &["nginx", "python3*", "/opt/app/*"]);
        assert!(s.matches(1, 0, Some(Path::new("/usr/sbin/nginx")), None));
        assert!(s.matches(1, 0, Some(Path::new("/usr/bin/python3.11")), None));
        assert!(s.matches(1, 0, Some(Path::new("/opt/app/server")), None));
        assert!(!s.matches(1, 0, Some(Path::new("/usr/bin/node")), Some("node")));
        // The command name helps when the executable is unreadable.
        assert!(s.matches(1, 0, None, Some("nginx")));
        assert!(!s.traces_everything());
    }

    #[test]
    fn matches_selected_pid_only_while_it_names_the_same_process() {
        let me = std::process::id();
        let started = procfs::start_time(me).unwrap();
        let s = selection(&[me], &[]);
        assert!(s.matches(me, started, None, None));
        assert!(!s.matches(me + 1, started, None, None));
        // A later process that took the pid over is not the one named.
        assert!(!s.matches(me, started + 1, None, None));
    }

    #[test]
    fn a_traced_pid_taken_over_by_a_new_process_is_reused() {
        let known = |start_time, traced| Known { start_time, traced };
        let known = HashMap::from([
            (10, known(100, true)),  // still the same process
            (11, known(100, true)),  // taken over by a process started at 200
            (12, known(100, false)), // untraced: its verdict holds whoever has the pid
            (13, known(100, true)),  // gone: the dead are forgotten elsewhere
        ]);
        let now = |pid| match pid {
            10 => Some(100),
            11 | 12 => Some(200),
            _ => None,
        };
        assert_eq!(reused(&known, now), vec![11]);
    }

    #[test]
    fn exec_hints_cover_names_and_prefixes_only() {
        let s = selection(
            &[],
            &[
                "nginx",
                "python3*",
                "/usr/bin/node",
                "py?hon",
                "a-very-long-binary-name",
            ],
        );
        let hints = s.exec_hints();
        let mut nginx = [0u8; COMM_LEN];
        nginx[..5].copy_from_slice(b"nginx");
        assert_eq!(hints.names, vec![nginx]);
        assert_eq!(hints.prefixes.len(), 2);
        assert_eq!(&hints.prefixes[0].bytes[..7], b"python3");
        assert_eq!(hints.prefixes[0].len, 7);
        // Longer than a command name: the kernel sees only its first 15 bytes.
        assert_eq!(hints.prefixes[1].len, 15);
        assert_eq!(&hints.prefixes[1].bytes[..15], b"a-very-long-bin");
    }

    #[test]
    fn empty_selection_traces_everything() {
        assert!(selection(&[], &[]).traces_everything());
    }

    #[test]
    fn rejects_unknown_pid_and_bad_glob() {
        assert!(matches!(
            Selection::new(&[u32::MAX - 1], &[]),
            Err(SelectionError::UnknownPid(_))
        ));
        assert!(matches!(
            Selection::new(&[], &["[".to_string()]),
            Err(SelectionError::BadPattern { .. })
        ));
    }
}
