//! Tail sampling: a trace's spans wait until the trace has been quiet for a while, then
//! the whole trace is kept when one of its spans failed or was slow, else by ratio.
//! Spans of a trace that arrive after its decision follow that decision.
//!
//! The buffer is bounded in traces and spans; when it is full the oldest trace is decided
//! early (counted), never dropped undecided.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::ratio_keeps;
use crate::span::{FinishedSpan, TraceId};

#[derive(Debug, Clone, PartialEq)]
pub struct TailPolicy {
    /// Keep every trace with a span in error.
    pub keep_errors: bool,
    /// Keep every trace with a span at least this long.
    pub latency_threshold: Option<Duration>,
    /// Share of the remaining traces kept.
    pub ratio: f64,
    /// How long a trace's spans wait for the rest of the trace.
    pub wait: Duration,
    /// Traces held at most at once.
    pub max_traces: usize,
    /// Spans held at most at once.
    pub max_spans: usize,
}

struct Pending {
    spans: Vec<FinishedSpan>,
    last_seen: Instant,
    interesting: bool,
}

/// What a call released for export, and what it counted.
#[derive(Debug, Default)]
pub struct Released {
    pub kept: Vec<FinishedSpan>,
    pub dropped: u64,
    /// Traces decided early because the buffer was full.
    pub forced: u64,
}

pub struct TailSampler {
    policy: TailPolicy,
    pending: HashMap<TraceId, Pending>,
    /// Arrival order of pending traces, for early decisions when full.
    order: VecDeque<TraceId>,
    held_spans: usize,
    /// Recent decisions, for late spans; bounded like the buffer.
    decided: HashMap<TraceId, bool>,
    decided_order: VecDeque<TraceId>,
}

impl TailSampler {
    pub fn new(policy: TailPolicy) -> Self {
        Self {
            policy,
            pending: HashMap::new(),
            order: VecDeque::new(),
            held_spans: 0,
            decided: HashMap::new(),
            decided_order: VecDeque::new(),
        }
    }

    fn interesting(&self, span: &FinishedSpan) -> bool {
        let s = &span.span;
        (self.policy.keep_errors && s.is_error())
            || self.policy.latency_threshold.is_some_and(|t| {
                s.end_unix_ns.saturating_sub(s.start_unix_ns) >= t.as_nanos() as u64
            })
    }

    pub fn offer(&mut self, span: FinishedSpan, now: Instant) -> Released {
        let mut out = Released::default();
        let trace_id = span.span.trace_id;
        if let Some(&keep) = self.decided.get(&trace_id) {
            if keep {
                out.kept.push(span);
            } else {
                out.dropped += 1;
            }
            return out;
        }
        let interesting = self.interesting(&span);
        let entry = self.pending.entry(trace_id).or_insert_with(|| {
            self.order.push_back(trace_id);
            Pending {
                spans: Vec::new(),
                last_seen: now,
                interesting: false,
            }
        });
        entry.spans.push(span);
        entry.last_seen = now;
        entry.interesting |= interesting;
        self.held_spans += 1;
        while self.pending.len() > self.policy.max_traces || self.held_spans > self.policy.max_spans
        {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.decide(oldest, &mut out) {
                out.forced += 1;
            }
        }
        out
    }

    /// Decides every trace that has been quiet for the wait time.
    pub fn tick(&mut self, now: Instant) -> Released {
        let mut out = Released::default();
        let wait = self.policy.wait;
        let due: Vec<TraceId> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_seen) >= wait)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.order.retain(|t| *t != id);
            self.decide(id, &mut out);
        }
        out
    }

    /// Decides everything now (shutdown).
    pub fn flush(&mut self) -> Released {
        let mut out = Released::default();
        while let Some(id) = self.order.pop_front() {
            self.decide(id, &mut out);
        }
        out
    }

    fn decide(&mut self, trace_id: TraceId, out: &mut Released) -> bool {
        let Some(pending) = self.pending.remove(&trace_id) else {
            return false;
        };
        self.held_spans -= pending.spans.len();
        let keep = pending.interesting || ratio_keeps(&trace_id, self.policy.ratio);
        if keep {
            out.kept.extend(pending.spans);
        } else {
            out.dropped += pending.spans.len() as u64;
        }
        if self.decided.len() >= self.policy.max_traces.max(1)
            && let Some(old) = self.decided_order.pop_front()
        {
            self.decided.remove(&old);
        }
        self.decided.insert(trace_id, keep);
        self.decided_order.push_back(trace_id);
        true
    }

    pub fn held(&self) -> (usize, usize) {
        (self.pending.len(), self.held_spans)
    }
}

#[cfg(test)]
#[path = "tail_tests.rs"]
mod tests;
