//! Calls a process makes on connections loupe does not parse (a database's, a cache's,
//! TLS): which server request each was written for, so that the read of its answer says
//! which request's handler it woke.
//!
//! An event loop runs a handler's next piece right after the read that woke it. When a
//! handler awaited a database, that read is the database's answer, on a connection whose
//! bytes loupe cannot read (the kernel sends only that the call happened, see
//! `data_flags::UNCAPTURED`). Without it, the handler's next call would be placed under
//! whichever request the loop read last. A connection from a pool carries one call at a
//! time, and its answer is certain. One that carries several calls at once (pipelined,
//! as Redis clients do) is matched first in, first out, one answer per read: a guess,
//! wrong when one read brings several answers or a multiplexed protocol answers out of
//! order, so such answers are told apart ([`Answer::by_order`]) and counted.

use std::collections::VecDeque;

use hashbrown::HashMap;
use loupe_common::ConnKey;

use super::linking::RequestKey;

/// Calls awaiting their answers on one connection; past this, the oldest is forgotten
/// (a connection written on and never answered: a log shipper's).
const MAX_WAITING_PER_CONNECTION: usize = 16;
/// Connections followed; past this, calls on further connections are not.
const MAX_CONNECTIONS: usize = 65_536;

/// One call: the thread that wrote it, and the server request that thread was serving
/// (`None`: none, a pool's own ping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    tid: u32,
    request: Option<RequestKey>,
}

struct Connection {
    conn_id: u64,
    /// Written and not yet answered, oldest first.
    waiting: VecDeque<Written>,
    /// The call whose answer is being read: reads until the next write continue it.
    answering: Option<Written>,
    /// The last call on the connection was a write: a call written in several writes
    /// waits once.
    writing: bool,
}

/// What a read on a followed connection told of the thread that read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The request whose call it answers; `None`: a call made outside any request.
    pub request: Option<RequestKey>,
    /// The read took that call off the calls waiting: the answer's first read, not a
    /// further one of the same answer.
    pub first_read: bool,
    /// Other calls waited behind that one: matched by order alone.
    pub by_order: bool,
}

#[derive(Default)]
pub struct OpaqueCalls {
    by_connection: HashMap<ConnKey, Connection>,
}

impl OpaqueCalls {
    /// Thread `tid` wrote on connection `key` (`conn_id`) while serving `request`.
    pub fn on_write(&mut self, key: ConnKey, conn_id: u64, tid: u32, request: Option<RequestKey>) {
        let Some(conn) = self.connection(key, conn_id) else {
            return;
        };
        let written = Written { tid, request };
        if conn.writing && conn.waiting.back() == Some(&written) {
            return;
        }
        if conn.waiting.len() == MAX_WAITING_PER_CONNECTION {
            conn.waiting.pop_front();
        }
        conn.waiting.push_back(written);
        conn.writing = true;
    }

    /// Thread `tid` read on connection `key` (`conn_id`): the answer, `None` when the
    /// read says nothing of the thread (a call it did not write, or none seen). A call
    /// whose request `in_flight` says has ended is passed over while a later one waits:
    /// its answer came with an earlier read, or never (nothing was awaited).
    pub fn on_read(
        &mut self,
        key: ConnKey,
        conn_id: u64,
        tid: u32,
        in_flight: impl Fn(&RequestKey) -> bool,
    ) -> Option<Answer> {
        let conn = self
            .by_connection
            .get_mut(&key)
            .filter(|c| c.conn_id == conn_id)?;
        conn.writing = false;
        while conn.waiting.len() > 1
            && conn.waiting[0]
                .request
                .is_some_and(|request| !in_flight(&request))
        {
            conn.waiting.pop_front();
        }
        // With nothing waiting, the read continues the answer being read.
        let by_order = conn.waiting.len() > 1;
        let next = conn.waiting.pop_front();
        if next.is_some() {
            conn.answering = next;
        }
        conn.answering
            .filter(|answering| answering.tid == tid)
            .map(|answering| Answer {
                request: answering.request,
                first_read: next.is_some(),
                by_order,
            })
    }

    fn connection(&mut self, key: ConnKey, conn_id: u64) -> Option<&mut Connection> {
        let full = self.by_connection.len() >= MAX_CONNECTIONS;
        let fresh = || Connection {
            conn_id,
            waiting: VecDeque::new(),
            answering: None,
            writing: false,
        };
        match self.by_connection.entry(key) {
            hashbrown::hash_map::Entry::Occupied(entry) => {
                let conn = entry.into_mut();
                if conn.conn_id != conn_id {
                    *conn = fresh();
                }
                Some(conn)
            }
            hashbrown::hash_map::Entry::Vacant(_) if full => None,
            hashbrown::hash_map::Entry::Vacant(entry) => Some(entry.insert(fresh())),
        }
    }

    /// Whether calls on connection `key` (`conn_id`) are followed yet.
    #[cfg(test)]
    pub fn knows(&self, key: &ConnKey, conn_id: u64) -> bool {
        self.by_connection
            .get(key)
            .is_some_and(|c| c.conn_id == conn_id)
    }

    /// The connection `key` ended.
    pub fn forget_connection(&mut self, key: &ConnKey) {
        self.by_connection.remove(key);
    }

    pub fn forget_process(&mut self, tgid: u32) {
        self.by_connection.retain(|key, _| key.tgid != tgid);
    }

    /// Forgets the calls of requests no longer in flight that nothing answered, and
    /// connections left with nothing to follow.
    pub fn expire(&mut self, in_flight: impl Fn(&RequestKey) -> bool) {
        let live = |w: &Written| w.request.is_some_and(|r| in_flight(&r));
        self.by_connection.retain(|_, conn| {
            conn.waiting.retain(live);
            if !conn.answering.as_ref().is_some_and(live) {
                conn.answering = None;
            }
            !conn.waiting.is_empty() || conn.answering.is_some()
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_connection.len()
    }
}

#[cfg(test)]
#[path = "opaque_calls_tests.rs"]
mod tests;
