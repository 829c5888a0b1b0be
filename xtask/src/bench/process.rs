//! Child processes that never outlive the benchmark, a scratch directory that goes away
//! with it, and Ctrl-C handling that lets both clean up.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that the benchmark loops poll, so they unwind and
/// the guards below stop nginx, the agent and the sink.
pub fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A child process that is stopped when dropped.
///
/// It runs in its own process group, so a stop reaches its own children (nginx's worker),
/// and it gets `parent_death_signal` if xtask dies without unwinding.
pub struct Guard {
    name: &'static str,
    child: Child,
    stop_signal: libc::c_int,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl Guard {
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        stop_signal: libc::c_int,
        grace: Duration,
    ) -> io::Result<Self> {
        cmd.process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Self {
            name,
            child,
            stop_signal,
            grace,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has already ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Reads what an exited child left in its piped stdout and stderr (bounded).
    pub fn take_output(&mut self) -> (String, String) {
        fn drain(pipe: Option<&mut impl Read>) -> String {
            let mut buf = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(1 << 20).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        }
        let out = drain(self.child.stdout.as_mut());
        let err = drain(self.child.stderr.as_mut());
        (out, err)
    }

    /// Asks the process to stop, then kills its whole group after the grace period.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return None;
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe {
            libc::kill(pid, self.stop_signal);
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                self.kill_group(pid);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "xtask: {} did not stop within {:.0?} of the signal; killed",
            self.name, self.grace
        );
        self.kill_group(pid);
        self.status = self.child.wait().ok();
        self.status
    }

    fn kill_group(&self, pid: libc::pid_t) {
        // SAFETY: as above; the group id is the child's pid because of process_group(0), and
        // leftover group members (a worker whose master died) are ours too.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scratch directory removed on drop unless asked to keep it.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// `/tmp/loupe-<what>-<pid>-<nanos>`.
    pub fn create(what: &str, keep: bool) -> io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("loupe-{what}-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(Self { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Calls `ready` every `every` until it returns `Some` or `limit` passes.
pub fn poll_until<T>(
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if Instant::now() >= deadline || interrupted() {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Sleeps for `duration`, or less when interrupted.
pub fn sleep_unless_interrupted(duration: Duration) {
    let _: Option<()> = poll_until(duration, Duration::from_millis(50), || None);
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            if all.is_empty() {
                format!("({} is empty)", path.display())
            } else {
                format!(
                    "last lines of {}:\n{}",
                    path.display(),
                    all[start..].join("\n")
                )
            }
        }
        Err(err) => format!("({} unreadable: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_stops_its_process() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let guard = Guard::spawn("sleep", cmd, libc::SIGTERM, Duration::from_secs(2));
        let Ok(mut guard) = guard else {
            panic!("could not start sleep");
        };
        let pid = guard.pid();
        assert!(guard.exited().is_none());
        drop(guard);
        // Stopped and reaped: the pid is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_process_ignoring_the_stop_signal_is_killed_after_the_grace_period() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 30"]);
        let Ok(mut guard) =
            Guard::spawn("stubborn", cmd, libc::SIGTERM, Duration::from_millis(200))
        else {
            panic!("could not start sh");
        };
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let status = guard.stop();
        assert!(status.is_some());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn temp_dir_is_removed_unless_kept() {
        let Ok(dir) = TempDir::create("test", false) else {
            panic!("no temp dir");
        };
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn log_tail_keeps_the_end() {
        let Ok(dir) = TempDir::create("test", false) else {
            panic!("no temp dir");
        };
        let log = dir.path().join("x.log");
        assert!(std::fs::write(&log, "a\nb\nc\n").is_ok());
        let tail = log_tail(&log, 2);
        assert!(tail.ends_with("b\nc"));
        assert!(log_tail(&dir.path().join("missing"), 2).contains("unreadable"));
    }

    #[test]
    fn poll_until_gives_up_at_the_limit() {
        let mut calls = 0;
        let got: Option<()> =
            poll_until(Duration::from_millis(50), Duration::from_millis(10), || {
                calls += 1;
                None
            });
        assert!(got.is_none());
        assert!(calls >= 2);
        assert_eq!(
            poll_until(Duration::from_secs(1), Duration::from_millis(1), || Some(7)),
            Some(7)
        );
    }
}
