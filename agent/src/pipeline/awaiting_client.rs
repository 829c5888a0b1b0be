//! Server spans held back for the client span loupe is about to see.
//!
//! A client's request record is written when its write returns. On loopback that write
//! hands the bytes to the server and wakes it before returning, so a client preempted in
//! between (by the very server it woke, when they share a CPU, or by anything else) can
//! have its request reach the agent after the server has read it, answered it and
//! closed. The server's exchange is then complete before its client span exists. Sent
//! at once, the server span would start a trace of its own, and the client span another.
//! Held here, it goes once its client's record has linked it, or once the ring buffer
//! has moved [`CLIENT_WAIT_NS`] past its end without one.

use std::collections::VecDeque;

use super::linking::{NodeRef, Parent};

/// How long after a server span's end its client's request record may still arrive: the
/// time the client can stay preempted between handing over its bytes and its write's
/// return. Measured on the records' clock, which moves only as the agent reads them, so
/// a lagging agent waits no shorter.
pub const CLIENT_WAIT_NS: u64 = 100_000_000;
/// Spans held at most; past that the oldest goes at once, unlinked.
pub const MAX_AWAITING: usize = 4_096;

/// Held spans (`T`: what the pipeline needs to finish one), in the order they ended.
pub struct AwaitingClient<T> {
    held: VecDeque<Held<T>>,
}

struct Held<T> {
    item: T,
    node: NodeRef,
    ended_ns: u64,
}

impl<T> Default for AwaitingClient<T> {
    fn default() -> Self {
        Self {
            held: VecDeque::new(),
        }
    }
}

/// Whether the span of `node` has found a parent since it was held.
fn linked(node: &NodeRef) -> bool {
    !matches!(node.borrow().parent, Parent::Root(_))
}

impl<T> AwaitingClient<T> {
    /// Holds `item`, the span of `node` that ended at `ended_ns`, for its client. When
    /// [`MAX_AWAITING`] are held already, returns the oldest, to go now.
    pub fn hold(&mut self, item: T, node: NodeRef, ended_ns: u64) -> Option<T> {
        let oldest = if self.held.len() >= MAX_AWAITING {
            self.held.pop_front().map(|held| held.item)
        } else {
            None
        };
        self.held.push_back(Held {
            item,
            node,
            ended_ns,
        });
        oldest
    }

    /// Moves into `out` the spans linked since they were held, and those whose wait ended
    /// by `now_ns` (on the records' clock, or the monotonic clock once the ring buffer
    /// has been read empty). Returns how many went unlinked.
    pub fn release(&mut self, now_ns: u64, out: &mut Vec<T>) -> u64 {
        let mut unlinked = 0;
        let mut kept = VecDeque::with_capacity(self.held.len());
        for held in self.held.drain(..) {
            if linked(&held.node) {
                out.push(held.item);
            } else if now_ns.saturating_sub(held.ended_ns) > CLIENT_WAIT_NS {
                unlinked += 1;
                out.push(held.item);
            } else {
                kept.push_back(held);
            }
        }
        self.held = kept;
        unlinked
    }

    /// Moves every held span into `out`, as the agent stops; returns how many went
    /// unlinked.
    pub fn release_all(&mut self, out: &mut Vec<T>) -> u64 {
        let mut unlinked = 0;
        for held in self.held.drain(..) {
            unlinked += u64::from(!linked(&held.node));
            out.push(held.item);
        }
        unlinked
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;
    use crate::pipeline::linking::SpanNode;
    use crate::span::context::{new_span_id, new_trace_id};

    fn root() -> NodeRef {
        Rc::new(RefCell::new(SpanNode {
            span_id: new_span_id(),
            parent: Parent::Root(new_trace_id()),
            trace_flags: 1,
            trace_state: None,
            server_start_ns: 0,
        }))
    }

    #[test]
    fn a_span_goes_once_linked_and_not_before() {
        let mut awaiting = AwaitingClient::default();
        let (a, b) = (root(), root());
        assert!(awaiting.hold("a", a.clone(), 1_000).is_none());
        assert!(awaiting.hold("b", b.clone(), 2_000).is_none());
        let mut out = Vec::new();
        assert_eq!(awaiting.release(1_000 + CLIENT_WAIT_NS, &mut out), 0);
        assert!(out.is_empty(), "both still wait");
        b.borrow_mut().parent = Parent::Local(root());
        assert_eq!(awaiting.release(1_000 + CLIENT_WAIT_NS, &mut out), 0);
        assert_eq!(out, ["b"]);
        assert!(!awaiting.is_empty());
    }

    #[test]
    fn a_span_goes_unlinked_once_its_wait_is_over() {
        let mut awaiting = AwaitingClient::default();
        awaiting.hold("early", root(), 1_000);
        awaiting.hold("late", root(), 50_000_000);
        let mut out = Vec::new();
        assert_eq!(awaiting.release(1_000 + CLIENT_WAIT_NS, &mut out), 0);
        assert!(out.is_empty(), "the wait is over only past it");
        assert_eq!(awaiting.release(1_001 + CLIENT_WAIT_NS, &mut out), 1);
        assert_eq!(out, ["early"]);
        // A clock behind a span's end (records from another CPU) keeps it.
        assert_eq!(awaiting.release(0, &mut out), 0);
        assert_eq!(out, ["early"]);
        assert_eq!(awaiting.release_all(&mut out), 1);
        assert_eq!(out, ["early", "late"]);
        assert!(awaiting.is_empty());
    }

    #[test]
    fn the_oldest_goes_when_the_room_is_full() {
        let mut awaiting = AwaitingClient::default();
        for n in 0..MAX_AWAITING {
            assert!(awaiting.hold(n, root(), n as u64).is_none());
        }
        assert_eq!(awaiting.hold(MAX_AWAITING, root(), 0), Some(0));
        let mut out = Vec::new();
        assert_eq!(awaiting.release_all(&mut out), MAX_AWAITING as u64);
        assert_eq!(out.first(), Some(&1));
        assert_eq!(out.last(), Some(&MAX_AWAITING));
    }
}
