//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct member, including members nested in anonymous structs and
//! unions (task_struct keeps many there). Format: Documentation/bpf/btf.rst.
use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// In bits.
    offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    /// Referenced type for typedef/const/volatile/restrict/type_tag.
    referenced: u32,
    members: Vec<Member>,
    /// Enumerators (name offset, value) of an enum.
    enumerators: Vec<(u32, i64)>,
}

/// Parsed kernel type information (only what member lookups need).
pub struct Btf {
    strings: Vec<u8>,
    /// Index `id - 1` holds type `id` (type 0 is void).
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
    enums_by_name: HashMap<String, u32>,
}

impl Btf {
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&data).with_context(|| format!("parsing BTF in {}", path.display()))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        ensure!(data.len() >= HEADER_LEN, "file too short for a BTF header");
        ensure!(
            u16::from_le_bytes([data[0], data[1]]) == MAGIC,
            "not BTF (bad magic)"
        );
        let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let hdr_len = word(4);
        let (type_off, type_len, str_off, str_len) = (word(8), word(12), word(16), word(20));
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let type_data = section(type_off, type_len).context("type section out of bounds")?;
        let strings = section(str_off, str_len)
            .context("string section out of bounds")?
            .to_vec();
        let types = parse_types(type_data)?;
        let mut btf = Self {
            strings,
            types,
            structs_by_name: HashMap::new(),
            enums_by_name: HashMap::new(),
        };
        for (index, ty) in btf.types.iter().enumerate() {
            let names = match ty.kind {
                KIND_STRUCT => &mut btf.structs_by_name,
                KIND_ENUM | KIND_ENUM64 => &mut btf.enums_by_name,
                _ => continue,
            };
            if ty.name_off != 0 {
                let name = string_at(&btf.strings, ty.name_off).to_string();
                names.entry(name).or_insert(index as u32 + 1);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        string_at(&self.strings, offset)
    }

    fn get(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.referenced
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// The enumerators of `enum name`, as (name, value).
    pub fn enum_values(&self, enum_name: &str) -> Result<Vec<(String, i64)>> {
        let id = *self
            .enums_by_name
            .get(enum_name)
            .with_context(|| format!("enum {enum_name} not found in BTF"))?;
        let ty = self.get(id).expect("indexed id exists");
        Ok(ty
            .enumerators
            .iter()
            .map(|&(name_off, value)| (self.string(name_off).to_string(), value))
            .collect())
    }

    /// Byte offset of `member` in `struct name`, searching anonymous structs and unions.
    /// A dotted path (`sk_lock.owned`) descends into named struct members.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32> {
        let id = *self
            .structs_by_name
            .get(struct_name)
            .with_context(|| format!("struct {struct_name} not found in BTF"))?;
        let mut ty = self.get(id).expect("indexed id exists");
        let mut bits = 0;
        let mut path = member.split('.').peekable();
        while let Some(name) = path.next() {
            let (offset, type_id) = self
                .find_member(ty, name, 0)
                .with_context(|| format!("{struct_name}.{member} not found in BTF"))?;
            bits += offset;
            if path.peek().is_some() {
                ty = self
                    .resolve(type_id)
                    .filter(|inner| matches!(inner.kind, KIND_STRUCT | KIND_UNION))
                    .with_context(|| format!("{struct_name}.{member}: {name} is not a struct"))?;
            }
        }
        if bits % 8 != 0 {
            bail!("{struct_name}.{member} is a bitfield");
        }
        Ok(bits / 8)
    }

    /// `sizeof(struct struct_name)`: BTF keeps a struct's size where other kinds keep
    /// the type they refer to.
    pub fn struct_size(&self, struct_name: &str) -> Result<u32> {
        let id = *self
            .structs_by_name
            .get(struct_name)
            .with_context(|| format!("struct {struct_name} not found in BTF"))?;
        Ok(self.get(id).expect("indexed id exists").referenced)
    }

    /// A member's offset in bits and its type.
    fn find_member(&self, ty: &Type, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for m in &ty.members {
            if m.name_off != 0 {
                if self.string(m.name_off) == member {
                    return Some((m.offset, m.type_id));
                }
            } else if let Some(inner) = self.resolve(m.type_id)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some((bits, type_id)) = self.find_member(inner, member, depth + 1)
            {
                return Some((m.offset + bits, type_id));
            }
        }
        None
    }
}

/// The NUL-terminated string at `offset` of the string section.
fn string_at(strings: &[u8], offset: u32) -> &str {
    let tail = strings.get(offset as usize..).unwrap_or(&[]);
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    std::str::from_utf8(&tail[..end]).unwrap_or("")
}

fn parse_types(data: &[u8]) -> Result<Vec<Type>> {
    let mut types = Vec::new();
    let mut at = 0usize;
    let word = |at: usize| -> Result<u32> {
        let bytes = data.get(at..at + 4).context("type section truncated")?;
        Ok(u32::from_le_bytes(bytes.try_into().unwrap()))
    };
    while at < data.len() {
        let name_off = word(at)?;
        let info = word(at + 4)?;
        let size_or_type = word(at + 8)?;
        at += 12;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let mut members = Vec::new();
        let mut enumerators = Vec::new();
        let trailing = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION => {
                for i in 0..vlen {
                    let base = at + i * 12;
                    let raw_offset = word(base + 8)?;
                    members.push(Member {
                        name_off: word(base)?,
                        type_id: word(base + 4)?,
                        // With kind_flag the top 8 bits hold a bitfield size.
                        offset: if kind_flag {
                            raw_offset & 0x00ff_ffff
                        } else {
                            raw_offset
                        },
                    });
                }
                vlen * 12
            }
            KIND_ENUM => {
                for i in 0..vlen {
                    let base = at + i * 8;
                    enumerators.push((word(base)?, word(base + 4)? as i32 as i64));
                }
                vlen * 8
            }
            KIND_ENUM64 => {
                for i in 0..vlen {
                    let base = at + i * 12;
                    let value = ((word(base + 8)? as u64) << 32) | word(base + 4)? as u64;
                    enumerators.push((word(base)?, value as i64));
                }
                vlen * 12
            }
            KIND_FUNC_PROTO => vlen * 8,
            KIND_DATASEC => vlen * 12,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            other => bail!("unknown BTF kind {other} at byte {}", at - 12),
        };
        at += trailing;
        ensure!(at <= data.len(), "type section truncated");
        types.push(Type {
            name_off,
            kind,
            referenced: size_or_type,
            members,
            enumerators,
        });
    }
    Ok(types)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF blobs for tests.
    #[derive(Default)]
    pub struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BtfBuilder {
        pub fn new() -> Self {
            Self {
                strings: vec![0],
                next_id: 1,
                ..Default::default()
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            let name_off = self.string(name);
            for w in [name_off, (kind << 24) | vlen, size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.push(name, KIND_INT, 0, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        pub fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.push(name, KIND_TYPEDEF, 0, target)
        }

        /// `members`: (name, type id, byte offset).
        pub fn composite(&mut self, union: bool, name: &str, members: &[(&str, u32, u32)]) -> u32 {
            let kind = if union { KIND_UNION } else { KIND_STRUCT };
            let id = self.push(name, kind, members.len() as u32, 64);
            for &(member, ty, byte_offset) in members {
                let name_off = self.string(member);
                for w in [name_off, ty, byte_offset * 8] {
                    self.types.extend_from_slice(&w.to_le_bytes());
                }
            }
            id
        }

        pub fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
            let id = self.push(name, KIND_ENUM, values.len() as u32, 4);
            for &(enumerator, value) in values {
                let name_off = self.string(enumerator);
                self.types.extend_from_slice(&name_off.to_le_bytes());
                self.types.extend_from_slice(&value.to_le_bytes());
            }
            id
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    #[test]
    fn finds_members_directly_and_inside_anonymous_composites() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let pid_t = b.typedef("pid_t", int);
        let inner = b.composite(false, "", &[("exit_code", int, 4), ("tgid", pid_t, 8)]);
        let anon_union = b.composite(true, "", &[("", inner, 0), ("other", int, 0)]);
        b.composite(
            false,
            "task_struct",
            &[("state", int, 0), ("", anon_union, 16)],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.member_offset("task_struct", "state").unwrap(), 0);
        assert_eq!(btf.member_offset("task_struct", "exit_code").unwrap(), 20);
        assert_eq!(btf.member_offset("task_struct", "tgid").unwrap(), 24);
        let missing = btf.member_offset("task_struct", "nope").unwrap_err();
        assert!(
            missing.to_string().contains("task_struct.nope"),
            "{missing}"
        );
        assert!(btf.member_offset("mm_struct", "x").is_err());
    }

    #[test]
    fn follows_a_dotted_path_through_a_typedef() {
        // struct sock { ...; socket_lock_t sk_lock; } with
        // typedef struct { spinlock_t slock; int owned; } socket_lock_t.
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let lock = b.composite(false, "", &[("slock", int, 0), ("owned", int, 4)]);
        let socket_lock_t = b.typedef("socket_lock_t", lock);
        b.composite(
            false,
            "sock",
            &[("sk_state", int, 0), ("sk_lock", socket_lock_t, 136)],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.member_offset("sock", "sk_lock.owned").unwrap(), 140);
        assert_eq!(btf.member_offset("sock", "sk_lock").unwrap(), 136);
        let not_struct = btf.member_offset("sock", "sk_state.x").unwrap_err();
        assert!(
            not_struct.to_string().contains("not a struct"),
            "{not_struct}"
        );
        assert!(btf.member_offset("sock", "sk_lock.nope").is_err());
    }

    #[test]
    fn reads_enumerators() {
        let mut b = BtfBuilder::new();
        b.enumeration(
            "sk_rst_reason",
            &[("SK_RST_REASON_NO_SOCKET", 1), ("NEG", -2)],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            btf.enum_values("sk_rst_reason").unwrap(),
            vec![
                ("SK_RST_REASON_NO_SOCKET".to_string(), 1),
                ("NEG".to_string(), -2)
            ]
        );
        assert!(btf.enum_values("nope").is_err());
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(Btf::parse(b"short").is_err());
        let Err(error) = Btf::parse(&[0u8; 64]) else {
            panic!("zeros parsed as BTF")
        };
        assert!(error.to_string().contains("magic"), "{error}");
        let mut blob = BtfBuilder::new();
        blob.int("int", 4);
        let mut bytes = blob.build();
        bytes[12] = 200; // type_len beyond the end
        assert!(
            Btf::parse(&bytes).is_err(),
            "a type section past the end parsed"
        );
    }

    #[test]
    fn reads_this_kernels_task_struct() {
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return; // covered by the synthetic tests above; the privileged suite needs BTF
        }
        let btf = Btf::from_file(path).unwrap();
        let exit_code = btf.member_offset("task_struct", "exit_code").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        // pid and tgid are adjacent pid_t members in every kernel since 2.6.
        assert_eq!(tgid, pid + 4);
        assert!(exit_code > 0 && exit_code < 16384);
        btf.member_offset("signal_struct", "group_exit_code")
            .unwrap();
        let reasons = btf.enum_values("sk_rst_reason").unwrap();
        assert!(reasons.contains(&("SK_RST_REASON_NO_SOCKET".to_string(), 1)));
    }
}
