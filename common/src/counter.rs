//! Indexes of the kernel's per-CPU counters.

/// A record did not fit in the ring buffer.
pub const RINGBUF_DROPS: u32 = 0;
/// A traced thread got no pending-call slot: more than 16,384 traced threads at once.
pub const PENDING_FULL: u32 = 1;
/// The connection table was full when a connection became known.
pub const CONN_TABLE_FULL: u32 = 2;
/// Reading a kernel or user structure failed.
pub const READ_FAILURES: u32 = 3;
/// Outgoing requests that got a `traceparent` header.
pub const INJECTED: u32 = 4;
/// Outgoing requests left alone because they already carried a `traceparent`.
pub const INJECT_SKIPPED_PRESENT: u32 = 5;
/// Outgoing requests (or, once a connection lost sync, writes) left alone because
/// loupe could not check them safely: head split across writes or longer than the
/// window, malformed head, a body loupe cannot follow (chunked, pipelined).
pub const INJECT_SKIPPED_UNSAFE: u32 = 6;
/// A kernel helper failed while inserting the header; the request went out untouched
/// (or, if the inserted bytes could not be removed again, the write failed).
pub const INJECT_FAILED: u32 = 7;
/// A connection of a traced process could not be put under injection (socket map full).
pub const INJECT_SOCKET_FAILED: u32 = 8;
/// A client's write captured at its return without the time its bytes went out (its
/// socket's last send was over a millisecond before: the write was preempted after
/// sending, or the fd holds a connection loupe missed the close of): the record starts at
/// the write's return.
pub const WRITE_START_UNKNOWN: u32 = 9;
/// A known connection was not in the kernel's connection cache and was looked up in
/// the connection table instead.
pub const CONN_CACHE_MISSES: u32 = 10;
/// A server's response left in two buffers, a whole head and then its body: only the
/// head was copied.
pub const RESPONSE_BODIES_SKIPPED: u32 = 11;
pub const COUNT: u32 = 12;
