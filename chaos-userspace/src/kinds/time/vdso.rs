//! kchaos's own vDSO: the image every 64-bit process of this kernel has mapped, and where in it the
//! time functions start. Targets' vDSOs are compared against it, and `stop` restores their first
//! bytes from it.

use std::{fs, io, sync::OnceLock};

/// The image and the offsets of the functions a time fault redirects.
#[derive(Debug)]
pub struct OwnVdso {
    pub image: Vec<u8>,
    pub clock_gettime: u64,
    pub gettimeofday: u64,
    pub time: u64,
    /// A `syscall` instruction outside the patched bytes.
    pub syscall_insn: u64,
    /// Where a stopped tracee's injected-syscall stub is written: the section header table, which the
    /// image carries but nothing reads once it is loaded (programs find the vDSO's symbols through
    /// its program headers and dynamic section); [`crate::kinds::time::ptrace::STUB_LEN`] bytes.
    pub scratch: u64,
}

impl OwnVdso {
    /// The original bytes of the scratch area.
    pub fn scratch_bytes(&self) -> &[u8] {
        let at = self.scratch as usize;
        &self.image[at..at + crate::kinds::time::ptrace::STUB_LEN]
    }
}

impl OwnVdso {
    /// The three patch sites (offsets), each 5 bytes.
    pub fn sites(&self) -> [u64; 3] {
        [self.gettimeofday, self.time, self.clock_gettime]
    }
}

/// Why the vDSO cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VdsoError {
    #[error("this process has no vDSO (no AT_SYSINFO_EHDR, or no [vdso] mapping there)")]
    Missing,
    #[error("reading the vDSO: {0}")]
    Io(#[from] io::Error),
    #[error("the vDSO is not a 64-bit ELF image kchaos can read ({0})")]
    Format(&'static str),
    #[error("the vDSO exports no {0}")]
    NoSymbol(&'static str),
}

static OWN: OnceLock<Result<OwnVdso, String>> = OnceLock::new();

/// This process's vDSO, read once.
pub fn own() -> Result<&'static OwnVdso, String> {
    OWN.get_or_init(|| read_own().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

fn read_own() -> Result<OwnVdso, VdsoError> {
    let (start, end) = vdso_of(std::process::id()).ok_or(VdsoError::Missing)?;
    let mut image = vec![0u8; (end - start) as usize];
    crate::kinds::time::ptrace::read_mem(std::process::id(), start, &mut image)?;
    parse(image)
}

/// The auxv entry type holding the vDSO's address.
const AT_SYSINFO_EHDR: u64 = 33;

/// The vDSO's address in an auxv (`/proc/PID/auxv`: pairs of native words, ended by AT_NULL).
pub fn sysinfo_ehdr(auxv: &[u8]) -> Option<u64> {
    auxv.chunks_exact(16)
        .map(|p| {
            let w = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
            (w(&p[..8]), w(&p[8..]))
        })
        .take_while(|&(k, _)| k != 0)
        .find(|&(k, _)| k == AT_SYSINFO_EHDR)
        .map(|(_, v)| v)
        .filter(|&v| v != 0)
}

/// The vDSO's range in process `pid`: its start from `AT_SYSINFO_EHDR` in `/proc/PID/auxv` (the
/// kernel's copy of what it gave the program at exec), and its end from the maps line that starts
/// there, which must be the kernel's own `[vdso]` mapping (no file, no inode). A maps line alone can
/// be forged by the target (a file named `x [vdso]` mapped anywhere); the auxv cannot (it takes
/// CAP_SYS_RESOURCE to change it, and then the address must still hold the kernel's mapping).
pub fn vdso_of(pid: u32) -> Option<(u64, u64)> {
    let dir = crate::kinds::time::ptrace::proc_dir(pid);
    let auxv = fs::read(dir.join("auxv")).ok()?;
    let base = sysinfo_ehdr(&auxv)?;
    let maps = fs::read_to_string(dir.join("maps")).ok()?;
    vdso_in_maps(&maps, base)
}

/// The `[vdso]` mapping starting at `base` in a maps text: (start, end).
pub fn vdso_in_maps(maps: &str, base: u64) -> Option<(u64, u64)> {
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (start, end) = parse_range(f.next()?)?;
        if start != base {
            return None;
        }
        let inode = f.nth(3)?;
        // The name is the rest of the line: exactly "[vdso]" (a file's name starts with '/').
        let name = f.collect::<Vec<_>>().join(" ");
        (inode == "0" && name == "[vdso]").then_some((start, end))
    })
}

/// "start-end" in hex.
pub fn parse_range(text: &str) -> Option<(u64, u64)> {
    let (a, b) = text.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Finds the symbols in an image (ELF64, the dynamic symbol table through the section headers).
pub fn parse(image: Vec<u8>) -> Result<OwnVdso, VdsoError> {
    let fmt = VdsoError::Format;
    if image.get(..5) != Some(b"\x7fELF\x02") {
        return Err(fmt("no ELF64 header"));
    }
    let phoff = u64_at(&image, 0x20).ok_or(fmt("header"))? as usize;
    let shoff = u64_at(&image, 0x28).ok_or(fmt("header"))? as usize;
    let phentsize = u16_at(&image, 0x36).ok_or(fmt("header"))? as usize;
    let phnum = u16_at(&image, 0x38).ok_or(fmt("header"))? as usize;
    let shentsize = u16_at(&image, 0x3a).ok_or(fmt("header"))? as usize;
    let shnum = u16_at(&image, 0x3c).ok_or(fmt("header"))? as usize;
    // Symbol values are link addresses: relative to the first PT_LOAD's.
    let mut load_vaddr = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(&image, ph) == Some(1) {
            load_vaddr = u64_at(&image, ph + 0x10);
            break;
        }
    }
    let load_vaddr = load_vaddr.ok_or(fmt("no PT_LOAD"))?;
    let section = |i: usize| -> Option<(u32, u64, u64, u32, u64)> {
        let sh = shoff + i * shentsize;
        Some((
            u32_at(&image, sh + 4)?,    // type
            u64_at(&image, sh + 0x18)?, // offset
            u64_at(&image, sh + 0x20)?, // size
            u32_at(&image, sh + 0x28)?, // link
            u64_at(&image, sh + 0x38)?, // entsize
        ))
    };
    let mut symbols: Vec<(String, u64)> = Vec::new();
    for i in 0..shnum {
        let Some((kind, off, size, link, entsize)) = section(i) else {
            return Err(fmt("section headers"));
        };
        if kind != 11 || entsize < 24 {
            continue;
        }
        let (_, str_off, str_size, _, _) = section(link as usize).ok_or(fmt("string table"))?;
        let strtab = image
            .get(str_off as usize..(str_off + str_size) as usize)
            .ok_or(fmt("string table"))?;
        for s in 0..(size / entsize) as usize {
            let at = off as usize + s * entsize as usize;
            let name_off = u32_at(&image, at).ok_or(fmt("symbol"))? as usize;
            let value = u64_at(&image, at + 8).ok_or(fmt("symbol"))?;
            let name = strtab
                .get(name_off..)
                .and_then(|n| n.split(|&b| b == 0).next())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            if value != 0 {
                symbols.push((name, value.wrapping_sub(load_vaddr)));
            }
        }
    }
    let find = |names: [&'static str; 2]| -> Result<u64, VdsoError> {
        names
            .iter()
            .find_map(|n| symbols.iter().find(|(s, _)| s == n).map(|(_, v)| *v))
            .filter(|v| (*v as usize) + 16 <= image.len())
            .ok_or(VdsoError::NoSymbol(names[0]))
    };
    let clock_gettime = find(["__vdso_clock_gettime", "clock_gettime"])?;
    let gettimeofday = find(["__vdso_gettimeofday", "gettimeofday"])?;
    let time = find(["__vdso_time", "time"])?;
    let patched = [clock_gettime, gettimeofday, time];
    let syscall_insn = image
        .windows(2)
        .enumerate()
        .find(|(i, w)| {
            *w == [0x0f, 0x05]
                && patched
                    .iter()
                    .all(|p| *i as u64 + 1 < *p || *i as u64 >= p + 5)
        })
        .map(|(i, _)| i as u64)
        .ok_or(fmt("no syscall instruction"))?;
    // The stub must fit the section header table, inside the image and away from the patched code.
    let stub = crate::kinds::time::ptrace::STUB_LEN as u64;
    if shoff == 0
        || (shnum * shentsize) < stub as usize
        || shoff as u64 + stub > image.len() as u64
        || patched
            .iter()
            .any(|p| *p < shoff as u64 + stub && (shoff as u64) < p + 16)
    {
        return Err(fmt("no section header table to hold the syscall stub"));
    }
    Ok(OwnVdso {
        image,
        clock_gettime,
        gettimeofday,
        time,
        syscall_insn,
        scratch: shoff as u64,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_time_functions_in_this_vdso() {
        let Ok(v) = super::own() else {
            return;
        };
        assert!(v.clock_gettime != v.gettimeofday && v.time != v.clock_gettime);
        assert_eq!(&v.image[v.syscall_insn as usize..][..2], &[0x0f, 0x05]);
    }

    #[test]
    fn the_vdso_comes_from_the_auxv_not_from_a_maps_name() {
        let mut auxv = Vec::new();
        for (k, v) in [(6u64, 4096u64), (33, 0x7fff_f7fc_4000), (0, 0)] {
            auxv.extend_from_slice(&k.to_le_bytes());
            auxv.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(super::sysinfo_ehdr(&auxv), Some(0x7fff_f7fc_4000));
        assert_eq!(super::sysinfo_ehdr(&auxv[..16]), None);
        // A file whose name ends in "[vdso]", mapped first, is not taken for it.
        let maps = "555555554000-555555556000 r-xp 00000000 08:01 1234 /tmp/x [vdso]\n\
                    7ffff7fc4000-7ffff7fc6000 r-xp 00000000 00:00 0                  [vdso]\n";
        assert_eq!(
            super::vdso_in_maps(maps, 0x7fff_f7fc_4000),
            Some((0x7fff_f7fc_4000, 0x7fff_f7fc_6000))
        );
        assert_eq!(super::vdso_in_maps(maps, 0x5555_5555_4000), None);
        // And this process's own.
        let (s, e) = super::vdso_of(std::process::id()).unwrap();
        assert!(e > s);
    }
}
