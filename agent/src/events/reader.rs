//! The thread that drains the kernel ring buffer.
//!
//! The kernel side only wakes the agent when the buffer passes a quarter full (see the
//! emit module there), so this loop also polls on a timer: records wait at most one poll
//! interval before being read, and the traced process never pays for a wakeup.

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use super::{
    Event,
    clock::monotonic_now_ns,
    decode,
    hold::{HOLD_POLL, Hold},
};
use crate::telemetry::metrics::Metrics;

/// Every wakeup costs tens of microseconds on a virtual machine, traffic or not, so the
/// ring is read every 50 ms (20 wakeups a second), and sooner only when it passes a quarter
/// full (the kernel side then wakes the reader). Reading every 20 ms while records flowed
/// cost the agent a fifth more CPU per request at 2,300 requests/s. The interval is what
/// traffic can fill between looks: everything read in one go goes to the export queue
/// (2048 spans by default), and at 20k requests/s a 250 ms wait made bursts of 5,000 spans
/// that overflowed it; 50 ms makes 1,000.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const TICK_INTERVAL: Duration = Duration::from_millis(250);

/// The next stage: gets every decoded event, in ring-buffer order, on the reader thread.
pub trait EventSink {
    fn handle(&mut self, event: Event<'_>);
    /// Called after each read that handled at least one event, once the ring buffer had
    /// nothing more waiting (`holding` false) or the reader stopped early to wait for
    /// `has_room` (`holding` true).
    fn drained(&mut self, holding: bool);
    /// False while the next stage cannot take more work without dropping some: the reader
    /// then leaves records in the ring buffer for a while (see the hold module).
    fn has_room(&self) -> bool {
        true
    }
    /// The ring buffer was read empty at `at_ns` (monotonic clock): every record written
    /// before then has been handled, but for one still being written at that moment.
    /// Called before [`Self::drained`] and [`Self::tick`].
    fn read_empty(&mut self, _at_ns: u64) {}
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
    let mut hold = Hold::default();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let mut read = 0u64;
        let mut holding = false;
        loop {
            // A stopping reader drains everything: `finish` flushes what it can.
            if !stopping && hold.should_wait(sink.has_room(), Instant::now) {
                holding = true;
                metrics.reader_waits.inc();
                break;
            }
            let Some(item) = ring.next() else {
                sink.read_empty(monotonic_now_ns());
                break;
            };
            read += 1;
            match decode(&item) {
                Ok(event) => sink.handle(event),
                Err(err) => {
                    metrics.events_malformed.inc();
                    log::debug!("malformed ring-buffer record: {err}");
                }
            }
        }
        if read > 0 {
            sink.drained(holding);
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
        if holding {
            // The ring is readable, so polling it would return at once.
            std::thread::sleep(HOLD_POLL);
            continue;
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
