//! The kernel's connection table and the cache in front of it: their keys, values and
//! slots, shared by the probes and the agent.

/// Key of the kernel's connection table and cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);

/// Value of the kernel's connection table and cache.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    pub conn_id: u64,
    pub role: u8,
    /// Non-zero when the connection is not traced ([`ignored`]), so its reads and writes
    /// stop at the lookup (but for an event loop's calls, see [`ignored::NOT_HTTP`]).
    pub ignored: u8,
    pub _pad: [u8; 6],
    /// The connection's `struct sock`, where a client's write exit reads when its request
    /// went out (`tcp_sock.tcp_clock_cache`). Read only with `bpf_probe_read_kernel`: after
    /// a close loupe did not see (`close_range`, io_uring), the fd may hold another file
    /// and the pointer a freed socket, whose memory the kernel keeps for sockets (they are
    /// RCU-freed), so the worst is another socket's time, which the exit's window mostly
    /// refuses. 0 when unknown.
    pub sock: u64,
}
const _: () = assert!(core::mem::size_of::<ConnState>() == 24);

/// Why a connection is not traced ([`ConnState::ignored`]).
pub mod ignored {
    /// Traced.
    pub const NO: u8 = 0;
    /// Filtered out by port: the agent never hears of it, its close included.
    pub const BY_PORT: u8 = 1;
    /// The agent found no HTTP/1.x on it and asked for it to be left alone
    /// ([`crate::MAX_IGNORE_REQUESTS`]): the agent still hears of its close, and of its
    /// reads and writes, without their bytes, when its process serves several requests
    /// on one thread (`EVENT_LOOP_TGIDS`).
    pub const NOT_HTTP: u8 = 2;
}

/// Requests of the agent's to stop capturing connections that carry no HTTP/1.x, by
/// connection and id, which the probes apply on their next table lookup of it.
pub const MAX_IGNORE_REQUESTS: u32 = 1024;

/// Slots of the kernel's connection cache, a power of two: a process's first 4,096 fds
/// never evict each other.
pub const CONNECTION_CACHE_SLOTS: u32 = 4096;

/// One slot of the kernel's connection cache: an array every traced read and write looks
/// in before the connection table. An array lookup is a few instructions the verifier
/// inlines, where a lookup in the table (65,536 entries, its bucket array alone 1 MiB of
/// 4 KiB pages) is a helper call, a hash and two dependent loads that mostly miss the
/// TLB and the cache, since a traced read comes after the thread slept.
///
/// Slots are written without locks by any CPU (at registration and close) and by the
/// agent (pruning dead processes), so a reader may see one writer's key with another's
/// state. `check` covers every field: a torn or cleared slot fails it and the reader
/// falls back to the table, which stays the record of truth.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CachedConnection {
    pub key: ConnKey,
    pub state: ConnState,
    /// [`CachedConnection::check_of`] of the fields above; 0 for an empty slot.
    pub check: u64,
}
const _: () = assert!(core::mem::size_of::<CachedConnection>() == 40);

impl CachedConnection {
    /// The slot of `key`: consecutive fds of one process take consecutive slots, so they
    /// never evict each other; processes start at scattered places.
    #[inline(always)]
    pub fn slot(key: &ConnKey) -> u32 {
        (key.tgid.wrapping_mul(0x9E37_79B9) >> 20).wrapping_add(key.fd)
            & (CONNECTION_CACHE_SLOTS - 1)
    }

    /// A value that matches the fields only when they were written together; never 0.
    #[inline(always)]
    pub fn check_of(key: &ConnKey, state: &ConnState) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        // One field per round, each round a bijection of what came before, so no two
        // fields can cancel each other out.
        let mix = |h: u64, field: u64| (h ^ (h >> 29) ^ field).wrapping_mul(K);
        let key_bits = ((key.tgid as u64) << 32) | key.fd as u64;
        let flags = ((state.role as u64) << 8) | state.ignored as u64;
        mix(
            mix(mix(key_bits.wrapping_mul(K), state.conn_id), flags),
            state.sock,
        ) | 1
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn state(conn_id: u64, role: u8, ignored: u8) -> ConnState {
        ConnState {
            conn_id,
            role,
            ignored,
            _pad: [0; 6],
            sock: 0xffff_8880_0000_0000 + conn_id,
        }
    }

    #[test]
    fn one_process_fds_never_share_a_cache_slot() {
        for tgid in [1, 2, 1234, 99_999, 4_194_303] {
            let mut slots: Vec<u32> = (0..CONNECTION_CACHE_SLOTS)
                .map(|fd| CachedConnection::slot(&ConnKey { tgid, fd }))
                .collect();
            assert!(slots.iter().all(|&s| s < CONNECTION_CACHE_SLOTS));
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), CONNECTION_CACHE_SLOTS as usize, "tgid {tgid}");
        }
        // Past the slots, fds wrap onto the first ones.
        let key = |fd| ConnKey { tgid: 1234, fd };
        assert_eq!(
            CachedConnection::slot(&key(5)),
            CachedConnection::slot(&key(5 + CONNECTION_CACHE_SLOTS))
        );
    }

    #[test]
    fn neighbouring_processes_start_apart() {
        let start = |tgid| CachedConnection::slot(&ConnKey { tgid, fd: 0 });
        for tgid in 1000..1010 {
            let gap = start(tgid).abs_diff(start(tgid + 1));
            assert!(
                gap >= 64,
                "tgids {tgid} and {} start {gap} slots apart",
                tgid + 1
            );
        }
    }

    #[test]
    fn the_check_holds_only_for_fields_written_together() {
        let a = (ConnKey { tgid: 10, fd: 5 }, state(1_000, 1, 0));
        let b = (ConnKey { tgid: 10, fd: 6 }, state(2_000, 2, 0));
        let check_a = CachedConnection::check_of(&a.0, &a.1);
        assert_ne!(check_a, 0, "0 marks an empty slot");
        // An empty (zeroed) slot never matches a key.
        assert_ne!(
            CachedConnection::check_of(&ConnKey { tgid: 0, fd: 0 }, &state(0, 0, 0)),
            0
        );
        // A slot torn between two writers: one's key, the other's state or check.
        assert_ne!(CachedConnection::check_of(&a.0, &b.1), check_a);
        assert_ne!(CachedConnection::check_of(&b.0, &a.1), check_a);
        assert_ne!(CachedConnection::check_of(&b.0, &b.1), check_a);
        // Each field counts.
        assert_ne!(
            CachedConnection::check_of(&a.0, &state(1_000, 2, 0)),
            check_a
        );
        assert_ne!(
            CachedConnection::check_of(&a.0, &state(1_000, 1, 1)),
            check_a
        );
        assert_ne!(
            CachedConnection::check_of(&a.0, &state(1_001, 1, 0)),
            check_a
        );
        assert_ne!(
            CachedConnection::check_of(&ConnKey { tgid: 11, fd: 5 }, &a.1),
            check_a
        );
        let other_sock = ConnState {
            sock: a.1.sock + 64,
            ..a.1
        };
        assert_ne!(CachedConnection::check_of(&a.0, &other_sock), check_a);
    }
}
