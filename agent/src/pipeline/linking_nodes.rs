//! The nodes linking builds: each request's span id and parent, and the ids a span
//! resolves to when it is exported (see `linking`).

use std::{cell::RefCell, rc::Rc};

use crate::span::{SpanId, SpanLink, TraceId, context::new_trace_id};

pub type NodeRef = Rc<RefCell<SpanNode>>;

/// Parent chains longer than this are cut (and would only come from a loop).
pub(in crate::pipeline) const MAX_DEPTH: usize = 64;

#[derive(Debug)]
pub struct SpanNode {
    pub span_id: SpanId,
    pub parent: Parent,
    pub trace_flags: u8,
    pub trace_state: Option<String>,
    /// For a client request: when the server span it caused started, once loupe linked
    /// that span to it; 0 before. A client span never starts later (see
    /// [`ResolvedIds::server_start_ns`]).
    pub server_start_ns: u64,
    /// For a client request: when it read the last byte of its response, once its span
    /// is made; 0 before, and for a client that gave up. A server span it caused and
    /// made after it ends no later (see [`ResolvedIds::caller_end_ns`]).
    pub client_end_ns: u64,
    /// For a client request: when the server span it caused ended, when that span was
    /// made first (its write's record reached the ring buffer before the client's read's)
    /// and the exchange completed; 0 otherwise. A client span that read the whole
    /// response ends no earlier (see [`ResolvedIds::callee_end_ns`]).
    pub server_end_ns: u64,
    /// For a server request: it had no parent when its head was read, although loupe
    /// traces the client at the other end, whose request record may still be on its way
    /// (see `awaiting_client`). Cleared when its span goes out without that client.
    pub awaits_client: bool,
    /// For a client request the kernel sent in a trace of its own while its thread served
    /// a request: that request, which its span links to but cannot be under.
    pub link: Option<NodeRef>,
}

impl SpanNode {
    pub fn new(
        span_id: SpanId,
        parent: Parent,
        trace_flags: u8,
        trace_state: Option<String>,
    ) -> Self {
        Self {
            span_id,
            parent,
            trace_flags,
            trace_state,
            server_start_ns: 0,
            client_end_ns: 0,
            server_end_ns: 0,
            awaits_client: false,
            link: None,
        }
    }

    /// Whether no parent has been found for it (yet): it starts its trace.
    pub fn starts_trace(&self) -> bool {
        matches!(self.parent, Parent::Root(_))
    }

    /// A server request that still starts its trace while its client's record may come.
    pub fn still_awaits_client(&self) -> bool {
        self.awaits_client && self.starts_trace()
    }
}

#[derive(Debug, Clone)]
pub enum Parent {
    /// The span starts a trace.
    Root(TraceId),
    /// The parent is in a process loupe does not see, named by a request header.
    Remote { trace_id: TraceId, span_id: SpanId },
    /// The parent is another span loupe builds.
    Local(NodeRef),
}

/// Ids ready to put on a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// The flags of the trace's first span on this node, so every span of a trace carries
    /// the same sampling decision.
    pub trace_flags: u8,
    pub trace_state: Option<String>,
    /// The trace came in from a caller loupe does not see (its flags are the caller's).
    pub root_is_remote: bool,
    /// For a client span: when the server span it caused started, or 0. A request goes out
    /// before its server reads it, but the time a client write carries can fall a little
    /// after that (the bytes' send time read at the write's return, or the return itself),
    /// so a client span starts no later than this.
    pub server_start_ns: u64,
    /// For a server span under a client span loupe made already: when that client read
    /// the last byte of the whole response, or 0. On another CPU that read can return
    /// before the server's write does, so a server span ends no later than this.
    pub caller_end_ns: u64,
    /// For a client span: when the server span it caused ended, when that span was made
    /// first, or 0. The same race seen from the other side: the server span went out
    /// already, so the client span, which read the whole response, ends no earlier.
    pub callee_end_ns: u64,
    /// The trace and span of the request a span links to (see [`SpanNode::link`]).
    pub link: Option<SpanLink>,
}

/// Ids the kernel already chose for a span (traceparent injection), which the span must
/// use because they went over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_flags: u8,
}

impl ResolvedIds {
    /// A client span's start: `sent_ns`, the time its first write carried, or the start
    /// of the server span it caused when that came first (see [`Self::server_start_ns`]).
    pub fn client_start_ns(&self, sent_ns: u64) -> u64 {
        match self.server_start_ns {
            0 => sent_ns,
            server_start_ns => sent_ns.min(server_start_ns),
        }
    }

    /// A client span's end, when it read the whole response: `ended_ns`, or the end of
    /// the server span it caused when that was made first and ended later (see
    /// [`Self::callee_end_ns`]).
    pub fn client_end_ns(&self, ended_ns: u64) -> u64 {
        ended_ns.max(self.callee_end_ns)
    }

    /// A server span's end: `ended_ns`, or the end of the client span above it when
    /// that came first, though not before `start_ns` (see [`Self::caller_end_ns`]).
    pub fn server_end_ns(&self, start_ns: u64, ended_ns: u64) -> u64 {
        match self.caller_end_ns {
            0 => ended_ns,
            caller_end_ns => ended_ns.min(caller_end_ns.max(start_ns)),
        }
    }
}

pub fn resolve(node: &NodeRef) -> ResolvedIds {
    let this = node.borrow();
    let (parent_span_id, caller_end_ns) = match &this.parent {
        Parent::Root(_) => (None, 0),
        Parent::Remote { span_id, .. } => (Some(*span_id), 0),
        Parent::Local(parent) => {
            let parent = parent.borrow();
            (Some(parent.span_id), parent.client_end_ns)
        }
    };
    let mut trace_id = TraceId::default();
    let mut trace_flags = this.trace_flags;
    let mut root_is_remote = false;
    let mut current = node.clone();
    for _ in 0..MAX_DEPTH {
        let next = match &current.borrow().parent {
            Parent::Root(t) | Parent::Remote { trace_id: t, .. } => {
                trace_id = *t;
                trace_flags = current.borrow().trace_flags;
                root_is_remote = matches!(current.borrow().parent, Parent::Remote { .. });
                None
            }
            Parent::Local(parent) => Some(parent.clone()),
        };
        match next {
            Some(parent) => current = parent,
            None => break,
        }
    }
    if trace_id == TraceId::default() {
        // Only a loop gets here: give the span a trace of its own rather than none.
        trace_id = new_trace_id();
    }
    let link = this.link.as_ref().map(|linked| {
        let linked = resolve(linked);
        SpanLink {
            trace_id: linked.trace_id,
            span_id: linked.span_id,
        }
    });
    ResolvedIds {
        trace_id,
        span_id: this.span_id,
        parent_span_id,
        trace_flags,
        trace_state: this.trace_state.clone(),
        root_is_remote,
        server_start_ns: this.server_start_ns,
        caller_end_ns,
        callee_end_ns: this.server_end_ns,
        link,
    }
}
