//! Types shared by loupe's kernel programs and its userspace agent.
//!
//! Every struct here crosses the kernel/user boundary as raw bytes, so each one is
//! `#[repr(C)]`, has explicit padding, and has its size pinned by a `const` assertion that
//! both sides compile. Changing a layout means changing the assertion too, on purpose.
#![no_std]

/// Largest number of payload bytes one data event can carry. A power of two so the kernel
/// side can bound lengths with a mask the verifier understands.
pub const MAX_CAPTURE: usize = 4096;
/// Default number of payload bytes captured per syscall: enough for the request and
/// response heads of ordinary traffic.
pub const DEFAULT_CAPTURE: u32 = 1024;
/// How many iovec entries of a readv/writev/recvmsg/sendmsg are looked at.
pub const MAX_IOV: usize = 8;

/// TCP connections of traced processes the kernel side keeps (and the agent too).
pub const MAX_CONNECTIONS: u32 = 65_536;

/// The first byte of every ring-buffer record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP connection became known: accepted, connected, or first seen in use.
    ConnOpen = 1,
    /// Bytes moved through a known TCP connection.
    Data = 2,
    /// A known connection's fd was closed.
    ConnClose = 3,
    /// A process called exec; the agent checks whether it should be traced.
    ProcessExec = 4,
    /// A thread read an HTTP request while trace-context injection is on: the ids the
    /// kernel chose for the server span. Comes right before that read's data record.
    ServerContext = 5,
    /// A `traceparent` header was added to an outgoing request: the client span's ids.
    /// Comes before the data record of the write that carried the request.
    ClientContext = 6,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::ConnOpen),
            2 => Some(Self::Data),
            3 => Some(Self::ConnClose),
            4 => Some(Self::ProcessExec),
            5 => Some(Self::ServerContext),
            6 => Some(Self::ClientContext),
            _ => None,
        }
    }
}

/// Which side of a connection the traced process is on.
pub mod role {
    /// Not known yet: the connection existed before loupe saw it being set up.
    pub const UNKNOWN: u8 = 0;
    /// The process accepted the connection.
    pub const SERVER: u8 = 1;
    /// The process connected it.
    pub const CLIENT: u8 = 2;
}

/// Direction of a data event, seen from the traced process.
pub mod direction {
    /// The process read these bytes from the socket.
    pub const INGRESS: u8 = 1;
    /// The process wrote these bytes to the socket.
    pub const EGRESS: u8 = 2;
}

/// Bits of [`DataEvent::flags`].
pub mod data_flags {
    /// Bytes were moved by sendfile: counted, never captured.
    pub const SENDFILE: u8 = 1;
    /// A server's response left in two buffers, a whole head and then its body, of which
    /// only the head was copied: the uncaptured tail is meant to be that body.
    pub const BODY_SKIPPED: u8 = 2;
    /// A call on a connection the probes stopped capturing (not HTTP), of a process that
    /// serves several requests on one thread: the record carries no bytes, only that the
    /// call happened, so the agent can tell which request's handler an answer woke.
    pub const UNCAPTURED: u8 = 4;
}

pub mod syscall_kind;

/// Address family values as the kernel stores them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The endpoints of a TCP connection. IPv4 addresses sit in the first four bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnTuple {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub family: u16,
    pub _pad: u16,
    /// The inode number of the socket's network namespace; 0 when unknown. Loopback
    /// addresses repeat in every namespace (each pod has its own `127.0.0.1`), so two
    /// ends of one loopback connection must be in the same one.
    pub netns: u32,
    pub _pad2: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<ConnTuple>() == 48);

/// Emitted when a connection becomes known.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub kind: u8,
    pub role: u8,
    pub _pad: [u8; 2],
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// Monotonic ns; also the connection's identity together with (tgid, fd).
    pub conn_id: u64,
    pub ts_ns: u64,
    pub tuple: ConnTuple,
    /// The process's command name: names the service when the process is gone before
    /// the agent could read /proc (a short-lived client).
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 96);

/// Fixed part of a data event; `captured_len` payload bytes follow it in the record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEventHeader {
    pub kind: u8,
    pub direction: u8,
    pub flags: u8,
    pub _pad: u8,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub conn_id: u64,
    /// Monotonic ns when the call began: at syscall entry where calls are hooked at entry.
    /// Hooked at exit only, a write's is when its socket last sent (see
    /// `KernelOffsets::tcp_clock`) on connections loupe did not see being accepted, and
    /// the rest equal `end_ns`: reads (nothing uses a read's start) and a server's writes
    /// (nor a response's); a client's write whose send time was not recent
    /// (`counter::WRITE_START_UNKNOWN`) carries the time of its exit program's own clock
    /// read, just before `end_ns`.
    pub start_ns: u64,
    /// Monotonic ns at syscall exit.
    pub end_ns: u64,
    /// Bytes the syscall moved (its return value).
    pub total_len: u64,
    /// Bytes of payload that follow this header (at most the capture limit).
    pub captured_len: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<DataEventHeader>() == 56);

/// Scratch space in which the kernel assembles one data event before copying it into
/// the ring buffer. The data array is twice [`MAX_CAPTURE`] so that an offset and a length
/// each bounded by it can be added without the verifier seeing an overflow.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: DataEventHeader,
    pub data: [u8; MAX_CAPTURE * 2],
}
const _: () = assert!(core::mem::size_of::<DataEvent>() == 56 + MAX_CAPTURE * 2);

/// Payload bytes that a plain read or write record carries in a ring-buffer slot of its
/// own size ([`SmallDataEvent`]); larger captures, scatter/gather calls, and every record
/// while traceparent injection is on (its context program reads the per-CPU event) are
/// assembled in the per-CPU [`DataEvent`] and copied.
pub const SMALL_CAPTURE: usize = 256;

/// A data record reserved in the ring buffer at this fixed size and filled in place: the
/// bytes go from the process straight into the ring. Only the first `captured_len` bytes
/// of `data` are written; the rest is padding the reader skips.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SmallDataEvent {
    pub header: DataEventHeader,
    pub data: [u8; SMALL_CAPTURE],
}
const _: () = assert!(core::mem::size_of::<SmallDataEvent>() == 56 + SMALL_CAPTURE);

/// Emitted when a known connection's fd is closed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CloseEvent>() == 32);

/// Emitted for every exec on the host, traced or not, so new processes are picked up
/// without waiting for the agent's next scan of /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub tgid: u32,
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 16);

/// Length of a W3C trace id and span id in bytes.
pub const TRACE_ID_LEN: usize = 16;
pub const SPAN_ID_LEN: usize = 8;

/// The trace context of a thread that is serving an HTTP request, kept by the kernel
/// (keyed by tid) while `--inject-traceparent` is on. Requests the thread sends while the
/// entry exists join this trace as children of `span_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadContext {
    pub trace_id: [u8; TRACE_ID_LEN],
    /// The server span's id, chosen by the kernel.
    pub span_id: [u8; SPAN_ID_LEN],
    /// W3C trace-flags (bit 0: sampled).
    pub trace_flags: u8,
    pub _pad: [u8; 3],
    /// The thread that read the request: the only one a socket that carried this context
    /// gives it back to.
    pub tid: u32,
    /// The `struct sock` the request was read on (0 when unknown), whose response ends
    /// it: a context is given back only while its request is still in flight.
    pub server_sock: u64,
}
const _: () = assert!(core::mem::size_of::<ThreadContext>() == 40);

/// Emitted when a thread reads an HTTP request while injection is on, right before the
/// data record of that read: the server span for this request must use exactly these ids.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ServerContextEvent {
    pub kind: u8,
    /// W3C trace-flags: the incoming header's, else 01.
    pub trace_flags: u8,
    pub _pad: [u8; 2],
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// The connection the request came in on (as in the data record).
    pub conn_id: u64,
    pub ts_ns: u64,
    /// From the request's `traceparent` when it had a valid one, else random.
    pub trace_id: [u8; TRACE_ID_LEN],
    /// Random: the server span's id.
    pub span_id: [u8; SPAN_ID_LEN],
    /// The incoming `traceparent`'s span id; all zero when the request had none.
    pub parent_span_id: [u8; SPAN_ID_LEN],
}
const _: () = assert!(core::mem::size_of::<ServerContextEvent>() == 64);

/// Emitted when loupe added a `traceparent` header to an outgoing request. It comes
/// before the data record of the write that carried the request; that record's captured
/// bytes are the application's, without the header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ClientContextEvent {
    pub kind: u8,
    pub trace_flags: u8,
    pub _pad: [u8; 2],
    pub tgid: u32,
    pub tid: u32,
    pub _pad2: u32,
    pub ts_ns: u64,
    pub trace_id: [u8; TRACE_ID_LEN],
    /// The client span's id, as sent in the header.
    pub span_id: [u8; SPAN_ID_LEN],
    /// The server span the thread was serving (its [`ThreadContext`]); all zero when the
    /// thread served none and the trace starts here.
    pub parent_span_id: [u8; SPAN_ID_LEN],
    /// The connection the request went out on.
    pub tuple: ConnTuple,
}
const _: () = assert!(core::mem::size_of::<ClientContextEvent>() == 104);

/// Length of a task's command name in the kernel, NUL included.
pub const COMM_LEN: usize = 16;
/// How many `--exe NAME*` prefixes the kernel checks at exec.
pub const MAX_EXEC_PREFIXES: u32 = 8;

/// A command-name prefix the kernel matches at exec, so a matching short-lived process
/// (a curl, a cron job) is traced before its first connect rather than after the agent
/// hears of its exec. Unused slots have `len == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommPrefix {
    pub bytes: [u8; COMM_LEN],
    pub len: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CommPrefix>() == 24);

/// Words of the traced-process bitmap: one bit per tgid up to the kernel's PID_MAX_LIMIT
/// (4,194,304 on 64-bit), 512 KiB.
pub const TGID_WORDS: u32 = 4_194_304 / 64;

/// Syscall arguments saved at sys_enter for the matching sys_exit, keyed by pid_tgid.
/// `kind` is [`syscall_kind::NONE`] while the thread is not inside a traced call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingCall {
    pub kind: u8,
    /// [`data_flags`] its record takes from its connection: [`data_flags::UNCAPTURED`].
    pub flags: u8,
    pub _pad: [u8; 2],
    pub fd: u32,
    /// Buffer, iovec array or msghdr pointer, depending on `kind`.
    pub ptr: u64,
    /// Iovec count for readv/writev.
    pub count: u64,
    pub start_ns: u64,
    /// The connection the fd was at entry, so the exit needs no second lookup.
    pub conn_id: u64,
}
const _: () = assert!(core::mem::size_of::<PendingCall>() == 40);

impl PendingCall {
    /// A call that moves no bytes (connect, dup), known by its kind and fd alone.
    pub const fn on_fd(kind: u8, fd: u32, start_ns: u64) -> Self {
        Self {
            kind,
            flags: 0,
            _pad: [0; 2],
            fd,
            ptr: 0,
            count: 0,
            start_ns,
            conn_id: 0,
        }
    }
}

/// Kernel structure field offsets, resolved at startup from the running kernel's BTF.
/// Rust eBPF has no CO-RE relocations, so nothing here may be baked in at build time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub file_f_inode: u32,
    pub inode_i_mode: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    pub sock_daddr: u32,
    pub sock_rcv_saddr: u32,
    pub sock_dport: u32,
    pub sock_num: u32,
    pub sock_v6_daddr: u32,
    pub sock_v6_rcv_saddr: u32,
    pub sock_protocol: u32,
    /// How the read and write exit programs find a syscall's arguments in
    /// `struct pt_regs`, one of [`regs_layout`]; checked against the running kernel's BTF.
    pub regs_layout: u32,
    /// `tcp_sock.tcp_clock_cache`, from the start of `struct sock`: the monotonic time the
    /// socket last sent or received, which a client's write exit takes as the time its
    /// request went out ([`ConnState::sock`]). 0 when the BTF does not show it; writes
    /// are then traced with entry and exit programs. A constant to the verifier, as the
    /// whole configuration is (read-only data).
    pub tcp_clock: u32,
    /// `task_struct.pid`, followed by `tgid`: the read and write exit programs read the
    /// thread's ids from the task they hold instead of asking a helper. 0 when the BTF does
    /// not show the two side by side; the programs then call `bpf_get_current_pid_tgid`.
    pub task_pid: u32,
    /// `sock.__sk_common.skc_net.net`, the socket's `struct net *`, and `net.ns.inum`,
    /// its namespace's inode number: read once per connection for [`ConnTuple::netns`].
    /// 0 when the BTF does not show them (a kernel without network namespaces); the
    /// tuple's `netns` is then 0.
    pub sock_net: u32,
    pub net_inum: u32,
    /// `sock.__sk_common.skc_cookie`: with `--inject-traceparent`, the socket whose
    /// response a thread reads gives it back the context its request carried. 0 when the
    /// BTF does not show it; the thread's context is then only learnt from requests.
    pub sock_cookie: u32,
    /// `file.f_ref` (Linux 6.13) or `file.f_count`: the file's references, which
    /// [`file_refs`] kind `file_refs_kind` tells. With `--inject-traceparent`, a close
    /// that leaves a socket open under another fd (a duplicate, a forked child's copy)
    /// does not end the request read on it.
    pub file_refs: u32,
    pub file_refs_kind: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 100);

/// How `struct file` counts its references ([`KernelOffsets::file_refs_kind`]).
pub mod file_refs {
    /// Not found in the BTF: every close of a socket's fd ends the request read on it.
    pub const UNKNOWN: u32 = 0;
    /// `atomic_long_t f_count`: one reference reads 1.
    pub const COUNT: u32 = 1;
    /// `file_ref_t f_ref` (Linux 6.13): one reference reads 0; released and dead files
    /// read negative.
    pub const REF: u32 = 2;
}

/// Layouts of `struct pt_regs` the exit programs know, with the offsets of the first
/// three syscall arguments fixed at build time (the verifier needs constant offsets) and
/// checked against the running kernel's BTF before use.
pub mod regs_layout {
    /// Unknown: reads and writes are traced with entry and exit programs instead.
    pub const UNKNOWN: u32 = 0;
    /// x86_64: arguments in `di`, `si`, `dx`, stored contiguously as `dx, si, di`.
    pub const X86_64: u32 = 1;
    pub const X86_64_DX: u32 = 96;
    pub const X86_64_SI: u32 = 104;
    pub const X86_64_DI: u32 = 112;
    /// arm64: `x0` holds the return value at exit; the first argument stays in `orig_x0`.
    pub const ARM64: u32 = 2;
    pub const ARM64_REGS: u32 = 0;
    pub const ARM64_ORIG_X0: u32 = 272;
}

/// Where `sched_process_fork` records have kept `child_pid`: after two fixed 16-byte comms
/// (44) and, since Linux 6.10, after dynamic-string comms (20). The program needs a constant
/// offset, so only these are read.
pub const FORK_CHILD_PID_OFFSETS: [u32; 2] = [44, 20];

/// Runtime settings handed to the kernel programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeConfig {
    /// Trace every process except `agent_tgid` instead of only those in the tgid map.
    pub trace_all: u32,
    /// The agent's own tgid, never traced.
    pub agent_tgid: u32,
    /// Payload bytes captured per syscall, at most [`MAX_CAPTURE`].
    pub capture_bytes: u32,
    /// Non-zero when only connections with a port in the port map are traced.
    pub filter_ports: u32,
    pub offsets: KernelOffsets,
    /// Non-zero when `--inject-traceparent` is on: threads reading requests get a trace
    /// context, and outgoing HTTP/1.x requests without `traceparent` get one.
    pub inject_traceparent: u32,
    /// Offset of `child_pid` in `sched:sched_process_fork` records, one of
    /// [`FORK_CHILD_PID_OFFSETS`] (read from tracefs); 0 when unknown, and then children
    /// are left to the agent's /proc scan.
    pub fork_child_pid_offset: u32,
}
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 124);

pub mod connection;
pub mod counter;

/// Slots of the kernel's `DATA_CONTEXT` program array (`--inject-traceparent`).
pub mod context_program {
    /// `loupe_data_context`: every captured read and write.
    pub const READ: u32 = 0;
    /// `loupe_data_context_continued`: a read that finishes the method whose first
    /// letter its socket's previous read took by itself.
    pub const CONTINUED: u32 = 1;
    /// Slots in all.
    pub const COUNT: u32 = 2;
}

pub use connection::*;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are plain-old-data with explicit padding.
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::CommPrefix {}
    unsafe impl aya::Pod for super::ThreadContext {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn only_calls_that_move_bytes_reach_the_data_exit() {
        use syscall_kind::*;
        for kind in [READ, WRITE, READV, WRITEV, RECVMSG, SENDMSG, SENDFILE] {
            assert!(carries_data(kind), "{kind}");
        }
        for kind in [NONE, CONNECT, ACCEPT, DUP] {
            assert!(!carries_data(kind), "{kind}");
        }
    }
}
