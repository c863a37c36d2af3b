//! Just enough of the kernel's BTF to find a struct member's offset: eBPF written in Rust has no CO-RE
//! relocations, so the loader reads offsets from the running kernel and hands them to the programs.

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no member {1} in struct {0}")]
    NoMember(String, String),
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// Byte offset of `member` in `struct strukt`, from /sys/kernel/btf/vmlinux.
pub fn member_offset(strukt: &str, member: &str) -> Result<u64, BtfError> {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    let data = std::fs::read(path).map_err(|e| BtfError::Read(path.display().to_string(), e))?;
    find_member_offset(&data, strukt, member)
}

fn u32_at(d: &[u8], off: usize) -> Result<u32, BtfError> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

fn string_at(d: &[u8], strings: usize, off: u32) -> &[u8] {
    let start = strings + off as usize;
    let rest = d.get(start..).unwrap_or_default();
    &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
}

/// Walks the type section for `struct strukt` and returns its member's byte offset.
pub fn find_member_offset(d: &[u8], strukt: &str, member: &str) -> Result<u64, BtfError> {
    if d.len() < 24 || u16::from_le_bytes([d[0], d[1]]) != BTF_MAGIC {
        return Err(BtfError::Malformed("no BTF magic (or big-endian BTF)"));
    }
    let hdr_len = u32_at(d, 4)? as usize;
    let (type_off, type_len) = (u32_at(d, 8)? as usize, u32_at(d, 12)? as usize);
    let str_off = u32_at(d, 16)? as usize;
    let (types, strings) = (hdr_len + type_off, hdr_len + str_off);
    let mut pos = types;
    while pos < types + type_len {
        let name = u32_at(d, pos)?;
        let info = u32_at(d, pos + 4)?;
        let (vlen, kind, kind_flag) = ((info & 0xffff) as usize, (info >> 24) & 0x1f, info >> 31);
        pos += 12;
        let is_match = kind == KIND_STRUCT && string_at(d, strings, name) == strukt.as_bytes();
        let extra = match kind {
            1 | 3 | 14 | 17 => {
                if kind == 3 {
                    12
                } else {
                    4
                }
            }
            KIND_STRUCT | KIND_UNION | 15 | 19 => 12 * vlen,
            6 | 13 => 8 * vlen,
            _ => 0,
        };
        if is_match {
            for i in 0..vlen {
                let m = pos + 12 * i;
                if string_at(d, strings, u32_at(d, m)?) == member.as_bytes() {
                    let raw = u32_at(d, m + 8)?;
                    let bits = if kind_flag == 1 {
                        raw & 0x00ff_ffff
                    } else {
                        raw
                    };
                    return Ok(u64::from(bits / 8));
                }
            }
            return Err(BtfError::NoMember(strukt.into(), member.into()));
        }
        pos += extra;
    }
    Err(BtfError::NoMember(strukt.into(), member.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_f_path_in_this_kernel() {
        // Every kernel kchaos supports has BTF with struct file; f_path is never at offset 0.
        if let Ok(off) = member_offset("file", "f_path") {
            assert!(off > 0 && off < 512, "{off}");
        }
        assert!(matches!(
            find_member_offset(b"junk", "file", "f_path"),
            Err(BtfError::Malformed(_))
        ));
    }
}
