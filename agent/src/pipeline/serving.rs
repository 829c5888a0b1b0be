//! Which request a process is working for when it calls out: the server requests each
//! process has in flight, and what each of its threads last read.
//!
//! A thread-per-request server calls out on the thread that read the request. An event
//! loop (Node, nginx) serves every request on one thread, and runs each piece of a
//! handler right after the read that woke it: the request itself, or the response of a
//! call the handler awaited. So the request a thread last read for, directly or through
//! the response of one of that request's calls, is the one a call written next belongs
//! to. A response counts only on the thread that read its request: a client's own I/O
//! thread reads the responses of every request's calls and says nothing by it. The
//! answer of a call on a connection loupe does not parse (a database's) counts the same
//! way, matched to the request that wrote the call (see `opaque_calls`). Only a handler
//! woken by something loupe does not see (a timer) is placed by a guess: the most recent
//! request still in flight.

use std::{collections::VecDeque, rc::Rc};

use hashbrown::HashMap;
use loupe_common::ConnKey;

use super::linking::{NodeRef, Parent, RequestKey};
use super::opaque_calls::{Answer, OpaqueCalls};
use crate::span::SpanId;

/// Threads whose last read is remembered; past this, reads of further threads are not.
const MAX_THREADS: usize = 65_536;

struct InFlight {
    key: RequestKey,
    tid: u32,
    node: NodeRef,
}

/// What a thread's read was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFor {
    /// A server request of the process: its head or its body.
    Request(RequestKey),
    /// The response to a client request of the process.
    Response(RequestKey),
}

#[derive(Default)]
struct Process {
    /// In the order the requests started. Requests mostly end in about that order, so an
    /// ended one is looked for from the front and taken out where the deque is shorter;
    /// lookups for a thread's latest read start from the back.
    requests: VecDeque<InFlight>,
    /// It calls out on connections loupe does not parse: whether it serves several
    /// requests on one thread matters (see [`Serving::take_event_loops`]). Only such a
    /// process has each start checked for that.
    calls_unparsed: bool,
    /// It was seen serving several requests on one thread.
    event_loop: bool,
}

impl Process {
    fn several_on_thread(&self, tid: u32) -> bool {
        self.requests
            .iter()
            .rev()
            .filter(|f| f.tid == tid)
            .nth(1)
            .is_some()
    }

    /// Marks it an event loop when it calls out unparsed and `tid` serves several
    /// requests; true the first time.
    fn found_event_loop(&mut self, tid: u32) -> bool {
        let found = self.calls_unparsed && !self.event_loop && self.several_on_thread(tid);
        self.event_loop |= found;
        found
    }
}

#[derive(Default)]
pub struct Serving {
    /// By tgid: the server requests in flight, and what is known of the process.
    in_flight: HashMap<u32, Process>,
    /// By (tgid, tid): the server request each thread last read for.
    last_read: HashMap<(u32, u32), RequestKey>,
    opaque: OpaqueCalls,
    /// Processes found to be event loops since [`Self::take_event_loops`].
    event_loops_found: Vec<u32>,
}

impl Serving {
    /// A server request of `key.tgid` was read on thread `tid`.
    pub fn start(&mut self, key: RequestKey, tid: u32, node: &NodeRef) {
        let process = self.in_flight.entry(key.tgid).or_default();
        process.requests.push_back(InFlight {
            key,
            tid,
            node: node.clone(),
        });
        if process.found_event_loop(tid) {
            self.event_loops_found.push(key.tgid);
        }
    }

    /// Processes found since the last call to serve several requests on one thread
    /// while they call out on connections loupe does not parse: their uncaptured calls
    /// are worth reporting (see `opaque_calls`).
    pub fn take_event_loops(&mut self) -> Option<std::vec::Drain<'_, u32>> {
        (!self.event_loops_found.is_empty()).then(|| self.event_loops_found.drain(..))
    }

    /// The server request `key` was answered (or given up). An emptied list stays until
    /// [`Self::expire`]: a server that answers each request before reading the next would
    /// otherwise allocate and free its list once per request.
    pub fn finish(&mut self, key: &RequestKey) {
        if let Some(process) = self.in_flight.get_mut(&key.tgid)
            && let Some(at) = process.requests.iter().position(|f| f.key == *key)
        {
            process.requests.remove(at);
        }
    }

    /// Thread `tid` of `tgid` read bytes `read`. `nodes` finds a request's node while it is
    /// in flight.
    pub fn on_read(
        &mut self,
        tgid: u32,
        tid: u32,
        read: ReadFor,
        nodes: impl Fn(&RequestKey) -> Option<NodeRef>,
    ) {
        let cause = match read {
            // Checked when used: [`Self::serving`] takes it only while it is in flight.
            ReadFor::Request(key) => Some(key),
            // The response wakes the handler of the request that made the call, when the
            // thread that reads it is the one that read that request (an event loop). A
            // client's own I/O thread reads the responses of every request's calls.
            // A call sent in a trace of its own links to the request it was made for.
            ReadFor::Response(key) => nodes(&key).and_then(|call| {
                let call = call.borrow();
                let server = match (&call.parent, &call.link) {
                    (Parent::Local(server), _) | (_, Some(server)) => server,
                    _ => return None,
                };
                self.find(tgid, |f| f.tid == tid && Rc::ptr_eq(&f.node, server))
                    .map(|f| f.key)
            }),
        };
        self.read_for(tgid, tid, cause);
    }

    /// Thread `tid` of `tgid` read for server request `cause`; `None`: for nothing in
    /// flight here (a call made outside any request), which wakes a handler that serves
    /// none.
    fn read_for(&mut self, tgid: u32, tid: u32, cause: Option<RequestKey>) {
        match cause {
            Some(cause) => {
                if let Some(slot) = self.last_read.get_mut(&(tgid, tid)) {
                    *slot = cause;
                } else if self.last_read.len() < MAX_THREADS {
                    self.last_read.insert((tgid, tid), cause);
                }
            }
            None => {
                self.last_read.remove(&(tgid, tid));
            }
        }
    }

    /// Thread `tid` wrote a call on connection `key` (`conn_id`), which loupe does not
    /// parse. `hint`, given for the connection's first call, is the request its process
    /// was serving when it opened the connection: the better witness for that call, as
    /// for HTTP (see `Linker::client_start`).
    pub fn on_opaque_write(
        &mut self,
        key: ConnKey,
        conn_id: u64,
        tid: u32,
        hint: Option<&NodeRef>,
    ) {
        let hinted = hint.and_then(|hint| self.find(key.tgid, |f| Rc::ptr_eq(&f.node, hint)));
        let request = hinted
            .or_else(|| self.serving_entry(key.tgid, tid))
            .map(|f| f.key);
        self.opaque.on_write(key, conn_id, tid, request);
        let process = self.in_flight.entry(key.tgid).or_default();
        process.calls_unparsed = true;
        if process.found_event_loop(tid) {
            self.event_loops_found.push(key.tgid);
        }
    }

    /// Thread `tid` read on connection `key` (`conn_id`), which loupe does not parse:
    /// the answer, when it answered a call the thread wrote, and so woke the handler of
    /// that call's request (or of none).
    pub fn on_opaque_read(&mut self, key: ConnKey, conn_id: u64, tid: u32) -> Option<Answer> {
        let in_flight = &self.in_flight;
        let answered = self.opaque.on_read(key, conn_id, tid, |request| {
            is_in_flight(in_flight, request)
        });
        if let Some(answer) = answered {
            self.read_for(key.tgid, tid, answer.request);
        }
        answered
    }

    /// The connection `key` ended.
    pub fn forget_opaque(&mut self, key: &ConnKey) {
        self.opaque.forget_connection(key);
    }

    /// The request of `tgid` in flight that `wanted` picks, the latest first.
    fn find(&self, tgid: u32, wanted: impl Fn(&InFlight) -> bool) -> Option<&InFlight> {
        self.in_flight
            .get(&tgid)?
            .requests
            .iter()
            .rev()
            .find(|f| wanted(f))
    }

    /// The request `tgid` is most likely serving on thread `tid`: the one the thread last
    /// read for while it is in flight, else the latest it is serving on that thread, else
    /// the only one in flight.
    pub fn serving(&self, tgid: u32, tid: u32) -> Option<NodeRef> {
        self.serving_entry(tgid, tid).map(|f| f.node.clone())
    }

    fn serving_entry(&self, tgid: u32, tid: u32) -> Option<&InFlight> {
        let list = &self.in_flight.get(&tgid)?.requests;
        let read_for = self.last_read.get(&(tgid, tid));
        read_for
            .and_then(|key| list.iter().rev().find(|f| f.key == *key))
            .or_else(|| list.iter().rev().find(|f| f.tid == tid))
            .or_else(|| (list.len() == 1).then(|| &list[0]))
    }

    /// The request of `tgid` in flight whose span has id `span_id`.
    pub fn with_span_id(&self, tgid: u32, span_id: SpanId) -> Option<NodeRef> {
        self.find(tgid, |f| f.node.borrow().span_id == span_id)
            .map(|f| f.node.clone())
    }

    /// Whether `tgid` had several requests in flight on thread `tid`: a call then goes to
    /// the one the thread last read for, which is a guess when a timer woke the handler.
    pub fn several_on_thread(&self, tgid: u32, tid: u32) -> bool {
        self.in_flight
            .get(&tgid)
            .is_some_and(|p| p.several_on_thread(tid))
    }

    pub fn any(&self, tgid: u32) -> bool {
        self.in_flight
            .get(&tgid)
            .is_some_and(|p| !p.requests.is_empty())
    }

    pub fn still_in_flight(&self, tgid: u32, node: &NodeRef) -> bool {
        self.find(tgid, |f| Rc::ptr_eq(&f.node, node)).is_some()
    }

    /// Forgets the reads of requests no longer in flight, and the emptied lists of
    /// processes that never called out unparsed.
    pub fn expire(&mut self) {
        self.in_flight
            .retain(|_, p| !p.requests.is_empty() || p.calls_unparsed);
        let in_flight = |key: &RequestKey| is_in_flight(&self.in_flight, key);
        self.last_read.retain(|_, key| in_flight(key));
        self.opaque.expire(in_flight);
    }

    /// Forgets processes with nothing in flight that `alive` says have exited: a process
    /// that calls out unparsed is kept while idle, and may have closed every connection
    /// before it exited, leaving nothing else to tell of its end.
    pub fn forget_dead(&mut self, alive: impl Fn(u32) -> bool) {
        // Only those are kept idle (see `expire`): no one else's end needs a syscall.
        self.in_flight
            .retain(|&tgid, p| !p.requests.is_empty() || !p.calls_unparsed || alive(tgid));
    }

    /// `tgid` runs another program (exec): what was learnt of the old one no longer holds.
    pub fn forget_program(&mut self, tgid: u32) {
        if let Some(process) = self.in_flight.get_mut(&tgid) {
            process.calls_unparsed = false;
            process.event_loop = false;
        }
    }

    pub fn forget_process(&mut self, tgid: u32) {
        self.in_flight.remove(&tgid);
        self.last_read.retain(|(t, _), _| *t != tgid);
        self.opaque.forget_process(tgid);
    }

    /// Processes with a list of requests in flight, empty or not.
    #[cfg(test)]
    pub fn processes(&self) -> usize {
        self.in_flight.len()
    }

    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize) {
        (
            self.in_flight.values().map(|p| p.requests.len()).sum(),
            self.last_read.len(),
        )
    }

    #[cfg(test)]
    pub fn opaque_connections(&self) -> usize {
        self.opaque.len()
    }
}

/// Whether the server request `key` is in flight.
fn is_in_flight(in_flight: &HashMap<u32, Process>, key: &RequestKey) -> bool {
    in_flight
        .get(&key.tgid)
        .is_some_and(|p| p.requests.iter().any(|f| f.key == *key))
}

#[cfg(test)]
#[path = "serving_tests.rs"]
mod tests;
