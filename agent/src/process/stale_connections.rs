//! Kernel connection entries that belong to no live connection: their process exited
//! without closing them (an exit closes its fds without the close calls the probes see),
//! its pid now names a newer process, or it called exec, which closes close-on-exec fds
//! the same way. The new program's fds would otherwise be taken for the old connections,
//! and a file it reads through a reused fd number captured as socket data.
//!
//! An entry's `conn_id` is when the probes registered it (`bpf_ktime_get_ns`, the
//! monotonic clock): an entry older than the process that now has its tgid is its
//! predecessor's, and one older than an exec may be the old program's. Connections that
//! survive an exec (not close-on-exec) are found again on their next read or write.

use std::collections::HashMap;

use super::procfs;
use crate::probes::KernelConnections;

/// Who has a tgid now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// Nobody: the process exited, or the id is another process's thread.
    Gone,
    /// A process that started at this monotonic time in ns, rounded down to /proc's
    /// clock tick, so its own connections are never older.
    StartedAt(u64),
}

/// Drops the stale entries of the kernel's connection table and cache; returns how many
/// table entries it dropped.
pub fn prune(connections: &mut KernelConnections) -> u64 {
    let suspended = suspended_ns();
    let mut holders: HashMap<u32, Holder> = HashMap::new();
    drop_where(connections, |tgid, conn_id| {
        let holder = *holders
            .entry(tgid)
            .or_insert_with(|| holder(tgid, suspended));
        is_stale(holder, conn_id)
    })
}

/// Drops the entries of process `tgid` registered before `exec_ns`, when it called exec;
/// returns how many table entries it dropped.
pub fn forget_before(connections: &mut KernelConnections, tgid: u32, exec_ns: u64) -> u64 {
    drop_where(connections, |owner, conn_id| {
        owner == tgid && conn_id < exec_ns
    })
}

/// Drops the table entries and cache slots for which `stale(tgid, conn_id)` holds.
fn drop_where(connections: &mut KernelConnections, mut stale: impl FnMut(u32, u64) -> bool) -> u64 {
    let KernelConnections { table, cache, .. } = connections;
    let keys: Vec<_> = table
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, state)| stale(key.tgid, state.conn_id))
        .map(|(key, _)| key)
        .collect();
    let mut dropped = 0;
    for key in &keys {
        // Asked again: the walk takes a while, and the new program may have registered a
        // connection of its own at the same fd since (a register replaces without a
        // close). What remains between this read and the removal is a rediscovery on the
        // connection's next call, not a loss.
        let still_stale = table
            .get(key, 0)
            .is_ok_and(|state| stale(key.tgid, state.conn_id));
        if still_stale && table.remove(key).is_ok() {
            dropped += 1;
        }
    }
    cache.forget_stale(stale);
    dropped
}

fn is_stale(holder: Holder, conn_id: u64) -> bool {
    match holder {
        Holder::Gone => true,
        Holder::StartedAt(start) => conn_id < start,
    }
}

/// `suspended`: how far the boot clock, which /proc's start times count, is ahead of the
/// monotonic clock, which does not count time asleep.
fn holder(tgid: u32, suspended: u64) -> Holder {
    if !procfs::is_process(tgid) {
        return Holder::Gone;
    }
    match procfs::start_time(tgid) {
        Some(ticks) => Holder::StartedAt(ticks_to_ns(ticks).saturating_sub(suspended)),
        None => Holder::Gone,
    }
}

fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second)
        .ok()
        .filter(|&t| t > 0)
        .unwrap_or(100);
    ticks.saturating_mul(1_000_000_000 / per_second)
}

/// Time the machine spent suspended since boot, in ns. Read now, it is at least what it
/// was when any process started, so a start converted with it is never later than the
/// truth: a live connection is never taken for a stale one.
fn suspended_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC))
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to write.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_older_than_the_process_at_their_tgid_are_its_predecessors() {
        assert!(is_stale(Holder::Gone, u64::MAX));
        assert!(is_stale(Holder::StartedAt(2_000), 1_999));
        assert!(!is_stale(Holder::StartedAt(2_000), 2_000));
        assert!(!is_stale(Holder::StartedAt(2_000), 3_000));
    }

    #[test]
    fn a_process_starts_when_the_monotonic_clock_says() {
        let before = clock_ns(libc::CLOCK_MONOTONIC);
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("spawn sleep");
        let after = clock_ns(libc::CLOCK_MONOTONIC);
        let holder = holder(child.id(), suspended_ns());
        let _ = child.kill();
        let _ = child.wait();
        let Holder::StartedAt(start) = holder else {
            panic!("the child is alive: {holder:?}");
        };
        // Rounded down to /proc's tick (10 ms at 100 Hz).
        assert!(
            start + 10_000_000 >= before && start <= after,
            "started at {start} ns, spawned between {before} and {after}"
        );
        // A connection it registered from then on is its own.
        assert!(!is_stale(holder, after));
    }

    #[test]
    fn a_tgid_nobody_has_is_gone() {
        assert_eq!(holder(u32::MAX - 1, 0), Holder::Gone);
    }
}
