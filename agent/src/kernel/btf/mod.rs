//! Kernel structure field offsets, read from the running kernel's BTF.
//!
//! Rust eBPF programs get no CO-RE relocations, so the offsets they use to walk
//! `task_struct → files → fdtable → file → socket → sock` must come from the kernel loupe
//! runs on. This module reads the few records it needs from `/sys/kernel/btf/vmlinux` and
//! checks each field's size and alignment: a layout it does not understand is an error at
//! startup, because the alternative is the kernel programs silently reading garbage.

mod parse;
#[cfg(test)]
mod tests;

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use loupe_common::KernelOffsets;
use parse::{Btf, kind};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// vmlinux BTF is about 6 MiB; anything far larger is not a BTF file.
const MAX_BTF_LEN: u64 = 256 << 20;

/// Anonymous struct and union nesting deeper than this is taken as a malformed blob.
const MAX_ANON_NESTING: u32 = 16;

/// Why kernel offsets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed BTF: {reason}")]
    Malformed { reason: &'static str },
    #[error("kernel BTF has no struct {name}")]
    MissingType { name: &'static str },
    #[error("kernel BTF: struct {type_name} has no field {field}")]
    MissingField {
        type_name: &'static str,
        field: &'static str,
    },
    #[error("kernel BTF: unexpected layout of {type_name}.{field}: {problem}")]
    UnexpectedLayout {
        type_name: &'static str,
        field: &'static str,
        problem: LayoutProblem,
    },
}

/// How a field's layout differs from what loupe's kernel programs read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutProblem {
    #[error("it is a {bits}-bit bitfield")]
    Bitfield { bits: u32 },
    #[error("it starts at bit {bit_offset}, not on a byte boundary")]
    Unaligned { bit_offset: u64 },
    #[error("its offset does not fit in 32 bits")]
    OffsetTooLarge,
    #[error("it is a {found}, expected a pointer")]
    NotPointer { found: &'static str },
    #[error("it is {found} bytes, expected {expected}")]
    WrongSize { expected: u64, found: u64 },
    #[error("it is a {found} without a size, expected {expected} bytes")]
    Unsized { expected: u64, found: &'static str },
    #[error("it is not a struct {expected}")]
    NotStruct { expected: &'static str },
}

/// Reads the running kernel's BTF and resolves the offsets loupe's kernel programs use.
pub fn kernel_offsets() -> Result<KernelOffsets, BtfError> {
    offsets_from_file(Path::new(VMLINUX_BTF))
}

/// Like [`kernel_offsets`], from a BTF file elsewhere (e.g. an external BTF for a kernel
/// that does not expose its own).
pub fn offsets_from_file(path: &Path) -> Result<KernelOffsets, BtfError> {
    let read_err = |source| BtfError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    // sysfs reports a size for this file, but reading to EOF does not rely on it; the
    // limit keeps a wrong path from filling memory.
    let mut data = Vec::new();
    file.take(MAX_BTF_LEN + 1)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() as u64 > MAX_BTF_LEN {
        return Err(BtfError::Malformed {
            reason: "file larger than 256 MiB",
        });
    }
    resolve_offsets(&data)
}

/// Resolves the offsets from a BTF blob. Pure: no I/O.
pub fn resolve_offsets(btf: &[u8]) -> Result<KernelOffsets, BtfError> {
    use Expect::{Bytes, Pointer};
    let r = Resolver::new(btf)?;
    // Looked up again for each field (it is cheap) so errors come in struct order.
    let skc = |field, expect| -> Result<u32, BtfError> {
        let sk_common = r.field("sock", "__sk_common", Expect::Struct("sock_common"))?;
        let inner = r.field_in(sk_common.type_id, "sock_common", field, expect)?;
        sk_common
            .offset
            .checked_add(inner.offset)
            .ok_or(BtfError::UnexpectedLayout {
                type_name: "sock_common",
                field,
                problem: LayoutProblem::OffsetTooLarge,
            })
    };
    let (sock_net, net_inum) = network_namespace(&r);
    let (file_refs, file_refs_kind) = file_refs(&r);
    Ok(KernelOffsets {
        task_files: r.field("task_struct", "files", Pointer)?.offset,
        files_fdt: r.field("files_struct", "fdt", Pointer)?.offset,
        fdtable_max_fds: r.field("fdtable", "max_fds", Bytes(4))?.offset,
        fdtable_fd: r.field("fdtable", "fd", Pointer)?.offset,
        file_private_data: r.field("file", "private_data", Pointer)?.offset,
        file_f_inode: r.field("file", "f_inode", Pointer)?.offset,
        inode_i_mode: r.field("inode", "i_mode", Bytes(2))?.offset,
        socket_type: r.field("socket", "type", Bytes(2))?.offset,
        socket_sk: r.field("socket", "sk", Pointer)?.offset,
        sock_family: skc("skc_family", Bytes(2))?,
        sock_daddr: skc("skc_daddr", Bytes(4))?,
        sock_rcv_saddr: skc("skc_rcv_saddr", Bytes(4))?,
        sock_dport: skc("skc_dport", Bytes(2))?,
        sock_num: skc("skc_num", Bytes(2))?,
        sock_v6_daddr: skc("skc_v6_daddr", Bytes(16))?,
        sock_v6_rcv_saddr: skc("skc_v6_rcv_saddr", Bytes(16))?,
        sock_protocol: r.field("sock", "sk_protocol", Bytes(2))?.offset,
        regs_layout: regs_layout(&r),
        tcp_clock: tcp_clock(&r),
        task_pid: task_pid(&r),
        sock_net,
        net_inum,
        sock_cookie: skc("skc_cookie", Bytes(8)).unwrap_or(0),
        file_refs,
        file_refs_kind,
    })
}

/// Where `struct file` counts its references, and how: `f_ref` (a `file_ref_t`, Linux
/// 6.13) or `f_count` (an `atomic_long_t`). Not finding either is no error: every close
/// of a socket's fd then ends the request read on it.
fn file_refs(r: &Resolver) -> (u32, u32) {
    use loupe_common::file_refs::{COUNT, REF, UNKNOWN};
    if let Ok(field) = r.field("file", "f_ref", Expect::Bytes(8)) {
        return (field.offset, REF);
    }
    match r.field("file", "f_count", Expect::Bytes(8)) {
        Ok(field) => (field.offset, COUNT),
        Err(_) => (0, UNKNOWN),
    }
}

/// The offsets that lead from a socket to its network namespace's inode number:
/// `sock.__sk_common.skc_net` (a `possible_net_t` holding `struct net *net`) and
/// `net.ns.inum`. Not finding them is no error: connections then carry namespace 0.
fn network_namespace(r: &Resolver) -> (u32, u32) {
    let found = || -> Result<(u32, u32), BtfError> {
        let common = r.field("sock", "__sk_common", Expect::Struct("sock_common"))?;
        let holder = r.field_in(common.type_id, "sock_common", "skc_net", Expect::AnyStruct)?;
        let net = r.field_in(holder.type_id, "possible_net_t", "net", Expect::Pointer)?;
        let ns = r.field("net", "ns", Expect::Struct("ns_common"))?;
        let inum = r.field_in(ns.type_id, "ns_common", "inum", Expect::Bytes(4))?;
        Ok((
            common.offset + holder.offset + net.offset,
            ns.offset + inum.offset,
        ))
    };
    found().unwrap_or((0, 0))
}

/// The offset of `task_struct.pid` when `tgid` follows it directly; 0 otherwise, which is
/// no error: the programs then ask a helper for the ids.
fn task_pid(r: &Resolver) -> u32 {
    adjacent_task_fields(r, "pid", "tgid", 4)
}

/// The offset of `tcp_sock.tcp_clock_cache` (Linux 4.20), which is also its offset from
/// the `struct sock` at the head of every TCP socket; 0 when it or that head is missing,
/// which is no error: writes are then traced by entry and exit programs.
fn tcp_clock(r: &Resolver) -> u32 {
    let head_is_sock = r
        .field("tcp_sock", "inet_conn", Expect::AnyStruct)
        .is_ok_and(|f| f.offset == 0);
    match r.field("tcp_sock", "tcp_clock_cache", Expect::Bytes(8)) {
        Ok(f) if head_is_sock => f.offset,
        _ => 0,
    }
}

/// The offset of `task_struct.first` when `second`, of the same `size`, follows it
/// directly (the programs read them as a pair); 0 otherwise.
fn adjacent_task_fields(r: &Resolver, first: &'static str, second: &'static str, size: u32) -> u32 {
    let at = |field| {
        r.field("task_struct", field, Expect::Bytes(size.into()))
            .ok()
            .map(|f| f.offset)
    };
    match (at(first), at(second)) {
        (Some(a), Some(b)) if a != 0 && b == a + size => a,
        _ => 0,
    }
}

/// The `struct pt_regs` layout whose fixed argument offsets this kernel's BTF confirms.
/// Not finding one is no error: reads are then traced by entry and exit programs.
fn regs_layout(r: &Resolver) -> u32 {
    use loupe_common::regs_layout::*;
    let at = |field, size| {
        r.field("pt_regs", field, Expect::Bytes(size))
            .ok()
            .map(|f| f.offset)
    };
    if at("dx", 8) == Some(X86_64_DX)
        && at("si", 8) == Some(X86_64_SI)
        && at("di", 8) == Some(X86_64_DI)
    {
        X86_64
    } else if at("regs", 31 * 8) == Some(ARM64_REGS) && at("orig_x0", 8) == Some(ARM64_ORIG_X0) {
        ARM64
    } else {
        UNKNOWN
    }
}

/// The structs looked up by name; everything else is reached through member types.
const STRUCTS: [&str; 10] = [
    "task_struct",
    "files_struct",
    "fdtable",
    "file",
    "inode",
    "socket",
    "sock",
    "pt_regs",
    "net",
    "tcp_sock",
];

/// What a field's type must be for the kernel programs' reads to be right.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Pointer,
    Bytes(u64),
    Struct(&'static str),
    /// A struct of any name, or none (behind a typedef).
    AnyStruct,
}

/// A field found and checked: its byte offset in the struct it was looked up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    offset: u32,
    type_id: u32,
}

/// A member found by name, before its layout is checked.
struct Found {
    bit_offset: u64,
    bitfield_bits: u32,
    type_id: u32,
}

struct Resolver<'a> {
    btf: Btf<'a>,
    /// For each entry of [`STRUCTS`], the ids of the STRUCT records with that name.
    struct_ids: Vec<Vec<u32>>,
}

impl<'a> Resolver<'a> {
    fn new(data: &'a [u8]) -> Result<Self, BtfError> {
        let (btf, struct_ids) = Btf::parse(data, &STRUCTS)?;
        Ok(Self { btf, struct_ids })
    }

    /// Finds `field` in the struct named `type_name`. Several structs can share a name;
    /// the first one that has the field wins.
    fn field(
        &self,
        type_name: &'static str,
        field: &'static str,
        expect: Expect,
    ) -> Result<Field, BtfError> {
        let ids = STRUCTS
            .iter()
            .position(|&n| n == type_name)
            .and_then(|i| self.struct_ids.get(i))
            .filter(|ids| !ids.is_empty())
            .ok_or(BtfError::MissingType { name: type_name })?;
        for &id in ids {
            if let Some(found) = self.find_member(id, field, 0)? {
                return self.check(type_name, field, found, expect);
            }
        }
        Err(BtfError::MissingField { type_name, field })
    }

    /// Finds `field` in the struct or union with id `id`, named `type_name` for errors.
    fn field_in(
        &self,
        id: u32,
        type_name: &'static str,
        field: &'static str,
        expect: Expect,
    ) -> Result<Field, BtfError> {
        match self.find_member(id, field, 0)? {
            Some(found) => self.check(type_name, field, found, expect),
            None => Err(BtfError::MissingField { type_name, field }),
        }
    }

    /// Looks for a member named `field`, descending into anonymous structs and unions the
    /// way C name lookup does. Offsets of nested members are summed.
    fn find_member(&self, id: u32, field: &str, depth: u32) -> Result<Option<Found>, BtfError> {
        let Some(t) = self.btf.get(id)? else {
            return Ok(None);
        };
        if !matches!(t.kind, kind::STRUCT | kind::UNION) {
            return Ok(None);
        }
        for i in 0..t.vlen {
            let m = self.btf.member(&t, i)?;
            let (bit_offset, bitfield_bits) = if t.kind_flag {
                (m.offset & 0x00ff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            let name = self.btf.name(m.name_off)?;
            if name == field.as_bytes() {
                return Ok(Some(Found {
                    bit_offset: u64::from(bit_offset),
                    bitfield_bits,
                    type_id: m.type_id,
                }));
            }
            if !name.is_empty() {
                continue;
            }
            let (inner_id, inner) = self.btf.resolve(m.type_id)?;
            if !inner.is_some_and(|it| matches!(it.kind, kind::STRUCT | kind::UNION)) {
                continue;
            }
            if depth >= MAX_ANON_NESTING {
                return Err(BtfError::Malformed {
                    reason: "anonymous members nested too deeply",
                });
            }
            if let Some(mut found) = self.find_member(inner_id, field, depth + 1)? {
                found.bit_offset += u64::from(bit_offset);
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn check(
        &self,
        type_name: &'static str,
        field: &'static str,
        found: Found,
        expect: Expect,
    ) -> Result<Field, BtfError> {
        let bad = |problem| BtfError::UnexpectedLayout {
            type_name,
            field,
            problem,
        };
        if found.bitfield_bits != 0 {
            return Err(bad(LayoutProblem::Bitfield {
                bits: found.bitfield_bits,
            }));
        }
        if !found.bit_offset.is_multiple_of(8) {
            return Err(bad(LayoutProblem::Unaligned {
                bit_offset: found.bit_offset,
            }));
        }
        let offset =
            u32::try_from(found.bit_offset / 8).map_err(|_| bad(LayoutProblem::OffsetTooLarge))?;
        let (resolved_id, resolved) = self.btf.resolve(found.type_id)?;
        let found_kind = resolved.map_or(0, |t| t.kind);
        // Without kind_flag, older BTF marks a bitfield through the integer's own encoding.
        if let Some(t) = resolved.filter(|t| t.kind == kind::INT) {
            let encoding = self.btf.int_encoding(&t)?;
            let (bit_off, bits) = ((encoding >> 16) & 0xff, encoding & 0xff);
            if bit_off != 0 || u64::from(bits) != u64::from(t.size_or_type) * 8 {
                return Err(bad(LayoutProblem::Bitfield { bits }));
            }
        }
        match expect {
            Expect::Pointer if found_kind != kind::PTR => {
                return Err(bad(LayoutProblem::NotPointer {
                    found: kind::name(found_kind),
                }));
            }
            Expect::Pointer => {}
            Expect::Bytes(expected) => match self.btf.size_of(resolved_id)? {
                Some(size) if size == expected => {}
                Some(size) => {
                    return Err(bad(LayoutProblem::WrongSize {
                        expected,
                        found: size,
                    }));
                }
                None => {
                    return Err(bad(LayoutProblem::Unsized {
                        expected,
                        found: kind::name(found_kind),
                    }));
                }
            },
            Expect::AnyStruct => {
                if resolved.is_none_or(|t| t.kind != kind::STRUCT) {
                    return Err(bad(LayoutProblem::NotStruct { expected: "struct" }));
                }
            }
            Expect::Struct(name) => {
                let named = resolved
                    .is_some_and(|t| t.kind == kind::STRUCT && self.btf.name_is(t.name_off, name));
                if !named {
                    return Err(bad(LayoutProblem::NotStruct { expected: name }));
                }
            }
        }
        Ok(Field {
            offset,
            type_id: resolved_id,
        })
    }
}
