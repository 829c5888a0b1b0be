//! Which request's context a socket's write carries, and what the socket keeps of it for
//! the thread that reads the answer (see `context::resume_context`).

use loupe_common::ThreadContext;

use super::SocketInjectState;
use crate::{
    context::{is_live, process_context},
    filter::{is_marked, traced_current},
    maps::{EVENT_LOOP_TGIDS, INJECTED_CONTEXTS, THREAD_CONTEXT},
};

/// Forgets the context the socket `cookie`'s previous request carried.
#[inline(always)]
pub(super) fn forget_context(cookie: u64) {
    if cookie != 0 {
        let _ = INJECTED_CONTEXTS.remove(&cookie);
    }
}

/// A write on the socket `cookie`, which carries no HTTP (a database, a cache): when
/// the writer is an event loop, the handler that wrote it resumes when the answer comes,
/// so the socket keeps the thread's context for that read to give back (see
/// `context::resume_context`). A call made outside any request keeps a context without a
/// span, which takes the thread's away. Calls pipelined by several requests keep the
/// last one's.
#[inline(always)]
pub(super) fn remember_call_context(state: *mut SocketInjectState, first: bool, cookie: u64) {
    if cookie == 0 {
        return;
    }
    let Some((tgid, tid, _, _)) = traced_current() else {
        return;
    };
    if !is_marked(&EVENT_LOOP_TGIDS, tgid) {
        return;
    }
    match call_context(state, first, tgid, tid) {
        // SAFETY: a map value or this socket's storage, valid for this program run.
        Some(context) => {
            let _ = INJECTED_CONTEXTS.insert(&cookie, unsafe { &*context }, 0);
        }
        None => {
            let outside = ThreadContext {
                tid,
                ..ThreadContext::default()
            };
            let _ = INJECTED_CONTEXTS.insert(&cookie, &outside, 0);
        }
    }
}

/// The context thread `tid`'s write on the socket (`state`) carries: for the socket's
/// `first` write, when by the thread that connected it, the request that thread was serving
/// when it connected, while that request is in flight; else the thread's current one,
/// while in flight; else, for a thread serving none, its process `tgid`'s only request
/// in flight.
/// An event loop connects in the turn of the handler that needs the connection but
/// writes once connected, after reading other requests.
#[inline(always)]
pub(super) fn call_context(
    state: *mut SocketInjectState,
    first: bool,
    tgid: u32,
    tid: u32,
) -> Option<*const ThreadContext> {
    if first {
        // SAFETY (both): this socket's storage, serialised by the socket lock; the
        // opener is read in place.
        let opener = unsafe { &raw const (*state).opener };
        if unsafe { (*opener).tid } == tid && is_live(unsafe { &*opener }) {
            return Some(opener);
        }
    }
    // A thread can keep the context of a request another thread answered (Go runs a
    // handler's goroutines on any thread): only a request still in flight counts, where
    // its socket is known.
    THREAD_CONTEXT
        .get_ptr(&tid)
        // SAFETY: a map value, valid for this program run.
        .filter(|&context| unsafe { (*context).server_sock == 0 || is_live(&*context) })
        .or_else(|| process_context(tgid, tid))
}
