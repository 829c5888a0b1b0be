//! The thread that drains the kernel ring buffer.
//!
//! The kernel side only wakes the agent when the buffer fills up (see the emit module
//! there), so this loop also polls on a short timer: records wait at most one
//! `POLL_INTERVAL` before being read, and the traced process never pays for a wakeup.

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use super::{Event, decode};
use crate::telemetry::metrics::Metrics;

/// Every wakeup costs tens of microseconds on a virtual machine, traffic or not; 20 ms
/// keeps an idle agent near 0.5% of a core while records still leave within a batch delay.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const TICK_INTERVAL: Duration = Duration::from_millis(250);

/// The next stage: gets every decoded event, in ring-buffer order, on the reader thread.
pub trait EventSink {
    fn handle(&mut self, event: Event<'_>);
    /// Called about every `TICK_INTERVAL` for time-based work (timeouts, counters).
    fn tick(&mut self);
    /// Called once when the reader stops, after the ring buffer was drained.
    fn finish(&mut self);
}

pub fn run(
    mut ring: RingBuf<MapData>,
    sink: &mut dyn EventSink,
    metrics: &Arc<Metrics>,
    stop: &AtomicBool,
) {
    let mut last_tick = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let mut read = 0u64;
        while let Some(item) = ring.next() {
            read += 1;
            match decode(&item) {
                Ok(event) => sink.handle(event),
                Err(err) => {
                    metrics.events_malformed.inc();
                    log::debug!("malformed ring-buffer record: {err}");
                }
            }
        }
        metrics.events_read.add(read);
        if last_tick.elapsed() >= TICK_INTERVAL {
            sink.tick();
            last_tick = Instant::now();
        }
        if stopping {
            sink.finish();
            return;
        }
        wait_readable(ring.as_raw_fd(), POLL_INTERVAL);
    }
}

fn wait_readable(fd: i32, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the result only decides how soon we look again.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
}
