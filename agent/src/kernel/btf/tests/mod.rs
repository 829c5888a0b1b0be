mod blob;

use std::time::Instant;

use blob::{Blob, FAKE_OFFSETS, fake_kernel};
use loupe_common::KernelOffsets;
use proptest::prelude::*;

use super::parse::kind;
use super::{
    BtfError, Expect, LayoutProblem, Resolver, VMLINUX_BTF, kernel_offsets, offsets_from_file,
    regs_layout, resolve_offsets, task_pid, tcp_clock,
};

fn malformed_reason(r: Result<KernelOffsets, BtfError>) -> &'static str {
    match r {
        Err(BtfError::Malformed { reason }) => reason,
        other => panic!("expected a malformed-BTF error, got {other:?}"),
    }
}

/// Looks one field up in a small blob.
fn lookup(data: &[u8], ty: &'static str, field: &'static str, e: Expect) -> Result<u32, BtfError> {
    Resolver::new(data)?.field(ty, field, e).map(|f| f.offset)
}

fn layout_problem(r: Result<u32, BtfError>) -> LayoutProblem {
    match r {
        Err(BtfError::UnexpectedLayout { problem, .. }) => problem,
        other => panic!("expected a layout error, got {other:?}"),
    }
}

#[test]
fn resolves_fake_kernel() {
    let offsets = resolve_offsets(&fake_kernel(Blob::new())).expect("resolves");
    assert_eq!(offsets, FAKE_OFFSETS);
}

#[test]
fn pt_regs_layouts_are_recognised_only_at_the_fixed_offsets() {
    use loupe_common::regs_layout::{ARM64, UNKNOWN, X86_64};
    let layout = |members: &[(&str, u32)]| {
        let mut b = Blob::new();
        let ulong = b.int("long unsigned int", 8);
        let int_ = b.int("int", 4);
        let regs = b.array(ulong, int_, 31);
        let fields: Vec<(&str, u32, u32)> = members
            .iter()
            .map(|&(name, off)| (name, if name == "regs" { regs } else { ulong }, off))
            .collect();
        b.strukt("pt_regs", 336, &fields);
        regs_layout(&Resolver::new(&b.bytes()).expect("parses"))
    };
    assert_eq!(layout(&[("dx", 96), ("si", 104), ("di", 112)]), X86_64);
    // arm64 keeps the general registers in an array and the first argument in orig_x0.
    assert_eq!(layout(&[("regs", 0), ("orig_x0", 272)]), ARM64);
    // Any other placement falls back to entry programs rather than reading wrong registers.
    assert_eq!(layout(&[("dx", 96), ("si", 104), ("di", 120)]), UNKNOWN);
    assert_eq!(layout(&[("regs", 8), ("orig_x0", 272)]), UNKNOWN);
    assert_eq!(layout(&[("ax", 80)]), UNKNOWN);
    // A kernel without pt_regs in its BTF is no error either.
    let mut b = Blob::new();
    b.int("int", 4);
    assert_eq!(
        regs_layout(&Resolver::new(&b.bytes()).expect("parses")),
        UNKNOWN
    );
}

/// `resolve` on a task_struct holding `members`, each of an integer type `name` of `size`.
fn on_task(name: &str, size: u32, members: &[(&str, u32)], resolve: fn(&Resolver) -> u32) -> u32 {
    let mut b = Blob::new();
    let int = b.int(name, size);
    let fields: Vec<(&str, u32, u32)> = members.iter().map(|&(n, off)| (n, int, off)).collect();
    b.strukt("task_struct", 4000, &fields);
    resolve(&Resolver::new(&b.bytes()).expect("parses"))
}

#[test]
fn the_send_clock_is_used_only_behind_a_sock_head() {
    let clock = |head_at: Option<u32>, clock: Option<(u32, u32)>| {
        let mut b = Blob::new();
        let u64_ = b.int("long long unsigned int", 8);
        let u32_ = b.int("unsigned int", 4);
        let head = b.strukt("inet_connection_sock", 1400, &[("icsk_pending", u32_, 0)]);
        let mut fields = Vec::new();
        if let Some(at) = head_at {
            fields.push(("inet_conn", head, at));
        }
        if let Some((size, at)) = clock {
            fields.push(("tcp_clock_cache", if size == 8 { u64_ } else { u32_ }, at));
        }
        b.strukt("tcp_sock", 2400, &fields);
        tcp_clock(&Resolver::new(&b.bytes()).expect("parses"))
    };
    assert_eq!(clock(Some(0), Some((8, 1928))), 1928);
    // Without the sock at the head, of another size, or missing (before Linux 4.20):
    // writes keep their entry programs.
    assert_eq!(clock(Some(8), Some((8, 1928))), 0);
    assert_eq!(clock(None, Some((8, 1928))), 0);
    assert_eq!(clock(Some(0), Some((4, 1928))), 0);
    assert_eq!(clock(Some(0), None), 0);
}

#[test]
fn thread_ids_are_read_from_the_task_only_side_by_side() {
    let pid = |members: &[(&str, u32)]| on_task("int", 4, members, task_pid);
    assert_eq!(pid(&[("pid", 1560), ("tgid", 1564)]), 1560);
    // Apart, in the other order, or missing: the programs ask the helper.
    assert_eq!(pid(&[("pid", 1560), ("tgid", 1568)]), 0);
    assert_eq!(pid(&[("tgid", 1560), ("pid", 1564)]), 0);
    assert_eq!(pid(&[("pid", 1560)]), 0);
}

#[test]
fn file_references_are_found_under_either_name() {
    use loupe_common::file_refs::{COUNT, REF};
    // The fake kernel's `file` has `f_count` (before Linux 6.13).
    let offsets = resolve_offsets(&fake_kernel(Blob::new())).expect("resolves");
    assert_eq!((offsets.file_refs, offsets.file_refs_kind), (0, COUNT));
    // Linux 6.13 renamed it `f_ref`, a `file_ref_t` wrapping an `atomic_long_t`; a
    // same-named `file` that comes first has it, and is picked for it.
    let mut b = Blob::new();
    let long = b.int("long int", 8);
    let atomic = b.strukt("", 8, &[("counter", long, 0)]);
    let atomic_long = b.typedef("atomic_long_t", atomic);
    let file_ref = b.strukt("", 8, &[("refcnt", atomic_long, 0)]);
    let file_ref_t = b.typedef("file_ref_t", file_ref);
    let u32_ = b.int("unsigned int", 4);
    b.strukt("file", 16, &[("f_lock", u32_, 0), ("f_ref", file_ref_t, 8)]);
    let offsets = resolve_offsets(&fake_kernel(b)).expect("resolves");
    assert_eq!((offsets.file_refs, offsets.file_refs_kind), (8, REF));
    // A count of the wrong size is not used.
    let mut b = Blob::new();
    let u32_ = b.int("unsigned int", 4);
    b.strukt("file", 16, &[("f_ref", u32_, 0)]);
    let offsets = resolve_offsets(&fake_kernel(b)).expect("resolves");
    assert_eq!((offsets.file_refs, offsets.file_refs_kind), (0, COUNT));
}

#[test]
fn resolves_big_endian_blob() {
    let offsets = resolve_offsets(&fake_kernel(Blob::big_endian())).expect("resolves");
    assert_eq!(offsets, FAKE_OFFSETS);
}

#[test]
fn plain_member_and_typedef_size() {
    let mut b = Blob::new();
    let u16_ = b.int("unsigned short", 2);
    let u8_ = b.int("unsigned char", 1);
    let td = b.typedef("umode_t", u16_);
    let td2 = b.typedef("outer_t", td);
    let small = b.typedef("small_t", u8_);
    b.strukt(
        "inode",
        16,
        &[
            ("i_flags", u8_, 0),
            ("i_mode", td2, 6),
            ("i_small", small, 8),
        ],
    );
    let data = b.bytes();
    assert_eq!(
        lookup(&data, "inode", "i_mode", Expect::Bytes(2)).expect("found"),
        6
    );
    // The typedef is followed to the 1-byte integer behind it.
    assert_eq!(
        layout_problem(lookup(&data, "inode", "i_small", Expect::Bytes(2))),
        LayoutProblem::WrongSize {
            expected: 2,
            found: 1
        }
    );
    assert_eq!(
        layout_problem(lookup(&data, "inode", "i_mode", Expect::Pointer)),
        LayoutProblem::NotPointer { found: "integer" }
    );
}

#[test]
fn member_in_anonymous_union_in_anonymous_struct() {
    let mut b = Blob::new();
    let u32_ = b.int("unsigned int", 4);
    let p = b.ptr(0);
    let un = b.union("", 8, &[("a", u32_), ("target", p)]);
    let st = b.strukt("", 24, &[("x", u32_, 0), ("", un, 16)]);
    b.strukt("file", 64, &[("y", u32_, 0), ("", st, 8)]);
    let data = b.bytes();
    assert_eq!(
        lookup(&data, "file", "target", Expect::Pointer).expect("found"),
        24
    );
    assert_eq!(
        lookup(&data, "file", "a", Expect::Bytes(4)).expect("found"),
        24
    );
    assert_eq!(
        lookup(&data, "file", "x", Expect::Bytes(4)).expect("found"),
        8
    );
}

#[test]
fn bitfields_are_rejected() {
    let mut b = Blob::new();
    let u16_ = b.int("unsigned short", 2);
    // Old-style bitfield: the integer type itself is narrower than its storage.
    let narrow = b.int_encoded("unsigned int", 4, 8, 0);
    b.composite(
        kind::STRUCT,
        "sock",
        16,
        true,
        &[("sk_protocol", u16_, (8 << 24) | 32), ("sk_fine", u16_, 64)],
    );
    b.strukt("socket", 8, &[("type", narrow, 0)]);
    let data = b.bytes();
    assert_eq!(
        layout_problem(lookup(&data, "sock", "sk_protocol", Expect::Bytes(2))),
        LayoutProblem::Bitfield { bits: 8 }
    );
    assert_eq!(
        lookup(&data, "sock", "sk_fine", Expect::Bytes(2)).expect("found"),
        8
    );
    assert_eq!(
        layout_problem(lookup(&data, "socket", "type", Expect::Bytes(4))),
        LayoutProblem::Bitfield { bits: 8 }
    );
}

#[test]
fn unaligned_member_is_rejected() {
    let mut b = Blob::new();
    let u16_ = b.int("unsigned short", 2);
    b.composite(
        kind::STRUCT,
        "sock",
        16,
        false,
        &[("sk_protocol", u16_, 36)],
    );
    let err = lookup(&b.bytes(), "sock", "sk_protocol", Expect::Bytes(2));
    assert_eq!(
        layout_problem(err),
        LayoutProblem::Unaligned { bit_offset: 36 }
    );
}

#[test]
fn wrong_struct_behind_named_member_is_rejected() {
    let mut b = Blob::new();
    let u32_ = b.int("unsigned int", 4);
    let other = b.strukt("not_sock_common", 4, &[("x", u32_, 0)]);
    b.strukt("sock", 8, &[("__sk_common", other, 0)]);
    let err = resolve_offsets(&b.bytes());
    // task_struct is looked up first and absent; check the sock_common check directly.
    assert!(matches!(
        err,
        Err(BtfError::MissingType {
            name: "task_struct"
        })
    ));
    let err = lookup(
        &b.bytes(),
        "sock",
        "__sk_common",
        Expect::Struct("sock_common"),
    );
    assert_eq!(
        layout_problem(err),
        LayoutProblem::NotStruct {
            expected: "sock_common"
        }
    );
}

#[test]
fn missing_type_and_field() {
    let mut b = Blob::new();
    let p = b.ptr(0);
    // Only a forward declaration of task_struct: not a definition.
    b.fwd("task_struct");
    b.strukt("files_struct", 8, &[("fdt", p, 0)]);
    let data = b.bytes();
    assert!(matches!(
        resolve_offsets(&data),
        Err(BtfError::MissingType {
            name: "task_struct"
        })
    ));
    assert!(matches!(
        lookup(&data, "files_struct", "fd_array", Expect::Pointer),
        Err(BtfError::MissingField {
            type_name: "files_struct",
            field: "fd_array"
        })
    ));
    let msg = lookup(&data, "files_struct", "fd_array", Expect::Pointer)
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "kernel BTF: struct files_struct has no field fd_array");
}

#[test]
fn same_named_structs_pick_the_one_with_the_field() {
    let mut b = Blob::new();
    let u32_ = b.int("unsigned int", 4);
    b.strukt("fdtable", 4, &[("other", u32_, 0)]);
    b.strukt("fdtable", 8, &[("pad", u32_, 0), ("max_fds", u32_, 4)]);
    let data = b.bytes();
    assert_eq!(
        lookup(&data, "fdtable", "max_fds", Expect::Bytes(4)).expect("found"),
        4
    );
}

#[test]
fn bad_magic_and_version() {
    let mut data = fake_kernel(Blob::new());
    data[0] = 0x00;
    assert_eq!(
        malformed_reason(resolve_offsets(&data)),
        "bad magic, not a BTF blob"
    );
    let mut data = fake_kernel(Blob::new());
    data[2] = 2;
    assert_eq!(
        malformed_reason(resolve_offsets(&data)),
        "unsupported BTF version"
    );
    assert_eq!(malformed_reason(resolve_offsets(&[])), "truncated header");
}

#[test]
fn every_truncation_is_an_error() {
    let data = fake_kernel(Blob::new());
    for len in 0..data.len() {
        // A cut blob leaves the header pointing past its end.
        assert!(
            matches!(
                resolve_offsets(&data[..len]),
                Err(BtfError::Malformed { .. })
            ),
            "prefix of {len} bytes"
        );
    }
    // A shortened type section cuts records in the middle, or drops the structs wanted;
    // dropping only the optional ones at its end (tcp_sock) leaves their offsets at 0.
    let type_len = u32::from_le_bytes(data[12..16].try_into().expect("4 bytes"));
    let without_send_clock = KernelOffsets {
        tcp_clock: 0,
        ..FAKE_OFFSETS
    };
    for cut in 0..type_len {
        let mut d = data.clone();
        d[12..16].copy_from_slice(&cut.to_le_bytes());
        if let Ok(offsets) = resolve_offsets(&d) {
            assert_eq!(
                offsets, without_send_clock,
                "type section cut to {cut} bytes"
            );
            continue;
        }
        if cut % 4 != 0 {
            let reason = malformed_reason(resolve_offsets(&d));
            assert!(
                reason == "truncated type record"
                    || reason == "type record runs past the type section",
                "type section cut to {cut} bytes: {reason}"
            );
        }
    }
}

#[test]
fn sections_past_the_end() {
    let data = fake_kernel(Blob::new());
    let set = |pos: usize, v: u32| {
        let mut d = data.clone();
        d[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
        d
    };
    let type_len = u32::from_le_bytes(data[12..16].try_into().expect("4 bytes"));
    let reason = |d: Vec<u8>| malformed_reason(resolve_offsets(&d));
    assert_eq!(
        reason(set(12, type_len + 4096)),
        "type section out of bounds"
    );
    assert_eq!(reason(set(12, u32::MAX)), "type section out of bounds");
    assert_eq!(reason(set(8, u32::MAX)), "type section out of bounds");
    assert_eq!(reason(set(16, u32::MAX)), "string section out of bounds");
    assert_eq!(reason(set(4, 12)), "header length out of range");
    assert_eq!(reason(set(4, u32::MAX)), "header length out of range");
}

#[test]
fn bad_records_are_malformed() {
    // A struct claiming more members than the section holds.
    let mut b = Blob::new();
    b.record("task_struct", kind::STRUCT, false, 5, 8);
    let reason = malformed_reason(resolve_offsets(&b.bytes()));
    assert_eq!(reason, "type record runs past the type section");

    let mut b = Blob::new();
    b.record("x", 31, false, 0, 0);
    assert_eq!(
        malformed_reason(resolve_offsets(&b.bytes())),
        "unknown type kind"
    );

    // A member whose name lies outside the string section.
    let mut b = Blob::new();
    let p = b.ptr(0);
    let name = b.str("task_struct");
    b.record_raw(name, kind::STRUCT, false, 1, 8);
    for v in [0xffff, p, 0] {
        b.raw(v);
    }
    assert_eq!(
        malformed_reason(resolve_offsets(&b.bytes())),
        "string offset out of range"
    );

    // A member whose type id does not exist.
    let mut b = Blob::new();
    b.strukt("task_struct", 8, &[("files", 999, 0)]);
    assert_eq!(
        malformed_reason(resolve_offsets(&b.bytes())),
        "type id out of range"
    );

    // Typedefs that refer to each other.
    let mut b = Blob::new();
    b.typedef("a", 2);
    b.typedef("b", 1);
    b.strukt("task_struct", 8, &[("files", 1, 0)]);
    let reason = malformed_reason(resolve_offsets(&b.bytes()));
    assert_eq!(reason, "type reference chain too long or cyclic");

    // An anonymous struct that contains itself.
    let mut b = Blob::new();
    b.strukt("", 8, &[("", 1, 0)]);
    b.strukt("task_struct", 8, &[("", 1, 0)]);
    let reason = malformed_reason(resolve_offsets(&b.bytes()));
    assert_eq!(reason, "anonymous members nested too deeply");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Corrupting any bytes of a valid blob gives a result or an error, never a panic.
    #[test]
    fn corrupted_blobs_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut data = fake_kernel(Blob::new());
        let len = data.len();
        for (pos, byte) in edits {
            data[pos % len] = byte;
        }
        let _ = resolve_offsets(&data);
    }
}

#[test]
fn running_kernel_offsets_are_plausible() {
    let data = std::fs::read(VMLINUX_BTF).expect("kernel BTF is readable");
    let start = Instant::now();
    let o = resolve_offsets(&data).expect("running kernel resolves");
    let elapsed = start.elapsed();
    eprintln!(
        "resolved {} bytes of BTF in {elapsed:?}: {o:#?}",
        data.len()
    );

    assert_eq!(
        o.sock_num,
        o.sock_dport + 2,
        "skc_dport and skc_num share skc_portpair"
    );
    assert_eq!(
        o.sock_rcv_saddr,
        o.sock_daddr + 4,
        "skc_daddr then skc_rcv_saddr"
    );
    assert_eq!(o.sock_v6_rcv_saddr, o.sock_v6_daddr + 16);
    for (name, off) in [
        ("task_files", o.task_files),
        ("files_fdt", o.files_fdt),
        ("fdtable_fd", o.fdtable_fd),
        ("file_private_data", o.file_private_data),
        ("file_f_inode", o.file_f_inode),
        ("socket_sk", o.socket_sk),
    ] {
        assert_eq!(off % 8, 0, "{name} at {off} is not pointer-aligned");
    }
    assert_ne!(o.file_private_data, o.file_f_inode);
    assert_ne!(o.socket_type, o.socket_sk);
    assert_eq!(o.sock_family % 2, 0);
    assert!(o.task_files > 0 && o.task_files < 16384);
    // sock_common is the head of sock; sk_protocol comes after it.
    assert!(o.sock_protocol > o.sock_v6_rcv_saddr);
    assert!(o.sock_family < 136 && o.sock_daddr < 136);
    assert!(o.tcp_clock > 0 && o.tcp_clock < 16384 && o.tcp_clock.is_multiple_of(8));
    assert!(o.task_pid > 0 && o.task_pid < 16384);
    // skc_net sits in sock_common, the head of sock; ns.inum somewhere in struct net.
    eprintln!("sock_net {} net_inum {}", o.sock_net, o.net_inum);
    assert!(o.sock_net > 0 && o.sock_net < 136 && o.sock_net.is_multiple_of(8));
    assert!(o.net_inum > 0 && o.net_inum < 16384 && o.net_inum.is_multiple_of(4));
    assert_ne!(o.file_refs_kind, loupe_common::file_refs::UNKNOWN);
    assert!(o.file_refs < 1024 && o.file_refs.is_multiple_of(8));
    #[cfg(target_arch = "x86_64")]
    assert_eq!(o.regs_layout, loupe_common::regs_layout::X86_64);
    #[cfg(target_arch = "aarch64")]
    assert_eq!(o.regs_layout, loupe_common::regs_layout::ARM64);

    let start = Instant::now();
    assert_eq!(kernel_offsets().expect("reads and resolves"), o);
    eprintln!("read and resolved {VMLINUX_BTF} in {:?}", start.elapsed());
}

#[test]
fn reading_a_missing_file_names_it() {
    let path = std::path::Path::new("/nonexistent/loupe/vmlinux");
    let err = offsets_from_file(path).expect_err("no such file");
    assert!(matches!(&err, BtfError::Read { path: p, .. } if p == path));
    assert_eq!(
        err.to_string(),
        "cannot read kernel BTF from /nonexistent/loupe/vmlinux"
    );
}
