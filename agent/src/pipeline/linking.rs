//! Trace linking: which span is whose parent, so that one request's spans across every
//! service it crossed form one trace.
//!
//! Every request gets its span identity when its head is seen, not when its exchange
//! completes, because the spans it causes (its handler's outgoing calls) start and often
//! finish while it is still in flight. Parents are kept as links between nodes and
//! resolved to trace ids only when a span is exported, so a link found late (the server
//! side of a connection seen before its client side) still repairs the whole subtree.
//!
//! How a parent is chosen:
//! - A server request that carries trace context (W3C, B3, Jaeger) continues it: under
//!   the client span it names, when loupe made that span at the other end of the
//!   connection, else under the remote span.
//! - Otherwise, when loupe traces the client at the other end of the same TCP connection
//!   (the mirrored 4-tuple), the server span is that client span's child, request by
//!   request in order on keep-alive connections, whichever side is seen first.
//! - A client request that already carries `traceparent` was written by an instrumented
//!   process: its span keeps those ids.
//! - A client request the kernel wrote `traceparent` into (`--inject-traceparent`) keeps
//!   those ids too: under the request they name, or, when the kernel started a trace,
//!   at the root of that trace, which the server it calls continues, with a span link to
//!   the request its thread served.
//! - Otherwise a client request is the child of the server request its thread last read
//!   for: the request itself, or the response of one of its calls (see `serving`). That
//!   is the request it serves on its thread (thread-per-request servers), and on an event
//!   loop (Node, nginx) the request whose handler the read woke. Failing that, the only
//!   request in flight, or the most recent: a guess when several requests are in flight
//!   on one event loop and a handler woken by a timer calls out.

use std::{cell::RefCell, collections::VecDeque, rc::Rc};

use hashbrown::HashMap;

use super::connections::Ends;
use super::serving::{ReadFor, Serving};
use crate::span::{SpanContext, SpanId, TraceId, context::new_span_id, context::new_trace_id};
pub(super) use nodes::MAX_DEPTH;
pub use nodes::{KernelIds, NodeRef, Parent, ResolvedIds, SpanNode, resolve};

/// A request whose exchange has ended waits this long for its other side, which may still
/// be on its way through the ring buffer; one still in flight waits as long as it is.
const PEER_WAIT_NS: u64 = 5_000_000_000;
/// Requests whose exchange never completed are forgotten this long after they started:
/// the time the pipeline lets a connection whose request awaits its response stay quiet.
/// A response still streaming after that long ends a span of a trace of its own.
const REQUEST_TTL_NS: u64 = super::housekeeping::IN_FLIGHT_TIMEOUT.as_nanos() as u64;
/// Bounds on the linking tables.
const MAX_QUEUE_PER_CONNECTION: usize = 64;
const MAX_CONNECTION_QUEUES: usize = 65_536;
const MAX_REQUESTS: usize = 262_144;
const SAMPLED: u8 = 0x01;

/// One request of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub tgid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub request_id: u64,
}

/// A connection seen from its client.
type PeerKey = Ends;

struct Waiting {
    key: RequestKey,
    node: NodeRef,
    ts_ns: u64,
}

impl Waiting {
    /// Whether the other side seen at `now_ns` can still be this request's. While its
    /// exchange is in flight, always: a request can sit in a busy server's accept queue or
    /// socket buffer for many seconds before the server reads it, and until its response
    /// comes nothing else can be read on that connection. Once the exchange has ended (a
    /// client that gave up, a lost record), only for `PEER_WAIT_NS`, after which the same
    /// addresses more likely name a later connection.
    fn can_meet(&self, now_ns: u64, requests: &HashMap<RequestKey, (NodeRef, u64)>) -> bool {
        now_ns.saturating_sub(self.ts_ns) <= PEER_WAIT_NS || requests.contains_key(&self.key)
    }
}

/// What a client request's parent turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPlacement {
    /// Under a server request of its own process.
    UnderServer,
    /// Under one of several requests in flight on one thread (an event loop): the one the
    /// thread last read for, else the most recent; wrong when a timer woke the handler.
    Guessed,
    /// The process set its own context (instrumented) or the kernel injected one.
    OwnContext,
    /// The kernel sent it in a trace of its own while its thread served a request: it
    /// starts the trace the server that reads it continues, with a link to that request.
    LinkedToServer,
    /// Not placed although its process was serving requests.
    Unplaced,
    /// Its process was serving nothing: a trace of its own is right.
    Standalone,
}

#[derive(Default)]
pub struct Linker {
    requests: HashMap<RequestKey, (NodeRef, u64)>,
    serving: Serving,
    clients: HashMap<PeerKey, VecDeque<Waiting>>,
    servers: HashMap<PeerKey, VecDeque<Waiting>>,
    /// Requests in flight the full tables could not keep, since [`Self::take_dropped`].
    dropped: u64,
}

/// Queues `waiting`; how many requests still in flight lost their place (the new one,
/// when there is no room for its connection's queue, or the queue's oldest). Ended
/// requests that are pushed out were only waiting for records on their way.
fn push_bounded(
    map: &mut HashMap<PeerKey, VecDeque<Waiting>>,
    key: PeerKey,
    waiting: Waiting,
    requests: &HashMap<RequestKey, (NodeRef, u64)>,
) -> u64 {
    if map.len() >= MAX_CONNECTION_QUEUES && !map.contains_key(&key) {
        return 1;
    }
    let queue = map.entry(key).or_default();
    let mut dropped = 0;
    if queue.len() >= MAX_QUEUE_PER_CONNECTION
        && let Some(oldest) = queue.pop_front()
        && requests.contains_key(&oldest.key)
    {
        dropped = 1;
    }
    queue.push_back(waiting);
    dropped
}

/// The oldest request waiting under `key` that can still meet its other side seen at
/// `now_ns`, and when it was seen; older ones that cannot are dropped.
fn pop_fresh(
    map: &mut HashMap<PeerKey, VecDeque<Waiting>>,
    key: &PeerKey,
    now_ns: u64,
    requests: &HashMap<RequestKey, (NodeRef, u64)>,
) -> Option<(NodeRef, u64)> {
    let queue = map.get_mut(key)?;
    let mut found = None;
    while let Some(waiting) = queue.pop_front() {
        if waiting.can_meet(now_ns, requests) {
            found = Some((waiting.node, waiting.ts_ns));
            break;
        }
    }
    if queue.is_empty() {
        map.remove(key);
    }
    found
}

impl Linker {
    fn remember(&mut self, key: RequestKey, node: &NodeRef, ts_ns: u64) {
        if self.requests.len() < MAX_REQUESTS || self.requests.contains_key(&key) {
            self.requests.insert(key, (node.clone(), ts_ns));
        } else {
            self.dropped += 1;
        }
    }

    /// Requests in flight the linker's full tables could not keep since the last call:
    /// their spans may start traces of their own.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// A traced process read a request head.
    pub fn server_start(
        &mut self,
        key: RequestKey,
        tid: u32,
        ts_ns: u64,
        peers: Option<Ends>,
        header: Option<SpanContext>,
        kernel: Option<KernelIds>,
    ) -> NodeRef {
        // Seen from the client.
        let peer_key = peers.map(Ends::mirrored);
        let client = peer_key
            .and_then(|k| pop_fresh(&mut self.clients, &k, ts_ns, &self.requests))
            .map(|(client, _)| client);
        if let Some(client) = &client {
            client.borrow_mut().server_start_ns = ts_ns;
        }
        let met_client = client.is_some();
        // The context on the wire names the parent; when that is the client span loupe
        // made at the other end of the connection, the parent is that span itself, whose
        // end bounds this one's (see `ResolvedIds::server_end_ns`).
        let named = |span_id: SpanId, trace_id: TraceId| match &client {
            Some(client) if client.borrow().span_id == span_id => Parent::Local(client.clone()),
            _ => Parent::Remote { trace_id, span_id },
        };
        let mut node = match (kernel, header, &client) {
            (Some(ids), _, _) => SpanNode::new(
                ids.span_id,
                match ids.parent_span_id {
                    Some(span_id) => named(span_id, ids.trace_id),
                    None => Parent::Root(ids.trace_id),
                },
                ids.trace_flags,
                None,
            ),
            (None, Some(ctx), _) => SpanNode::new(
                new_span_id(),
                named(ctx.span_id, ctx.trace_id),
                ctx.trace_flags,
                ctx.trace_state,
            ),
            (None, None, Some(client)) => {
                let flags = client.borrow().trace_flags;
                SpanNode::new(new_span_id(), Parent::Local(client.clone()), flags, None)
            }
            (None, None, None) => {
                SpanNode::new(new_span_id(), Parent::Root(new_trace_id()), SAMPLED, None)
            }
        };
        // Ids the kernel chose are on the wire in the calls it makes: the span keeps them.
        node.awaits_client =
            !met_client && peer_key.is_some() && kernel.is_none() && node.starts_trace();
        let node = Rc::new(RefCell::new(node));
        if !met_client && let Some(k) = peer_key {
            // The client's side may still be on its way: it adopts this span when it has
            // no parent yet, and learns when it started either way.
            let waiting = Waiting {
                key,
                node: node.clone(),
                ts_ns,
            };
            self.dropped += push_bounded(&mut self.servers, k, waiting, &self.requests);
        }
        self.remember(key, &node, ts_ns);
        self.serving.start(key, tid, &node);
        node
    }

    /// The request `tgid` is most likely serving on thread `tid` (see [`Serving::serving`]).
    pub fn serving(&self, tgid: u32, tid: u32) -> Option<NodeRef> {
        self.serving.serving(tgid, tid)
    }

    /// Thread `tid` of `tgid` read bytes for `read`: a call it writes next most likely
    /// belongs to the same server request.
    pub fn on_read(&mut self, tgid: u32, tid: u32, read: ReadFor) {
        let requests = &self.requests;
        self.serving.on_read(tgid, tid, read, |key| {
            requests.get(key).map(|(node, _)| node.clone())
        });
    }

    /// A traced process wrote a request head. `hint` is the request its process was
    /// serving when it opened this connection: an event loop connects in the same turn
    /// as the handler that needs the connection, but may write only after reading other
    /// requests, so for a connection's first request the hint is the better witness.
    #[allow(clippy::too_many_arguments)]
    pub fn client_start(
        &mut self,
        key: RequestKey,
        tid: u32,
        ts_ns: u64,
        peers: Option<Ends>,
        header: Option<SpanContext>,
        kernel: Option<KernelIds>,
        hint: Option<&NodeRef>,
    ) -> (NodeRef, ClientPlacement) {
        let hinted = hint
            .filter(|h| key.request_id == 0 && self.serving.still_in_flight(key.tgid, h))
            .cloned();
        let hinted_found = hinted.is_some();
        let under = hinted.or_else(|| self.serving(key.tgid, tid));
        let ambiguous = !hinted_found && self.serving.several_on_thread(key.tgid, tid);
        let was_serving = self.serving.any(key.tgid);
        let (node, placement) = match (kernel, header, under) {
            (Some(ids), _, under) => {
                // The request whose context the kernel wrote on the wire is the parent,
                // whichever the thread's reads suggest: the server that reads the header
                // continues that trace.
                let on_wire = ids
                    .parent_span_id
                    .and_then(|span_id| self.serving.with_span_id(key.tgid, span_id));
                let (parent, link) = match (on_wire, ids.parent_span_id, under) {
                    (Some(server), _, _) => (Parent::Local(server), None),
                    // A request no longer in flight: still the parent the wire names.
                    (None, Some(span_id), _) => (
                        Parent::Remote {
                            trace_id: ids.trace_id,
                            span_id,
                        },
                        None,
                    ),
                    // A trace the kernel started: the services below continue it, so the
                    // span starts it too, and links to the request its thread served.
                    (None, None, under) => (Parent::Root(ids.trace_id), under),
                };
                let placement = match link {
                    Some(_) => ClientPlacement::LinkedToServer,
                    None => ClientPlacement::OwnContext,
                };
                let mut node = SpanNode::new(ids.span_id, parent, ids.trace_flags, None);
                node.link = link;
                (node, placement)
            }
            (None, Some(ctx), _) => (
                // An instrumented process: the header's span id is its client span.
                SpanNode::new(
                    ctx.span_id,
                    Parent::Root(ctx.trace_id),
                    ctx.trace_flags,
                    ctx.trace_state,
                ),
                ClientPlacement::OwnContext,
            ),
            (None, None, Some(server)) => {
                let flags = server.borrow().trace_flags;
                (
                    SpanNode::new(new_span_id(), Parent::Local(server), flags, None),
                    if ambiguous {
                        ClientPlacement::Guessed
                    } else {
                        ClientPlacement::UnderServer
                    },
                )
            }
            (None, None, None) => (
                SpanNode::new(new_span_id(), Parent::Root(new_trace_id()), SAMPLED, None),
                if was_serving {
                    ClientPlacement::Unplaced
                } else {
                    ClientPlacement::Standalone
                },
            ),
        };
        let fresh_root = matches!(
            placement,
            ClientPlacement::Unplaced | ClientPlacement::Standalone
        );
        let node = Rc::new(RefCell::new(node));
        if let Some(peer_key) = peers {
            match pop_fresh(&mut self.servers, &peer_key, ts_ns, &self.requests) {
                // The server's side was seen first: it becomes this span's child now,
                // unless a header or the kernel already named its parent.
                Some((server, server_start_ns)) => {
                    let mut server = server.borrow_mut();
                    // A server span that went out alone (its wait ran out) keeps its trace
                    // for the spans it causes; a client starting a trace can still join it.
                    if let Parent::Root(server_trace) = server.parent
                        && (server.awaits_client || fresh_root)
                    {
                        if fresh_root {
                            // A client that starts a trace of its own takes the server's
                            // trace id: spans the server caused may have gone out with it
                            // already. Ids on the wire (an SDK's, the kernel's) stay.
                            let mut client = node.borrow_mut();
                            client.parent = Parent::Root(server_trace);
                            client.trace_flags = server.trace_flags;
                        }
                        server.parent = Parent::Local(node.clone());
                    } else if let Parent::Remote { span_id, .. } = server.parent
                        && span_id == node.borrow().span_id
                    {
                        // The wire named this span as the server's parent: it is.
                        server.parent = Parent::Local(node.clone());
                    }
                    node.borrow_mut().server_start_ns = server_start_ns;
                }
                None => {
                    let waiting = Waiting {
                        key,
                        node: node.clone(),
                        ts_ns,
                    };
                    self.dropped +=
                        push_bounded(&mut self.clients, peer_key, waiting, &self.requests);
                }
            }
        }
        self.remember(key, &node, ts_ns);
        (node, placement)
    }

    /// The exchange of `key` completed: its node, if its start was seen.
    pub fn finish(&mut self, key: &RequestKey) -> Option<NodeRef> {
        self.serving.finish(key);
        self.requests.remove(key).map(|(node, _)| node)
    }

    /// Drops what waited too long: peers that never showed up, requests never answered.
    pub fn expire(&mut self, now_ns: u64) {
        // Requests first: a peer waits as long as its request is in flight.
        let stale: Vec<RequestKey> = self
            .requests
            .iter()
            .filter(|(_, (_, ts))| now_ns.saturating_sub(*ts) > REQUEST_TTL_NS)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.finish(&key);
        }
        self.serving.expire();
        let requests = &self.requests;
        for map in [&mut self.clients, &mut self.servers] {
            map.retain(|_, queue| {
                queue.retain(|w| w.can_meet(now_ns, requests));
                !queue.is_empty()
            });
        }
    }

    /// Forgets every request of a process that exited.
    pub fn forget_process(&mut self, tgid: u32) {
        self.serving.forget_process(tgid);
        self.requests.retain(|k, _| k.tgid != tgid);
    }

    /// Server requests in flight and threads whose last read is remembered.
    #[cfg(test)]
    pub fn serving_sizes(&self) -> (usize, usize) {
        self.serving.sizes()
    }

    /// Connections whose unparsed calls are followed.
    #[cfg(test)]
    pub fn opaque_connections(&self) -> usize {
        self.serving.opaque_connections()
    }

    /// Processes the request-in-flight lists are kept for, empty or not.
    #[cfg(test)]
    pub fn serving_processes(&self) -> usize {
        self.serving.processes()
    }

    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.requests.len(),
            self.serving.sizes().0,
            self.clients.values().map(VecDeque::len).sum(),
            self.servers.values().map(VecDeque::len).sum(),
        )
    }
}

#[path = "linking_nodes.rs"]
mod nodes;
#[path = "linking_unparsed.rs"]
mod unparsed;

#[cfg(test)]
#[path = "linking_tests.rs"]
mod tests;
