//! Fresh trace and span ids.
//!
//! Each thread draws them from its own small generator (xoshiro256++), seeded once from
//! the operating system's randomness through `rand`'s thread generator, as the
//! OpenTelemetry Rust SDK's `RandomIdGenerator` does. Ids need to be unique and evenly
//! spread for ratio sampling, not unguessable. Unlike `rand`'s thread generator, this one
//! can be seeded: the replay behind `bench --instructions` fixes its ids that way, so
//! what gzip makes of them, and the instruction count, repeat from run to run.

use std::cell::RefCell;

use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::span::{SpanId, TraceId};

thread_local! {
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// A random trace id, never the invalid all-zero one.
pub fn new_trace_id() -> TraceId {
    TraceId(nonzero(|rng| rng.random::<u128>()).to_be_bytes())
}

/// A random span id, never the invalid all-zero one.
pub fn new_span_id() -> SpanId {
    SpanId(nonzero(|rng| rng.random::<u64>()).to_be_bytes())
}

/// The first draw from this thread's generator that is not zero.
fn nonzero<T: PartialEq + Default>(draw: impl Fn(&mut SmallRng) -> T) -> T {
    IDS.with_borrow_mut(|rng| {
        loop {
            let v = draw(rng);
            if v != T::default() {
                return v;
            }
        }
    })
}

/// Makes this thread's ids from now on a fixed sequence, for good: only the replay of
/// `bench --instructions` calls it, on its own thread.
#[doc(hidden)]
pub fn seed_this_thread(seed: u64) {
    IDS.with_borrow_mut(|rng| *rng = SmallRng::seed_from_u64(seed));
}
