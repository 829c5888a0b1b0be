//! Sampling: which finished traces are exported. Metrics are derived before this stage,
//! from every request.
//!
//! Head sampling follows `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` and decides per
//! trace from the trace id (and an incoming caller's sampled flag), so every span of a
//! trace on this node gets the same decision. Tail sampling, opt-in, holds a trace's spans
//! for a while and keeps it when it holds an error or a slow span, else by ratio.

mod head;
pub mod tail;

pub use head::{HeadSampler, SamplerConfigError};
pub use tail::{TailPolicy, TailSampler};

use crate::span::TraceId;

/// A ratio decision that any span of the trace reaches alike: the trace id's last eight
/// bytes, read as a number, against the ratio's share of their range.
pub fn ratio_keeps(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id.0[8..]);
    let value = u64::from_be_bytes(low);
    (value as f64) < ratio * (u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::context::new_trace_id;

    #[test]
    fn ratio_is_deterministic_and_proportional() {
        let id = new_trace_id();
        assert_eq!(ratio_keeps(&id, 0.3), ratio_keeps(&id, 0.3));
        let kept = (0..20_000)
            .filter(|_| ratio_keeps(&new_trace_id(), 0.25))
            .count();
        assert!(
            (4_400..5_600).contains(&kept),
            "kept {kept} of 20000 at 25%"
        );
        assert!(ratio_keeps(&id, 1.0));
        assert!(!ratio_keeps(&id, 0.0));
    }
}
