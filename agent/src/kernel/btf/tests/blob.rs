//! Builds synthetic BTF blobs, and a small fake kernel with the structs loupe reads.

use loupe_common::KernelOffsets;

use super::super::parse::kind;

/// Appends type records and strings, handing out type ids in order from 1.
pub struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
    big_endian: bool,
}

impl Blob {
    pub fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
            big_endian: false,
        }
    }

    pub fn big_endian() -> Self {
        Self {
            big_endian: true,
            ..Self::new()
        }
    }

    fn put(&mut self, v: u32) {
        let bytes = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.types.extend_from_slice(&bytes);
    }

    pub fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    /// Writes a bare type record; kind-specific data is up to the caller.
    pub fn record(
        &mut self,
        name: &str,
        kind: u32,
        kind_flag: bool,
        vlen: u16,
        size_or_type: u32,
    ) -> u32 {
        let name_off = self.str(name);
        self.record_raw(name_off, kind, kind_flag, vlen, size_or_type)
    }

    pub fn record_raw(
        &mut self,
        name_off: u32,
        kind: u32,
        kind_flag: bool,
        vlen: u16,
        size_or_type: u32,
    ) -> u32 {
        self.put(name_off);
        self.put((u32::from(kind_flag) << 31) | (kind << 24) | u32::from(vlen));
        self.put(size_or_type);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn raw(&mut self, v: u32) {
        self.put(v);
    }

    pub fn int(&mut self, name: &str, size: u32) -> u32 {
        self.int_encoded(name, size, size * 8, 0)
    }

    pub fn int_encoded(&mut self, name: &str, size: u32, bits: u32, bit_offset: u32) -> u32 {
        let id = self.record(name, kind::INT, false, 0, size);
        self.put((bit_offset << 16) | bits);
        id
    }

    pub fn ptr(&mut self, target: u32) -> u32 {
        self.record("", kind::PTR, false, 0, target)
    }

    pub fn typedef(&mut self, name: &str, target: u32) -> u32 {
        self.record(name, kind::TYPEDEF, false, 0, target)
    }

    /// A CONST, VOLATILE, RESTRICT or TYPE_TAG (the tag is named) in front of `target`.
    pub fn qualifier(&mut self, kind: u32, name: &str, target: u32) -> u32 {
        self.record(name, kind, false, 0, target)
    }

    pub fn fwd(&mut self, name: &str) -> u32 {
        self.record(name, kind::FWD, false, 0, 0)
    }

    pub fn array(&mut self, elem: u32, index: u32, nelems: u32) -> u32 {
        let id = self.record("", kind::ARRAY, false, 0, 0);
        self.put(elem);
        self.put(index);
        self.put(nelems);
        id
    }

    /// A struct or union; members are (name, type id, raw offset word).
    pub fn composite(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        kind_flag: bool,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let id = self.record(name, kind, kind_flag, members.len() as u16, size);
        for &(name, type_id, offset) in members {
            let name_off = self.str(name);
            self.put(name_off);
            self.put(type_id);
            self.put(offset);
        }
        id
    }

    /// A struct whose member offsets are given in bytes.
    pub fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        let in_bits: Vec<_> = members.iter().map(|&(n, t, off)| (n, t, off * 8)).collect();
        self.composite(kind::STRUCT, name, size, false, &in_bits)
    }

    /// A union: every member at offset 0.
    pub fn union(&mut self, name: &str, size: u32, members: &[(&str, u32)]) -> u32 {
        let at_zero: Vec<_> = members.iter().map(|&(n, t)| (n, t, 0)).collect();
        self.composite(kind::UNION, name, size, false, &at_zero)
    }

    pub fn bytes(&self) -> Vec<u8> {
        let magic = if self.big_endian {
            [0xeb, 0x9f]
        } else {
            [0x9f, 0xeb]
        };
        // Magic, version 1, flags 0.
        let mut out = vec![magic[0], magic[1], 1, 0];
        let len = |v: &Vec<u8>| v.len() as u32;
        let words = [
            24,
            0,
            len(&self.types),
            len(&self.types),
            len(&self.strings),
        ];
        for v in words {
            let bytes = if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A fake kernel with every struct loupe reads, in shapes the real kernel uses: typedef'd
/// integers, qualifiers, `__rcu` type tags, anonymous unions inside anonymous structs and
/// the reverse, a forward declaration and a same-named struct without the wanted field
/// ahead of the real ones, and a kind_flag struct holding a real bitfield elsewhere.
pub fn fake_kernel(mut b: Blob) -> Vec<u8> {
    // First, so that every truncation that loses it (it is optional) loses the rest too.
    let ulong = b.int("long unsigned int", 8);
    b.strukt(
        "pt_regs",
        168,
        &[
            ("r15", ulong, 0),
            ("dx", ulong, 96),
            ("si", ulong, 104),
            ("di", ulong, 112),
            ("orig_ax", ulong, 120),
        ],
    );
    // Also optional: a socket's network namespace, sock_common.skc_net.net -> net.ns.inum.
    let uint = b.int("unsigned int", 4);
    let any_ptr = b.ptr(0);
    let ns_common = b.strukt(
        "ns_common",
        24,
        &[
            ("stashed", any_ptr, 0),
            ("ops", any_ptr, 8),
            ("inum", uint, 16),
        ],
    );
    let net = b.strukt("net", 256, &[("passive", uint, 0), ("ns", ns_common, 120)]);
    let net_ptr = b.ptr(net);
    let possible_net = b.strukt("", 8, &[("net", net_ptr, 0)]);
    let possible_net_t = b.typedef("possible_net_t", possible_net);
    let u8_ = b.int("unsigned char", 1);
    let u16_ = b.int("unsigned short", 2);
    let short = b.int("short", 2);
    let u32_ = b.int("unsigned int", 4);
    let u64_ = b.int("long long unsigned int", 8);
    let int_ = b.int("int", 4);
    let t_u16 = b.typedef("__u16", u16_);
    let be16 = b.typedef("__be16", t_u16);
    let t_u32 = b.typedef("__u32", u32_);
    let be32 = b.typedef("__be32", t_u32);
    let umode = b.typedef("umode_t", u16_);
    let portpair = b.typedef("__portpair", t_u32);
    let addrpair = b.typedef("__addrpair", u64_);
    let void_ptr = b.ptr(0);
    let volatile_u8 = b.qualifier(kind::VOLATILE, "", u8_);

    // Forward declarations are not definitions and must not be picked.
    let fwd_files = b.fwd("files_struct");
    let fwd_fdtable = b.fwd("fdtable");
    let fwd_file = b.fwd("file");
    let fwd_inode = b.fwd("inode");
    b.fwd("sock");
    let files_ptr = b.ptr(fwd_files);
    let rcu_fdtable = b.qualifier(kind::TYPE_TAG, "rcu", fwd_fdtable);
    let fdtable_ptr = b.ptr(rcu_fdtable);
    let file_ptr = b.ptr(fwd_file);
    let rcu_file_ptr = b.qualifier(kind::TYPE_TAG, "rcu", file_ptr);
    let file_ptr_ptr = b.ptr(rcu_file_ptr);
    let inode_ptr = b.ptr(fwd_inode);
    let const_inode_ptr = b.qualifier(kind::CONST, "", inode_ptr);

    b.strukt(
        "task_struct",
        4000,
        &[
            ("__state", u32_, 0),
            ("pid", int_, 1560),
            ("tgid", int_, 1564),
            ("files", files_ptr, 2456),
        ],
    );
    b.strukt(
        "files_struct",
        64,
        &[("count", int_, 0), ("fdt", fdtable_ptr, 32)],
    );
    // A same-named struct without the fields comes first.
    b.strukt("fdtable", 8, &[("unrelated", u64_, 0)]);
    b.strukt(
        "fdtable",
        32,
        &[
            ("next", u32_, 0),
            ("max_fds", u32_, 4),
            ("fd", file_ptr_ptr, 8),
        ],
    );

    // file: f_inode sits in an anonymous union inside an anonymous struct.
    let file_union = b.union("", 8, &[("f_inode", const_inode_ptr), ("f_other", u64_)]);
    let file_anon = b.strukt("", 16, &[("f_mode", u32_, 0), ("", file_union, 8)]);
    b.strukt(
        "file",
        232,
        &[
            ("f_count", u64_, 0),
            ("", file_anon, 8),
            ("private_data", void_ptr, 192),
        ],
    );
    b.strukt(
        "inode",
        600,
        &[("i_opflags", short, 0), ("i_mode", umode, 4)],
    );
    let sock_ptr = b.ptr(0);
    b.strukt(
        "socket",
        128,
        &[
            ("state", int_, 0),
            ("type", short, 4),
            ("flags", u64_, 8),
            ("sk", sock_ptr, 24),
        ],
    );

    // sock_common: the address and port pairs are anonymous structs inside anonymous unions.
    let u8x16 = b.array(u8_, int_, 16);
    let in6_union = b.union("", 16, &[("u6_addr8", u8x16)]);
    let in6 = b.strukt("in6_addr", 16, &[("in6_u", in6_union, 0)]);
    let addrs = b.strukt("", 8, &[("skc_daddr", be32, 0), ("skc_rcv_saddr", be32, 4)]);
    let addr_union = b.union("", 8, &[("skc_addrpair", addrpair), ("", addrs)]);
    let u16x2 = b.array(u16_, int_, 2);
    let hash_union = b.union("", 4, &[("skc_hash", u32_), ("skc_u16hashes", u16x2)]);
    let ports = b.strukt("", 4, &[("skc_dport", be16, 0), ("skc_num", t_u16, 2)]);
    let port_union = b.union("", 4, &[("skc_portpair", portpair), ("", ports)]);
    let sock_common = b.strukt(
        "sock_common",
        136,
        &[
            ("", addr_union, 0),
            ("", hash_union, 8),
            ("", port_union, 12),
            ("skc_family", u16_, 16),
            ("skc_state", volatile_u8, 18),
            ("skc_net", possible_net_t, 48),
            ("skc_v6_daddr", in6, 56),
            ("skc_v6_rcv_saddr", in6, 72),
            ("skc_cookie", u64_, 88),
        ],
    );
    // kind_flag struct: offsets carry a bitfield size in their top byte, zero for plain
    // members.
    let sock = b.composite(
        kind::STRUCT,
        "sock",
        800,
        true,
        &[
            ("sk_pre", u64_, 0),
            ("__sk_common", sock_common, 16 * 8),
            ("sk_padding", u8_, (1 << 24) | (512 * 8)),
            ("sk_protocol", t_u16, 516 * 8),
            ("sk_type", u16_, 518 * 8),
        ],
    );
    // tcp_sock: the sock at its head (through inet_connection_sock), then its own fields.
    let inet_conn = b.strukt("inet_connection_sock", 1400, &[("icsk_inet", sock, 0)]);
    b.strukt(
        "tcp_sock",
        2400,
        &[
            ("inet_conn", inet_conn, 0),
            ("tcp_mstamp", u64_, 1920),
            ("tcp_clock_cache", u64_, 1928),
        ],
    );
    b.bytes()
}

pub const FAKE_OFFSETS: KernelOffsets = KernelOffsets {
    task_files: 2456,
    files_fdt: 32,
    fdtable_max_fds: 4,
    fdtable_fd: 8,
    file_private_data: 192,
    file_f_inode: 16,
    inode_i_mode: 4,
    socket_type: 4,
    socket_sk: 24,
    sock_family: 32,
    sock_daddr: 16,
    sock_rcv_saddr: 20,
    sock_dport: 28,
    sock_num: 30,
    sock_v6_daddr: 72,
    sock_v6_rcv_saddr: 88,
    sock_protocol: 516,
    regs_layout: loupe_common::regs_layout::X86_64,
    tcp_clock: 1928,
    task_pid: 1560,
    sock_net: 64,
    net_inum: 136,
    sock_cookie: 104,
    file_refs: 0,
    file_refs_kind: loupe_common::file_refs::COUNT,
};
