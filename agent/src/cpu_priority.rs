//! `--cpu-priority`: the agent's threads give the host its CPU back once the agent runs.
//!
//! Start-up (BTF, program loads and their verification, the first /proc scan) runs at
//! normal priority: it is a bounded, one-time cost, and at idle priority a saturated host
//! would keep the agent from ever becoming ready. Every thread is lowered just before the
//! agent reports ready.

use std::{collections::HashSet, io};

use crate::cli::CpuPriority;

/// Lowers every thread of this process to `priority`. Lowering needs no privilege, so a
/// failure is only logged.
pub fn lower_all_threads(priority: CpuPriority) {
    lower_threads(priority, own_threads);
}

/// [`lower_all_threads`] with the listing of the process's threads given.
fn lower_threads(priority: CpuPriority, mut list_threads: impl FnMut() -> io::Result<Vec<i32>>) {
    if priority == CpuPriority::Normal {
        return;
    }
    // SAFETY: gettid has no arguments and cannot fail.
    let own = unsafe { libc::gettid() };
    // This thread first: the threads it starts from now on inherit its priority.
    if let Err(err) = lower(own, priority) {
        log::warn!("could not lower the agent's CPU priority: {err}");
        return;
    }
    let mut lowered = HashSet::from([own]);
    // A thread not yet lowered may start another meanwhile: repeat until a pass finds
    // only lowered threads, whose children inherit.
    loop {
        let threads = match list_threads() {
            Ok(threads) => threads,
            Err(err) => {
                log::warn!("could not list the agent's threads to lower their priority: {err}");
                return;
            }
        };
        let fresh: Vec<i32> = threads
            .into_iter()
            .filter(|tid| lowered.insert(*tid))
            .collect();
        if fresh.is_empty() {
            return;
        }
        for tid in fresh {
            match lower(tid, priority) {
                // The thread ended since the listing.
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
                Err(err) => log::warn!("could not lower the priority of thread {tid}: {err}"),
                Ok(()) => {}
            }
        }
    }
}

fn own_threads() -> io::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// On Linux scheduling policy and niceness belong to each thread, named by its id.
fn lower(tid: i32, priority: CpuPriority) -> io::Result<()> {
    let rc = match priority {
        CpuPriority::Normal => 0,
        CpuPriority::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: a valid parameter block; an unknown tid is an error, not UB.
            unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) }
        }
        // SAFETY: plain syscall; `who` is a thread id for PRIO_PROCESS on Linux.
        CpuPriority::Low => unsafe {
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, LOW_NICENESS)
        },
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const LOW_NICENESS: libc::c_int = 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_and_nice(tid: i32) -> (i32, i32) {
        // SAFETY: plain syscalls on a thread of this process.
        unsafe {
            (
                libc::sched_getscheduler(tid),
                libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t),
            )
        }
    }

    #[test]
    fn threads_started_before_and_after_are_lowered() {
        // In a thread of its own: the policy is per thread.
        std::thread::spawn(|| {
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let earlier = std::thread::spawn(move || {
                // SAFETY: gettid cannot fail.
                started_tx.send(unsafe { libc::gettid() }).unwrap();
                release_rx.recv().ok();
            });
            let earlier_tid = started_rx.recv().unwrap();
            // Only this test's threads: the harness's must keep their priority.
            let mut passes = 0;
            lower_threads(CpuPriority::Low, || {
                passes += 1;
                Ok(vec![earlier_tid])
            });
            assert_eq!(passes, 2, "a second pass finds nothing new");
            // SAFETY: gettid cannot fail.
            let own = unsafe { libc::gettid() };
            let later = std::thread::spawn(|| policy_and_nice(unsafe { libc::gettid() }))
                .join()
                .unwrap();
            assert_eq!(policy_and_nice(own), (libc::SCHED_OTHER, LOW_NICENESS));
            assert_eq!(
                policy_and_nice(earlier_tid),
                (libc::SCHED_OTHER, LOW_NICENESS)
            );
            assert_eq!(later, (libc::SCHED_OTHER, LOW_NICENESS));
            release_tx.send(()).unwrap();
            earlier.join().unwrap();
        })
        .join()
        .unwrap();
    }
}
