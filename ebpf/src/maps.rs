//! Maps shared by the programs and with the agent. Names are the agent's contract.

use aya_ebpf::bindings::BPF_F_MMAPABLE;
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockHash},
};
use loupe_common::{
    COMM_LEN, CONNECTION_CACHE_SLOTS, CachedConnection, CommPrefix, ConnKey, ConnState, DataEvent,
    MAX_CONNECTIONS, MAX_EXEC_PREFIXES, MAX_IGNORE_REQUESTS, MAX_IOV, PendingCall, ProbeConfig,
    SPAN_ID_LEN, TGID_WORDS, ThreadContext, context_program, counter,
};

use crate::{
    context::{ContextScratch, LiveRequest, ProcessContext},
    inject::SocketInjectState,
};

/// Settings and kernel offsets, written by the agent into the object's read-only data
/// before loading. The verifier knows values in frozen read-only data: a branch on a
/// setting that is off is removed before the program runs, and an offset from here is a
/// constant that a load from a BTF-typed pointer may use. Every program reads it first,
/// beside the other read-only globals, instead of in a map value of its own.
#[unsafe(no_mangle)]
static PROBE_CONFIG: ProbeConfig = unsafe { core::mem::zeroed() };

/// Processes to trace: bit `tgid % 64` of word `tgid / 64`, kept by the agent (through a
/// memory mapping) as processes come and go. Every syscall on the host checks it, and an
/// array lookup costs a fraction of a hash lookup.
#[map]
pub static TRACED_TGIDS: Array<u64> = Array::with_max_entries(TGID_WORDS, BPF_F_MMAPABLE);

/// Processes whose responses are copied whole, one bit per tgid like [`TRACED_TGIDS`]:
/// set by the agent when a body buffer the probe left uncopied held more than that body.
#[map]
pub static WHOLE_RESPONSE_TGIDS: Array<u64> = Array::with_max_entries(TGID_WORDS, BPF_F_MMAPABLE);

/// Processes that serve several requests on one thread (event loops), one bit per tgid
/// like [`TRACED_TGIDS`]: set by the agent. Their reads and writes on connections the
/// agent stopped capturing still send a record, without bytes: the answer of a database
/// or cache the agent does not parse is what wakes a handler, and tells which request
/// the calls it makes next belong to.
#[map]
pub static EVENT_LOOP_TGIDS: Array<u64> = Array::with_max_entries(TGID_WORDS, BPF_F_MMAPABLE);

/// Command names traced from their exec on (`--exe nginx`), zero-padded.
#[map]
pub static EXEC_NAMES: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(256, 0);

/// Command-name prefixes traced from their exec on (`--exe 'python3*'`).
#[map]
pub static EXEC_PREFIXES: Array<CommPrefix> = Array::with_max_entries(MAX_EXEC_PREFIXES, 0);

/// Ports to trace when port filtering is on (port -> 1).
#[map]
pub static TRACED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// Connections as they were registered, by [`CachedConnection::slot`]: looked in before
/// [`CONNECTIONS`]. Mapped by the agent, which clears the slots of processes that died.
#[map]
pub static CONNECTION_CACHE: Array<CachedConnection> =
    Array::with_max_entries(CONNECTION_CACHE_SLOTS, BPF_F_MMAPABLE);

/// Known TCP socket fds of traced processes, and those the port filter leaves out (so
/// their reads and writes stop at a lookup).
#[map]
pub static CONNECTIONS: HashMap<ConnKey, ConnState> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Connections the agent asks the probes to stop capturing (it found no HTTP/1.x on
/// them), with the connection id each request is for: the probe that next looks the
/// connection up in [`CONNECTIONS`] marks it there if it is still that connection, and
/// removes the request. The agent empties the connection's cache slot after asking, so
/// that lookup comes with the next call.
#[map]
pub static IGNORE_REQUESTS: HashMap<ConnKey, u64> =
    HashMap::with_max_entries(MAX_IGNORE_REQUESTS, 0);

/// Arguments saved at syscall entry for the matching exit: one slot per traced thread,
/// keyed by pid_tgid, reused by each call and freed when the thread exits.
#[map]
pub static PENDING_CALLS: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

/// Room for a call's iovec array, read with one helper call (too large for the stack
/// next to the rest of the exit programs' frames).
#[map]
pub static IOV_SCRATCH: PerCpuArray<[[u64; 2]; MAX_IOV]> = PerCpuArray::with_max_entries(1, 0);

/// Every record the agent reads. One buffer for all CPUs keeps records in order.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Scratch space for assembling a data event (too large for the 512-byte stack).
#[map]
pub static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// Trace context of threads serving a request (tid -> context), kept while
/// `--inject-traceparent` is on. LRU: entries of threads that died mid-request age out.
#[map]
pub static THREAD_CONTEXT: LruHashMap<u32, ThreadContext> = LruHashMap::with_max_entries(16384, 0);

/// The context each injected client socket's latest request carried, or an event loop's
/// latest call on a socket without HTTP (a context without a span for a call made outside
/// any request), by socket cookie, kept while `--inject-traceparent` is on: the thread
/// that reads the answer takes it back, as an event loop runs the handler that awaited
/// it. LRU: entries of closed sockets age out.
#[map]
pub static INJECTED_CONTEXTS: LruHashMap<u64, ThreadContext> =
    LruHashMap::with_max_entries(16384, 0);

/// Requests in flight that hold a context, while `--inject-traceparent` is on: the
/// server socket each was read on -> its span id and the process that read it, removed
/// when the socket's response starts or its last fd closes. LRU: entries of sockets
/// whose close loupe missed age out.
#[map]
pub static LIVE_CONTEXTS: LruHashMap<u64, LiveRequest> = LruHashMap::with_max_entries(16384, 0);

/// Each process's latest request read and how many it has in flight (tgid ->
/// [`ProcessContext`]), while `--inject-traceparent` is on: a thread with no request of
/// its own writes the context of the only one in flight. LRU: exited processes age out;
/// an exec starts afresh.
#[map]
pub static PROCESS_CONTEXT: LruHashMap<u32, ProcessContext> = LruHashMap::with_max_entries(8192, 0);

/// Sockets whose latest read took one capital letter by itself, while
/// `--inject-traceparent` is on: socket -> that byte. Go's net/http reads one byte
/// ahead on an idle connection, so a request that comes in then is read as its first
/// letter and the rest; the socket's next read that starts no HTTP message tells
/// whether the two started a request, and drops the entry. LRU: entries left by
/// sockets that closed, or whose next read started a message of its own, age out; such
/// an entry would need a later read that continues a method to be taken for one.
#[map]
pub static LONE_FIRST_BYTES: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// The context programs while injection is on, by the slots of `context_program`: the
/// one the data exit program hands over to, and the one a read that finishes a
/// request's method hands over to. Empty otherwise.
#[map]
pub static DATA_CONTEXT: ProgramArray = ProgramArray::with_max_entries(context_program::COUNT, 0);

/// Working space for learning a thread's context from the request it read.
#[map]
pub static CONTEXT_SCRATCH: PerCpuArray<ContextScratch> = PerCpuArray::with_max_entries(1, 0);

/// Client connections of traced processes whose writes the injection program sees,
/// keyed by socket cookie. The kernel drops a socket from it when the socket closes.
#[map]
pub static INJECT_SOCKETS: SockHash<u64> = SockHash::with_max_entries(65536, 0);

/// Per-socket injection state: marked at connect for traced processes, then where the
/// next request starts. Freed with the socket; writes to one socket are serialised by
/// the socket lock, so it also serves as the program's scratch space.
#[btf_map]
pub static SOCKET_INJECT: SkStorage<SocketInjectState> = SkStorage::new();

/// Per-CPU counters of what the kernel side had to drop; indexes in `counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

pub fn count(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, and programs do not preempt each other on one CPU.
        unsafe { *ptr += 1 };
    }
}

#[inline(always)]
pub fn config() -> &'static ProbeConfig {
    // black_box: the build-time zeros must not be folded into the programs; the loads
    // stay loads, of the values the agent wrote.
    core::hint::black_box(&PROBE_CONFIG)
}
