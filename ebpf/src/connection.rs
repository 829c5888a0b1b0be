//! Connection lifecycle: accept, connect, close (and dup2/dup3 over a connection's fd), and
//! discovery of connections that were set up before loupe was watching.

use aya_ebpf::{
    helpers::generated::{self, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use loupe_common::{
    COMM_LEN, CachedConnection, CloseEvent, ConnEvent, ConnKey, ConnState, ConnTuple, EventKind,
    PendingCall, ProbeConfig, counter, ignored, role, syscall_kind,
};

use crate::{
    context::{end_in_flight, is_in_flight},
    emit::{output, reserve, submit},
    filter::{is_marked, traced_current},
    maps::{
        CONNECTION_CACHE, CONNECTIONS, EVENT_LOOP_TGIDS, IGNORE_REQUESTS, TRACED_PORTS, config,
        count,
    },
    pending,
    socket::{file_held_elsewhere, tcp_tuple},
    syscall::{arg, ret},
};

const EINPROGRESS: i64 = 115;

#[inline(always)]
fn port_selected(cfg: &ProbeConfig, local: u16, remote: u16) -> bool {
    if cfg.filter_ports == 0 {
        return true;
    }
    // SAFETY: values are only checked for presence.
    unsafe { TRACED_PORTS.get(&local).is_some() || TRACED_PORTS.get(&remote).is_some() }
}

/// Records `fd` as a TCP connection with `conn_role` when it is one, and tells the agent.
/// Returns the stored state, or `None` when the fd is not a TCP socket.
#[inline(always)]
pub fn register(
    tgid: u32,
    tid: u32,
    fd: u32,
    conn_role: u8,
    cfg: &ProbeConfig,
) -> Option<ConnState> {
    let (tuple, sock) = tcp_tuple(fd, &cfg.offsets)?;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let filtered_out = !port_selected(cfg, tuple.local_port, tuple.remote_port);
    let state = ConnState {
        conn_id: now,
        role: conn_role,
        ignored: if filtered_out {
            ignored::BY_PORT
        } else {
            ignored::NO
        },
        _pad: [0; 6],
        sock,
    };
    if !store(&ConnKey { tgid, fd }, &state) {
        count(counter::CONN_TABLE_FULL);
        return None;
    }
    if !filtered_out {
        announce(conn_role, tgid, tid, fd, now, &tuple);
    }
    Some(state)
}

/// Writes the open record of connection `conn_id` field by field into a reserved
/// ring-buffer slot, never whole on the stack: the read and write exits that discover
/// connections have little stack to spare.
#[inline(always)]
fn announce(conn_role: u8, tgid: u32, tid: u32, fd: u32, conn_id: u64, tuple: &ConnTuple) {
    let Some(mut slot) = reserve::<ConnEvent>() else {
        return;
    };
    let record = slot.as_mut_ptr();
    // SAFETY: the slot is this program's until it is submitted, and every field is written
    // before it is; the helper writes at most COMM_LEN bytes into the record's comm.
    unsafe {
        (*record).kind = EventKind::ConnOpen as u8;
        (*record).role = conn_role;
        (*record)._pad = [0; 2];
        (*record).tgid = tgid;
        (*record).tid = tid;
        (*record).fd = fd;
        (*record).conn_id = conn_id;
        (*record).ts_ns = conn_id;
        (*record).tuple = *tuple;
        generated::bpf_get_current_comm((*record).comm.as_mut_ptr().cast(), COMM_LEN as u32);
    }
    submit(slot);
}

/// The stored state of `key`: from the cache when its slot holds it, else from the table.
#[inline(always)]
fn stored(key: &ConnKey) -> Option<ConnState> {
    if let Some(state) = cached(key) {
        return Some(state);
    }
    // SAFETY: the value is copied out at once.
    unsafe { CONNECTIONS.get(key) }.copied()
}

/// [`stored`] for a read or write: a connection found only in the table takes its slot
/// back when the slot is empty (its evictor closed), so a long-lived connection evicted
/// once does not pay the table lookup on every call for the rest of its life. An
/// occupied slot is left alone: two busy connections sharing a slot would otherwise
/// evict each other on every call.
#[inline(always)]
fn stored_for_use(key: &ConnKey) -> Option<ConnState> {
    let slot = read_slot(key);
    if let Slot::Holds(state) = slot {
        return Some(state);
    }
    let state = from_table_applying_requests(key)?;
    count(counter::CONN_CACHE_MISSES);
    if let Slot::Empty = slot {
        cache_if_standing(key, &state);
    }
    Some(state)
}

/// `key`'s state in the table, after applying the agent's request to stop capturing it
/// (see [`IGNORE_REQUESTS`]). The connection id is read and the mark written through one
/// pointer to the table's element: a newer connection registered at the same key in the
/// meantime is a new element, never marked for its predecessor.
#[inline(always)]
fn from_table_applying_requests(key: &ConnKey) -> Option<ConnState> {
    let entry = CONNECTIONS.get_ptr_mut(key)?;
    // SAFETY: a map element, alive for this program's run (RCU); copied out at once.
    let mut state = unsafe { *entry };
    // SAFETY: the value is copied out at once.
    if let Some(&conn_id) = unsafe { IGNORE_REQUESTS.get(key) } {
        if conn_id == state.conn_id && state.ignored == ignored::NO {
            state.ignored = ignored::NOT_HTTP;
            // SAFETY: as above; one byte, which readers take whole.
            unsafe { core::ptr::write_volatile(&mut (*entry).ignored, ignored::NOT_HTTP) };
        }
        let _ = IGNORE_REQUESTS.remove(key);
    }
    Some(state)
}

/// What `key`'s cache slot holds, read once.
enum Slot {
    /// `key`'s state, whole.
    Holds(ConnState),
    /// No connection: never written, or emptied by a close or by the agent.
    Empty,
    /// Another connection, or a torn write.
    Other,
}

#[inline(always)]
fn read_slot(key: &ConnKey) -> Slot {
    let Some(slot) = CONNECTION_CACHE.get_ptr(CachedConnection::slot(key)) else {
        return Slot::Other;
    };
    // SAFETY: a map value that lives as long as the map; a torn read fails the check.
    let (cached_key, state, check) = unsafe {
        (
            core::ptr::read_volatile(&(*slot).key),
            core::ptr::read_volatile(&(*slot).state),
            core::ptr::read_volatile(&(*slot).check),
        )
    };
    if cached_key == *key && check == CachedConnection::check_of(key, &state) {
        Slot::Holds(state)
    } else if check == 0 {
        Slot::Empty
    } else {
        Slot::Other
    }
}

/// `key`'s state when its cache slot holds it whole.
#[inline(always)]
pub fn cached(key: &ConnKey) -> Option<ConnState> {
    match read_slot(key) {
        Slot::Holds(state) => Some(state),
        Slot::Empty | Slot::Other => None,
    }
}

/// Puts `key` in its cache slot, evicting whatever was there (it stays in its table).
#[inline(always)]
fn cache(key: &ConnKey, state: &ConnState) {
    let Some(slot) = CONNECTION_CACHE.get_ptr_mut(CachedConnection::slot(key)) else {
        return;
    };
    // SAFETY: a map value that lives as long as the map; readers check what they read.
    unsafe {
        core::ptr::write_volatile(&mut (*slot).key, *key);
        core::ptr::write_volatile(&mut (*slot).state, *state);
        core::ptr::write_volatile(&mut (*slot).check, CachedConnection::check_of(key, state));
    }
}

/// Empties `key`'s cache slot when it holds `key`.
#[inline(always)]
fn uncache(key: &ConnKey) {
    let Some(slot) = CONNECTION_CACHE.get_ptr_mut(CachedConnection::slot(key)) else {
        return;
    };
    // SAFETY: as in `cache`.
    unsafe {
        if (*slot).key == *key {
            core::ptr::write_volatile(&mut (*slot).check, 0);
        }
    }
}

/// Stores `state` in the table (replacing an entry of the key left by a close loupe
/// missed, which succeeds even in a full table) and in the key's cache slot; false when
/// the table is full, with the slot emptied of any stale entry of the key.
#[inline(always)]
fn store(key: &ConnKey, state: &ConnState) -> bool {
    if CONNECTIONS.insert(key, state, 0).is_err() {
        uncache(key);
        return false;
    }
    cache_if_standing(key, state);
    true
}

/// Puts `key` in its cache slot, then empties the slot again unless the table still
/// holds the same connection in the same state: a close of the fd on another thread
/// between the table read or insert and the slot write found nothing in the slot to
/// empty, and neither did the agent when it marked the connection ignored in between.
#[inline(always)]
fn cache_if_standing(key: &ConnKey, state: &ConnState) {
    cache(key, state);
    // SAFETY: the value is only compared.
    let standing = unsafe { CONNECTIONS.get(key) }
        .is_some_and(|s| s.conn_id == state.conn_id && s.ignored == state.ignored);
    if !standing {
        uncache(key);
    }
}

/// The traced connection behind `fd`, discovering it on first use. A connection the
/// agent stopped capturing is still returned, with its `ignored` mark, when its process
/// is an event loop ([`EVENT_LOOP_TGIDS`]) and did not accept it: its calls then send
/// records without bytes, the answers to calls the process made.
#[inline(always)]
pub fn lookup_or_discover(tgid: u32, tid: u32, fd: u32, cfg: &ProbeConfig) -> Option<ConnState> {
    let state = match stored_for_use(&ConnKey { tgid, fd }) {
        Some(state) => state,
        None => register(tgid, tid, fd, role::UNKNOWN, cfg)?,
    };
    match state.ignored {
        ignored::NO => Some(state),
        ignored::NOT_HTTP if state.role != role::SERVER && is_marked(&EVENT_LOOP_TGIDS, tgid) => {
            Some(state)
        }
        _ => None,
    }
}

fn on_accept_exit(ctx: &TracePointContext) {
    let Some((tgid, tid, _, cfg)) = traced_current() else {
        return;
    };
    let fd = ret(ctx);
    if fd < 0 {
        return;
    }
    register(tgid, tid, fd as u32, role::SERVER, cfg);
}

#[tracepoint]
pub fn loupe_accept_exit(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[tracepoint]
pub fn loupe_accept4_exit(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[tracepoint]
pub fn loupe_connect_enter(ctx: TracePointContext) -> u32 {
    let Some((_, _, pid_tgid, _)) = traced_current() else {
        return 0;
    };
    // SAFETY: the helper has no preconditions.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let call = PendingCall::on_fd(syscall_kind::CONNECT, arg::<0>(&ctx) as u32, start_ns);
    pending::begin(pid_tgid, &call);
    0
}

#[tracepoint]
pub fn loupe_connect_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid, pid_tgid, cfg)) = traced_current() else {
        return 0;
    };
    let Some(call) = pending::take_kind(pid_tgid, syscall_kind::CONNECT) else {
        return 0;
    };
    let result = ret(&ctx);
    // A non-blocking connect has its local port by the time it returns EINPROGRESS.
    if result == 0 || result == -EINPROGRESS {
        register(tgid, tid, call.fd, role::CLIENT, cfg);
    }
    0
}

#[tracepoint]
pub fn loupe_close_enter(ctx: TracePointContext) -> u32 {
    if let Some((tgid, tid, _, _)) = traced_current() {
        forget(tgid, tid, arg::<0>(&ctx) as u32, Closing::FileStillInTable);
    }
    0
}

/// `dup2` and `dup3` close their target fd, when it is open, without a close call: a
/// connection there ends just as at close, or the next reads and writes on that fd (a
/// file, a pipe, another socket) would be taken for it. The target is forgotten when the
/// call returns, and only if it succeeded: a failed call closes nothing, and a read on the
/// fd by another thread before the swap would have put the old connection back. A call
/// whose two fds are the same closes nothing.
#[tracepoint]
pub fn loupe_dup_enter(ctx: TracePointContext) -> u32 {
    let (old_fd, new_fd) = (arg::<0>(&ctx) as u32, arg::<1>(&ctx) as u32);
    if old_fd == new_fd {
        return 0;
    }
    let Some((_, _, pid_tgid, _)) = traced_current() else {
        return 0;
    };
    pending::begin(pid_tgid, &PendingCall::on_fd(syscall_kind::DUP, new_fd, 0));
    0
}

#[tracepoint]
pub fn loupe_dup_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid, pid_tgid, _)) = traced_current() else {
        return 0;
    };
    if let Some(call) = pending::take_kind(pid_tgid, syscall_kind::DUP)
        && ret(&ctx) >= 0
    {
        forget(tgid, tid, call.fd, Closing::FileGone);
    }
    0
}

/// `close_range` flags under which the call closes nothing loupe could forget: with
/// `CLOSE_RANGE_CLOEXEC` it only marks the fds, and with `CLOSE_RANGE_UNSHARE` it closes
/// them in a copy of the fd table that the process's other threads do not share.
const CLOSE_RANGE_KEEPS_FDS: u64 = (1 << 1) | (1 << 2);
/// Forgets the first 16 fds of a `close_range` call: a server closing its own connections
/// closes a few. A wider range (a child closing everything it inherited before exec) is
/// left to the exec, which drops the old program's entries. Written out, not looped: the
/// verifier of Linux 6.1 took the loop's equal states for an infinite loop and refused
/// the program. Written out, the 16 fds verify in about 9,400 instructions at load (the
/// loop took 48,000 on Linux 6.18).
macro_rules! forget_the_first_fds {
    ($tgid:expr, $tid:expr, $first:expr, $span:expr, [$($offset:literal)*]) => {
        $(
            if $offset > $span {
                return 0;
            }
            forget($tgid, $tid, $first + $offset, Closing::FileGone);
        )*
    };
}

/// `close_range` closes every fd from its first argument to its second without a close
/// call per fd (CPython's `os.closerange`): each connection among them ends as at close,
/// or the next file or socket given the fd would be taken for it. Forgotten at entry,
/// before any fd can be reused; a call that then fails (only on bad arguments, refused
/// here, or no memory) leaves connections that are found again on their next use.
#[tracepoint]
pub fn loupe_close_range_enter(ctx: TracePointContext) -> u32 {
    let (first, last) = (arg::<0>(&ctx) as u32, arg::<1>(&ctx) as u32);
    if arg::<2>(&ctx) & CLOSE_RANGE_KEEPS_FDS != 0 || first > last {
        return 0;
    }
    let Some((tgid, tid, _, _)) = traced_current() else {
        return 0;
    };
    let span = last - first;
    forget_the_first_fds!(tgid, tid, first, span, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15]);
    0
}

/// Where a close that [`forget`] sees stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// At `close` entry: the fd still leads to its file, whose references tell whether
    /// the socket stays open under another fd.
    FileStillInTable,
    /// After `dup2` replaced the fd, or among the many fds of `close_range`, where the
    /// file is not looked at: the socket is taken as closed.
    FileGone,
}

/// Ends the connection on `fd` of the traced process `tgid` (thread `tid`), if loupe
/// knows one there.
#[inline(always)]
fn forget(tgid: u32, tid: u32, fd: u32, closing: Closing) {
    let key = ConnKey { tgid, fd };
    let Some(state) = stored(&key) else {
        return;
    };
    // Table first, then slot: a registration racing this close checks the table after
    // writing the slot (see `store`).
    let _ = CONNECTIONS.remove(&key);
    uncache(&key);
    if config().inject_traceparent != 0
        && is_in_flight(state.sock)
        && !(closing == Closing::FileStillInTable && file_held_elsewhere(fd, &config().offsets))
    {
        // A request that dies unanswered is no longer in flight; one read through a
        // duplicate of an fd that stays open still is (Rust's `try_clone`, an inetd
        // child's stdin and stdout).
        end_in_flight(state.sock);
    }
    if state.ignored != ignored::BY_PORT {
        output(&CloseEvent {
            kind: EventKind::ConnClose as u8,
            _pad: [0; 3],
            tgid,
            tid,
            fd,
            conn_id: state.conn_id,
            // SAFETY: the helper has no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        });
    }
}
