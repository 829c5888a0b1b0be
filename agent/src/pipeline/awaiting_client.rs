//! Spans held back for the client span loupe is about to see: a SERVER span's, and those
//! of the spans it caused.
//!
//! A client's request record is written when its write returns. On loopback that write
//! hands the bytes to the server and wakes it before returning, so a client preempted in
//! between (by the very server it woke, when they share a CPU, or by anything else) can
//! have its request reach the agent after the server has read it, answered it and
//! closed. The server's exchange is then complete before its client span exists. Sent
//! at once, the server span would start a trace of its own, and the client span another.
//! Held here, it goes once its client's record has linked it, or once the ring buffer
//! has moved [`CLIENT_WAIT_NS`] past its end without one.
//!
//! The spans the server caused while it handled the request (its calls, and the server
//! spans of those calls in other traced processes) are held with it, each by the same
//! rule: when the client has a trace of its own (a proxy's upstream call made while it
//! serves a request), the server joins that trace, and spans already sent would be left
//! in the server's first one.

use std::collections::VecDeque;

use super::linking::{MAX_DEPTH, NodeRef, Parent, SpanNode};

/// How long after a server span's end its client's request record may still arrive: the
/// time the client can stay preempted between handing over its bytes and its write's
/// return. Measured from when the reader last found the ring buffer empty, not from the
/// time it is checked, so an agent that lags behind its ring buffer still waits for
/// every record written in that time.
pub const CLIENT_WAIT_NS: u64 = 100_000_000;
/// Spans held at most; past that the first held goes at once, unlinked.
pub const MAX_AWAITING: usize = 4_096;

/// Whether the span of `node` is in a trace whose first span still awaits its client:
/// that client's record would put the whole trace under another, so none of its spans
/// should go out yet.
pub(super) fn trace_awaits_client(node: &NodeRef) -> bool {
    // The answer at the top of a trace, or the parent to go on to. A caller's context
    // (`Remote`) fixes the trace id: no client record can move such a span.
    fn up(node: &SpanNode) -> Result<bool, NodeRef> {
        match &node.parent {
            Parent::Local(parent) => Err(parent.clone()),
            Parent::Remote { .. } => Ok(false),
            Parent::Root(_) => Ok(node.awaits_client),
        }
    }
    // Borrowed, not cloned, at the first step: most spans start or continue their trace.
    let first = node.borrow();
    // A span linked to a request waits as that request's trace does: the link names it.
    if first.link.as_ref().is_some_and(trace_awaits_client) {
        return true;
    }
    let mut current = match up(&first) {
        Ok(answer) => return answer,
        Err(parent) => parent,
    };
    drop(first);
    for _ in 1..MAX_DEPTH {
        let step = up(&current.borrow());
        match step {
            Ok(answer) => return answer,
            Err(parent) => current = parent,
        }
    }
    false
}

/// Held spans (`T`: what the pipeline needs to finish one), in the order they were held.
pub struct AwaitingClient<T> {
    held: VecDeque<Held<T>>,
    /// The next `held`, kept to save an allocation per release.
    spare: VecDeque<Held<T>>,
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
            spare: VecDeque::new(),
        }
    }
}

impl<T> AwaitingClient<T> {
    /// Holds `item`, the span of `node` that ended at `ended_ns`, for its client. When
    /// [`MAX_AWAITING`] are held already, returns the first held, to go now.
    pub fn hold(&mut self, item: T, node: NodeRef, ended_ns: u64) -> Option<(T, NodeRef)> {
        let first = if self.held.len() >= MAX_AWAITING {
            self.held.pop_front().map(|held| (held.item, held.node))
        } else {
            None
        };
        self.held.push_back(Held {
            item,
            node,
            ended_ns,
        });
        first
    }

    /// Moves into `out` the spans whose trace's SERVER span has been linked to its client
    /// since they were held, and those whose wait is over once the ring buffer has been
    /// read empty at `read_empty_ns`.
    pub fn release(&mut self, read_empty_ns: u64, out: &mut Vec<(T, NodeRef)>) {
        let mut kept = std::mem::take(&mut self.spare);
        for held in self.held.drain(..) {
            if !trace_awaits_client(&held.node)
                || read_empty_ns.saturating_sub(held.ended_ns) > CLIENT_WAIT_NS
            {
                out.push((held.item, held.node));
            } else {
                kept.push_back(held);
            }
        }
        self.spare = std::mem::replace(&mut self.held, kept);
    }

    /// Moves every held span into `out`, as the agent stops.
    pub fn release_all(&mut self, out: &mut Vec<(T, NodeRef)>) {
        out.extend(self.held.drain(..).map(|held| (held.item, held.node)));
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;
    use crate::span::context::{new_span_id, new_trace_id};

    /// A server request's node that starts its trace and awaits its client.
    fn root() -> NodeRef {
        let server = client();
        server.borrow_mut().awaits_client = true;
        server
    }

    /// The items of released spans, in order.
    fn items<T: Copy>(out: &[(T, NodeRef)]) -> Vec<T> {
        out.iter().map(|(item, _)| *item).collect()
    }

    #[test]
    fn a_span_goes_once_linked_and_not_before() {
        let mut awaiting = AwaitingClient::default();
        let (a, b) = (root(), root());
        assert!(awaiting.hold("a", a.clone(), 1_000).is_none());
        assert!(awaiting.hold("b", b.clone(), 2_000).is_none());
        let mut out = Vec::new();
        awaiting.release(1_000 + CLIENT_WAIT_NS, &mut out);
        assert!(out.is_empty(), "both still wait");
        b.borrow_mut().parent = Parent::Local(client());
        awaiting.release(1_000 + CLIENT_WAIT_NS, &mut out);
        assert_eq!(items(&out), ["b"]);
        assert!(!awaiting.is_empty());
        awaiting.release_all(&mut out);
        assert_eq!(items(&out), ["b", "a"]);
        assert!(awaiting.is_empty());
    }

    /// A node that awaits nothing: a client request's, say.
    fn node(parent: Parent) -> NodeRef {
        Rc::new(RefCell::new(SpanNode::new(new_span_id(), parent, 1, None)))
    }

    fn child_of(parent: &NodeRef) -> NodeRef {
        node(Parent::Local(parent.clone()))
    }

    /// A client request's node that starts its trace.
    fn client() -> NodeRef {
        node(Parent::Root(new_trace_id()))
    }

    #[test]
    fn the_spans_a_server_caused_go_once_it_is_linked() {
        let mut awaiting = AwaitingClient::default();
        let server = root();
        let call = child_of(&server);
        let callee = child_of(&call);
        awaiting.hold("callee", callee, 1_000);
        awaiting.hold("call", call, 2_000);
        let mut out = Vec::new();
        awaiting.release(1_000, &mut out);
        assert!(
            out.is_empty(),
            "held while their trace's first span awaits its client"
        );
        server.borrow_mut().parent = Parent::Local(root());
        awaiting.release(1_000, &mut out);
        assert!(
            out.is_empty(),
            "now under a server that awaits a client of its own"
        );
        server.borrow_mut().parent = Parent::Local(client());
        awaiting.release(1_000, &mut out);
        assert_eq!(items(&out), ["callee", "call"]);
        assert!(awaiting.is_empty());
    }

    #[test]
    fn the_spans_a_server_caused_go_unlinked_by_their_own_wait() {
        let mut awaiting = AwaitingClient::default();
        let server = root();
        awaiting.hold("call", child_of(&server), 1_000);
        awaiting.hold("server", server, 5_000);
        let mut out = Vec::new();
        awaiting.release(1_001 + CLIENT_WAIT_NS, &mut out);
        assert_eq!(items(&out), ["call"]);
        awaiting.release(5_001 + CLIENT_WAIT_NS, &mut out);
        assert_eq!(items(&out), ["call", "server"]);
    }

    #[test]
    fn a_span_goes_unlinked_once_its_wait_is_over() {
        let mut awaiting = AwaitingClient::default();
        awaiting.hold("early", root(), 1_000);
        awaiting.hold("late", root(), 50_000_000);
        let mut out = Vec::new();
        awaiting.release(1_000 + CLIENT_WAIT_NS, &mut out);
        assert!(out.is_empty(), "the wait is over only past it");
        awaiting.release(1_001 + CLIENT_WAIT_NS, &mut out);
        assert_eq!(items(&out), ["early"]);
        // An empty read before a span's end keeps it.
        awaiting.release(0, &mut out);
        assert_eq!(items(&out), ["early"]);
        awaiting.release(50_000_001 + CLIENT_WAIT_NS, &mut out);
        assert_eq!(items(&out), ["early", "late"]);
        assert!(awaiting.is_empty());
    }

    #[test]
    fn the_oldest_goes_when_the_room_is_full() {
        let mut awaiting = AwaitingClient::default();
        for n in 0..MAX_AWAITING {
            assert!(awaiting.hold(n, root(), n as u64).is_none());
        }
        assert_eq!(
            awaiting.hold(MAX_AWAITING, root(), 0).map(|(n, _)| n),
            Some(0)
        );
        let mut out = Vec::new();
        awaiting.release_all(&mut out);
        assert_eq!(out.len(), MAX_AWAITING);
        assert_eq!(items(&out).first(), Some(&1));
        assert_eq!(items(&out).last(), Some(&MAX_AWAITING));
    }
}
