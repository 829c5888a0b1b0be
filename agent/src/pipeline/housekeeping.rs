//! The pipeline's once-a-second pass: tail decisions that are due, connections of ended
//! processes and idle connections, pids taken over by another process, the linker's and
//! the injected ids' expiries, the kernel's counters, and the clock's offset.

use std::time::{Duration, Instant};

use super::Pipeline;
use crate::{
    events::clock::{Clock, monotonic_now_ns},
    probes::maps::read_counters,
    process::procfs,
};

/// A connection with no traffic for this long is forgotten (its session flushed), bar
/// its endpoints.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The same for a connection whose request still awaits its response: long polls (a
/// Consul blocking query waits up to ten minutes) and slow reports outlast
/// `IDLE_TIMEOUT`, and finishing them early would export a false `no_response` error and
/// garble the response when it comes. As long as the linker keeps a request in flight.
pub(super) const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Housekeeping runs between checks for pids taken over by a new process.
const TAKEOVER_CHECK_EVERY: u32 = 5;

impl Pipeline {
    pub(super) fn housekeeping(&mut self) {
        self.housekeeping_at(monotonic_now_ns());
    }

    /// [`Self::housekeeping`] with the monotonic clock reading `now`.
    pub(super) fn housekeeping_at(&mut self, now: u64) {
        if let Some(released) = self.tail_sampler.as_mut().map(|t| t.tick(Instant::now())) {
            self.release(released);
        }
        let idle_ns = IDLE_TIMEOUT.as_nanos() as u64;
        let in_flight_ns = IN_FLIGHT_TIMEOUT.as_nanos() as u64;
        let mut dead: Vec<u32> = self
            .connections
            .tgids()
            .into_iter()
            .filter(|&tgid| !alive(tgid))
            .collect();
        // A pid another process took over without an exec: what was known of it is the
        // old process's. One /proc read per known process, so not every second.
        self.housekeeping_runs = self.housekeeping_runs.wrapping_add(1);
        if self.housekeeping_runs.is_multiple_of(TAKEOVER_CHECK_EVERY) {
            for tgid in self.processes.taken_over(procfs::start_time) {
                self.processes.forget(tgid);
                if !dead.contains(&tgid) {
                    dead.push(tgid);
                }
            }
        }
        let expired = self.connections.drain_where(|key, conn| {
            let quiet = now.saturating_sub(conn.last_activity_ns);
            dead.contains(&key.tgid)
                || (quiet > idle_ns && (quiet > in_flight_ns || !conn.awaits_response()))
        });
        for (key, conn) in expired {
            if !dead.contains(&key.tgid) {
                self.connections.park(key, &conn);
            }
            self.finish_connection(key, conn, now);
        }
        self.connections.forget_parked_of(&dead);
        self.processes.retain(alive);
        self.whole_responses.forget_dead(alive);
        self.event_loops.forget_dead(alive);
        self.linker.forget_dead(alive);
        for tgid in dead {
            self.linker.forget_process(tgid);
            // Taken over by another process, which looks alive.
            self.whole_responses.forget(tgid);
            self.event_loops.forget(tgid);
        }
        self.linker.expire(now);
        self.metrics
            .linker_requests_dropped
            .add(self.linker.take_dropped());
        self.metrics
            .idle_endpoints_dropped
            .add(self.connections.take_park_refusals());
        self.injected.expire(now);
        self.metrics
            .connections_active
            .set(self.connections.len() as u64);

        if let Some(counters) = &self.counters {
            self.metrics.set_kernel_counters(&read_counters(counters));
        }
        self.assembler.set_clock(Clock::measure());
    }
}

pub(super) fn alive(tgid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(tgid as i32, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
