//! From a file descriptor to the TCP socket behind it.
//!
//! Walks task -> files -> fdtable -> file -> socket -> sock with offsets the agent
//! resolved from the running kernel's BTF, because rustc emits no CO-RE relocations.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task};
use loupe_common::{AF_INET, AF_INET6, ConnTuple, KernelOffsets, counter, file_refs};

use crate::maps::count;

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: i16 = 1;
const IPPROTO_TCP: u16 = 6;

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses and reports them as errors.
    match unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(counter::READ_FAILURES);
            None
        }
    }
}

/// The `struct file` behind `fd` in the current process.
#[inline(always)]
fn file_of(fd: u32, off: &KernelOffsets) -> Option<u64> {
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, off.task_files)?;
    let fdt: u64 = read(files, off.files_fdt)?;
    let max_fds: u32 = read(fdt, off.fdtable_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let fd_array: u64 = read(fdt, off.fdtable_fd)?;
    read(fd_array, fd.checked_mul(8)?)
}

/// Whether the file behind `fd` in the current process is held by more than this fd: a
/// duplicate (`dup`, `F_DUPFD`), a forked child's copy, or a call on it in progress on
/// another thread. False when unknown.
#[inline(always)]
pub fn file_held_elsewhere(fd: u32, off: &KernelOffsets) -> bool {
    let one: i64 = match off.file_refs_kind {
        file_refs::COUNT => 1,
        file_refs::REF => 0,
        _ => return false,
    };
    // Signed: a `file_ref_t` being released or dead reads negative.
    file_of(fd, off)
        .and_then(|file| read::<i64>(file, off.file_refs))
        .is_some_and(|refs| refs > one)
}

/// The connection tuple of `fd` in the current process, and its `struct sock`, when it is
/// an IPv4 or IPv6 TCP socket; `None` for files, pipes, UDP and unix sockets.
#[inline(always)]
pub fn tcp_tuple(fd: u32, off: &KernelOffsets) -> Option<(ConnTuple, u64)> {
    let file = file_of(fd, off)?;
    let inode: u64 = read(file, off.file_f_inode)?;
    let mode: u16 = read(inode, off.inode_i_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = read(file, off.file_private_data)?;
    let sock_type: i16 = read(socket, off.socket_type)?;
    if sock_type != SOCK_STREAM {
        return None;
    }
    let sk: u64 = read(socket, off.socket_sk)?;
    let protocol: u16 = read(sk, off.sock_protocol)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let family: u16 = read(sk, off.sock_family)?;
    let mut tuple = ConnTuple {
        family,
        local_port: read(sk, off.sock_num)?,
        remote_port: u16::from_be(read(sk, off.sock_dport)?),
        ..ConnTuple::default()
    };
    if family == AF_INET {
        let local: [u8; 4] = read(sk, off.sock_rcv_saddr)?;
        let remote: [u8; 4] = read(sk, off.sock_daddr)?;
        tuple.local_addr[..4].copy_from_slice(&local);
        tuple.remote_addr[..4].copy_from_slice(&remote);
    } else if family == AF_INET6 {
        tuple.local_addr = read(sk, off.sock_v6_rcv_saddr)?;
        tuple.remote_addr = read(sk, off.sock_v6_daddr)?;
    } else {
        return None;
    }
    tuple.netns = network_namespace(sk, off);
    Some((tuple, sk))
}

/// When the TCP socket `sk` last tried to send or received (`tcp_sock.tcp_clock_cache`,
/// the monotonic clock `bpf_ktime_get_ns` reads); 0 when unknown.
///
/// At a write's return that is when the write pushed its bytes: the kernel refreshes it
/// as it starts transmitting (even when cork or Nagle then holds the bytes back), before
/// the peer can have received anything. It is later when an acknowledgement came in
/// before the write returned, or when the write waited for room in the send buffer (the
/// last acknowledgement's time), and older when the kernel deferred the push because an
/// earlier packet of the socket was still queued in the host (autocorking: that packet's
/// time, microseconds before).
#[inline(always)]
pub fn last_sent_or_received(sk: u64, off: &KernelOffsets) -> u64 {
    if off.tcp_clock == 0 {
        return 0;
    }
    read::<u64>(sk, off.tcp_clock).unwrap_or(0)
}

/// The inode number of the network namespace `sk` lives in; 0 when the kernel's BTF did
/// not show the way there. Read once per connection, when it becomes known.
#[inline(always)]
fn network_namespace(sk: u64, off: &KernelOffsets) -> u32 {
    if off.sock_net == 0 {
        return 0;
    }
    read::<u64>(sk, off.sock_net)
        .and_then(|net| read::<u32>(net, off.net_inum))
        .unwrap_or(0)
}
