//! The kernel modules the tests need, with their dependencies, decompressed for busybox's insmod.
//!
//! Debian's package carries no modules.dep (depmod makes it at install time) and this host may
//! have no kmod, so dependencies come from each module's own `.modinfo` section (`depends=`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::kernel::Kernel;
use crate::setup::step;

/// sch_fq, sch_netem and veth are what the VM is for; the rest are built into the host kernel
/// (clsact, cls_bpf, HTB, TBF, u32), so tests that pass there must find them here too.
pub const WANTED: &[&str] = &[
    "sch_fq",
    "sch_netem",
    "veth",
    "sch_ingress",
    "cls_bpf",
    "sch_htb",
    "sch_tbf",
    "cls_u32",
];

/// A module ready for insmod: its name and the decompressed .ko on the host.
pub struct Module {
    pub name: String,
    pub file: PathBuf,
}

/// Decompresses `wanted` and everything they depend on into `dest`; returns them in load order
/// (dependencies first). Modules built into the kernel are skipped; absent ones are reported.
pub fn prepare(kernel: &Kernel, wanted: &[&str], dest: &Path) -> Result<Vec<Module>> {
    let Some(dir) = &kernel.modules_dir else {
        return Ok(Vec::new());
    };
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut resolver = Resolver {
        index: index_modules(dir)?,
        builtin: read_builtin(dir),
        dest: dest.to_path_buf(),
        order: Vec::new(),
        seen: BTreeSet::new(),
        absent: Vec::new(),
    };
    for name in wanted {
        resolver.visit(&normalize(name))?;
    }
    if !resolver.absent.is_empty() {
        step(&format!(
            "kernel modules: not in {} (tests that need them will fail): {}",
            dir.display(),
            resolver.absent.join(" ")
        ));
    }
    let names: Vec<&str> = resolver.order.iter().map(|m| m.name.as_str()).collect();
    step(&format!(
        "kernel modules, in load order: {}",
        names.join(" ")
    ));
    Ok(resolver.order)
}

struct Resolver {
    /// Module name -> its (maybe compressed) file.
    index: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    dest: PathBuf,
    order: Vec<Module>,
    seen: BTreeSet<String>,
    absent: Vec<String>,
}

impl Resolver {
    /// Depth first, so a module lands in `order` after everything it depends on.
    fn visit(&mut self, name: &str) -> Result<()> {
        if !self.seen.insert(name.to_owned()) || self.builtin.contains(name) {
            return Ok(());
        }
        let Some(source) = self.index.get(name).cloned() else {
            self.absent.push(name.to_owned());
            return Ok(());
        };
        let file = self.dest.join(format!("{name}.ko"));
        decompress(&source, &file)?;
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        for dep in depends(&bytes) {
            self.visit(&normalize(&dep))?;
        }
        self.order.push(Module {
            name: name.to_owned(),
            file,
        });
        Ok(())
    }
}

/// Module names use `_`; file names and `depends=` may use `-` for the same module.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name a file holds, if it is a module (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`).
fn module_name(file_name: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))?;
    Some(normalize(stem))
}

/// Every module under `dir`, by name.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            } else if let Some(name) = module_name(&entry.file_name().to_string_lossy()) {
                index.insert(name, path);
            }
        }
    }
    Ok(index)
}

/// Names from modules.builtin (lines like `kernel/net/sched/sch_fifo.ko`).
fn read_builtin(dir: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(module_name)
        .collect()
}

/// Writes `source` decompressed (by xz, zstd or gzip, per its extension) to `dest`.
fn decompress(source: &Path, dest: &Path) -> Result<()> {
    let name = source.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        std::fs::copy(source, dest).with_context(|| format!("copying {}", source.display()))?;
        return Ok(());
    };
    let out = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let status = Command::new(tool)
        .arg("-dc")
        .arg(source)
        .stdout(Stdio::from(out))
        .status()
        .with_context(|| format!("could not start {tool} to decompress {}", source.display()))?;
    if !status.success() {
        bail!("{tool} -dc {} failed ({status})", source.display());
    }
    Ok(())
}

/// The module names in the `depends=` entry of an ELF module's `.modinfo` section.
fn depends(elf: &[u8]) -> Vec<String> {
    let Some(modinfo) = elf64_section(elf, ".modinfo") else {
        return Vec::new();
    };
    modinfo
        .split(|b| *b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect()
}

/// The bytes of the named section of a little-endian ELF64 file.
fn elf64_section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = read_u64(elf, 0x28)?;
    let shentsize = read_u16(elf, 0x3a)?;
    let shnum = read_u16(elf, 0x3c)?;
    let shstrndx = read_u16(elf, 0x3e)?;
    // (offset, size) of section `i`.
    let header = |i: usize| -> Option<(usize, usize)> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((read_u64(elf, at + 0x18)?, read_u64(elf, at + 0x20)?))
    };
    let (names_off, names_size) = header(shstrndx)?;
    let names = elf.get(names_off..names_off.checked_add(names_size)?)?;
    (0..shnum).find_map(|i| {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name_at =
            usize::try_from(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?)).ok()?;
        let name = names.get(name_at..)?.split(|b| *b == 0).next()?;
        if name != wanted.as_bytes() {
            return None;
        }
        let (off, size) = header(i)?;
        elf.get(off..off.checked_add(size)?)
    })
}

fn read_u64(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
    .ok()
}

fn read_u16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_from_file_names() {
        assert_eq!(module_name("sch_fq.ko.xz").as_deref(), Some("sch_fq"));
        assert_eq!(
            module_name("snd-hda-intel.ko.zst").as_deref(),
            Some("snd_hda_intel")
        );
        assert_eq!(module_name("modules.dep"), None);
    }

    #[test]
    fn depends_from_a_minimal_elf() {
        // An ELF64 with three sections: null, .shstrtab, .modinfo.
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let modinfo = b"license=GPL\0depends=nf_conntrack,libcrc32c\0name=x\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, off, size) in [
            (0u32, 0, 0),
            (1, strtab_off, shstrtab.len()),
            (11, modinfo_off, modinfo.len()),
        ] {
            let mut sh = [0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&sh);
        }
        assert_eq!(depends(&elf), ["nf_conntrack", "libcrc32c"]);
        assert!(depends(b"not an elf").is_empty());
    }
}
