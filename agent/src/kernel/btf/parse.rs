//! Raw reading of a BTF blob: the header, the string section, and an index from type id
//! to type record. Every read is bounds-checked; malformed input gives
//! [`BtfError::Malformed`], never a panic.

use super::BtfError;

/// Length of the fixed part of the header every BTF version starts with.
const HEADER_MIN_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_RECORD_LEN: usize = 12;
/// `struct btf_member`: name_off, type, offset.
const MEMBER_LEN: usize = 12;
/// Bounds the walk through typedefs and qualifiers so a cyclic blob cannot hang the agent.
const MAX_REF_CHAIN: usize = 64;
/// Bounds nested arrays for the same reason.
const MAX_ARRAY_NESTING: usize = 16;

/// Type kinds, as numbered in the `info` word of a type record.
pub(super) mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;

    /// Human name of a kind, for error messages.
    pub fn name(kind: u32) -> &'static str {
        match kind {
            0 => "void",
            INT => "integer",
            PTR => "pointer",
            ARRAY => "array",
            STRUCT => "struct",
            UNION => "union",
            ENUM | ENUM64 => "enum",
            FWD => "forward declaration",
            TYPEDEF => "typedef",
            VOLATILE | CONST | RESTRICT | TYPE_TAG => "qualifier",
            FUNC | FUNC_PROTO => "function",
            VAR => "variable",
            DATASEC => "data section",
            FLOAT => "float",
            DECL_TAG => "declaration tag",
            _ => "unknown kind",
        }
    }
}

fn malformed(reason: &'static str) -> BtfError {
    BtfError::Malformed { reason }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

/// Reads fixed-width integers in the blob's byte order.
#[derive(Clone, Copy)]
struct Reader<'a> {
    data: &'a [u8],
    endian: Endian,
}

impl Reader<'_> {
    fn u32_at(&self, pos: usize) -> Option<u32> {
        let end = pos.checked_add(4)?;
        let bytes: [u8; 4] = self.data.get(pos..end)?.try_into().ok()?;
        Some(match self.endian {
            Endian::Little => u32::from_le_bytes(bytes),
            Endian::Big => u32::from_be_bytes(bytes),
        })
    }
}

/// One type record, decoded.
#[derive(Clone, Copy, Debug)]
pub(super) struct Type {
    pub kind: u32,
    /// For structs and unions: member offsets carry a bitfield size in their top 8 bits.
    pub kind_flag: bool,
    pub vlen: u16,
    pub name_off: u32,
    /// The size for sized kinds (INT, STRUCT, UNION, ENUM, FLOAT, ...), else a type id.
    pub size_or_type: u32,
    /// Offset in the type section of the kind-specific data that follows the record.
    extra: usize,
}

/// One struct or union member, with its raw offset word.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member {
    pub name_off: u32,
    pub type_id: u32,
    pub offset: u32,
}

/// A parsed BTF blob, borrowing its bytes.
pub(super) struct Btf<'a> {
    types: Reader<'a>,
    strings: &'a [u8],
    /// `index[id - 1]` is the offset in the type section of type `id`'s record.
    index: Vec<u32>,
}

/// What [`Btf::parse`] found besides the blob itself: for each wanted struct name, the ids
/// of the STRUCT records carrying that name, in type-section order.
pub(super) type StructIds = Vec<Vec<u32>>;

impl<'a> Btf<'a> {
    /// Checks the header, indexes every type record in one pass, and collects the ids of
    /// the structs named in `wanted`, so that no name index of the whole blob is built.
    pub fn parse(data: &'a [u8], wanted: &[&str]) -> Result<(Self, StructIds), BtfError> {
        let endian = match data.get(0..2) {
            Some([0x9f, 0xeb]) => Endian::Little,
            Some([0xeb, 0x9f]) => Endian::Big,
            Some(_) => return Err(malformed("bad magic, not a BTF blob")),
            None => return Err(malformed("truncated header")),
        };
        let header = Reader { data, endian };
        let version = *data.get(2).ok_or(malformed("truncated header"))?;
        if version != 1 {
            return Err(malformed("unsupported BTF version"));
        }
        let field = |pos| header.u32_at(pos).ok_or(malformed("truncated header"));
        let hdr_len = usize_from(field(4)?);
        if hdr_len < HEADER_MIN_LEN || hdr_len > data.len() {
            return Err(malformed("header length out of range"));
        }
        let section = |off: u32, len: u32, reason| {
            let start = hdr_len
                .checked_add(usize_from(off))
                .ok_or(malformed(reason))?;
            let end = start
                .checked_add(usize_from(len))
                .ok_or(malformed(reason))?;
            data.get(start..end).ok_or(malformed(reason))
        };
        let types = section(field(8)?, field(12)?, "type section out of bounds")?;
        let strings = section(field(16)?, field(20)?, "string section out of bounds")?;

        let mut btf = Btf {
            types: Reader {
                data: types,
                endian,
            },
            strings,
            // The average vmlinux record with its trailing data is a little over 16 bytes.
            index: Vec::with_capacity(types.len() / 16),
        };
        let mut found = vec![Vec::new(); wanted.len()];
        let mut pos = 0;
        while pos < types.len() {
            let t = btf.record_at(pos)?;
            let vlen = usize::from(t.vlen);
            let extra_len = match t.kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
                kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                _ => return Err(malformed("unknown type kind")),
            };
            let next = t
                .extra
                .checked_add(extra_len)
                .filter(|&end| end <= types.len())
                .ok_or(malformed("type record runs past the type section"))?;
            // The type section is at most u32::MAX bytes long (its length is a u32).
            let pos32 = u32::try_from(pos).map_err(|_| malformed("type section too large"))?;
            btf.index.push(pos32);
            if t.kind == kind::STRUCT && t.name_off != 0 {
                for (ids, name) in found.iter_mut().zip(wanted) {
                    if btf.name_is(t.name_off, name) {
                        // Cannot truncate: the index holds fewer than u32::MAX records.
                        ids.push(btf.index.len() as u32);
                    }
                }
            }
            pos = next;
        }
        Ok((btf, found))
    }

    fn record_at(&self, pos: usize) -> Result<Type, BtfError> {
        let truncated = || malformed("truncated type record");
        let name_off = self.types.u32_at(pos).ok_or_else(truncated)?;
        let info = self.types.u32_at(pos + 4).ok_or_else(truncated)?;
        let size_or_type = self.types.u32_at(pos + 8).ok_or_else(truncated)?;
        Ok(Type {
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 != 0,
            vlen: (info & 0xffff) as u16,
            name_off,
            size_or_type,
            extra: pos + TYPE_RECORD_LEN,
        })
    }

    /// The record of type `id`; `None` for id 0, which is `void`.
    pub fn get(&self, id: u32) -> Result<Option<Type>, BtfError> {
        if id == 0 {
            return Ok(None);
        }
        let pos = self
            .index
            .get(usize_from(id - 1))
            .ok_or(malformed("type id out of range"))?;
        self.record_at(usize_from(*pos)).map(Some)
    }

    /// Member `i` of a struct or union. The trailing data was bounds-checked by `parse`,
    /// but the read is checked again rather than trusted.
    pub fn member(&self, t: &Type, i: u16) -> Result<Member, BtfError> {
        let pos = t.extra + usize::from(i) * MEMBER_LEN;
        let read = |at| self.types.u32_at(at).ok_or(malformed("truncated member"));
        Ok(Member {
            name_off: read(pos)?,
            type_id: read(pos + 4)?,
            offset: read(pos + 8)?,
        })
    }

    /// The encoding word of an INT: bit offset in bits 16..24, bit count in bits 0..8.
    pub fn int_encoding(&self, t: &Type) -> Result<u32, BtfError> {
        self.types
            .u32_at(t.extra)
            .ok_or(malformed("truncated integer"))
    }

    /// Element type id and element count of an ARRAY.
    fn array(&self, t: &Type) -> Result<(u32, u32), BtfError> {
        let read = |at| self.types.u32_at(at).ok_or(malformed("truncated array"));
        Ok((read(t.extra)?, read(t.extra + 8)?))
    }

    /// The NUL-terminated string at `off` in the string section, without its NUL.
    pub fn name(&self, off: u32) -> Result<&'a [u8], BtfError> {
        let rest = self
            .strings
            .get(usize_from(off)..)
            .ok_or(malformed("string offset out of range"))?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(malformed("unterminated string"))?;
        Ok(&rest[..len])
    }

    /// Whether the string at `off` is exactly `name`, without scanning for the NUL.
    pub fn name_is(&self, off: u32, name: &str) -> bool {
        let start = usize_from(off);
        let Some(end) = start.checked_add(name.len()) else {
            return false;
        };
        self.strings.get(start..end) == Some(name.as_bytes()) && self.strings.get(end) == Some(&0)
    }

    /// Follows typedefs and qualifiers to the type they stand for. `None` is `void`.
    pub fn resolve(&self, mut id: u32) -> Result<(u32, Option<Type>), BtfError> {
        for _ in 0..MAX_REF_CHAIN {
            match self.get(id)? {
                Some(t)
                    if matches!(
                        t.kind,
                        kind::TYPEDEF
                            | kind::VOLATILE
                            | kind::CONST
                            | kind::RESTRICT
                            | kind::TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type;
                }
                other => return Ok((id, other)),
            }
        }
        Err(malformed("type reference chain too long or cyclic"))
    }

    /// Size in bytes of type `id`, or `None` for types without one (void, functions,
    /// forward declarations). Pointers are 8 bytes: loupe's kernel programs are 64-bit BPF.
    pub fn size_of(&self, id: u32) -> Result<Option<u64>, BtfError> {
        let mut id = id;
        let mut count: u64 = 1;
        for _ in 0..MAX_ARRAY_NESTING {
            let Some(t) = self.resolve(id)?.1 else {
                return Ok(None);
            };
            let size = match t.kind {
                kind::INT
                | kind::STRUCT
                | kind::UNION
                | kind::ENUM
                | kind::ENUM64
                | kind::FLOAT => u64::from(t.size_or_type),
                kind::PTR => 8,
                kind::ARRAY => {
                    let (elem, nelems) = self.array(&t)?;
                    count = count
                        .checked_mul(u64::from(nelems))
                        .ok_or(malformed("array size overflows"))?;
                    id = elem;
                    continue;
                }
                _ => return Ok(None),
            };
            return count
                .checked_mul(size)
                .map(Some)
                .ok_or(malformed("array size overflows"));
        }
        Err(malformed("arrays nested too deeply"))
    }
}

/// BTF offsets and lengths are u32; loupe only runs where usize is at least that wide.
fn usize_from(v: u32) -> usize {
    v as usize
}
