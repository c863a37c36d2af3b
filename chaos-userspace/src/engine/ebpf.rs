//! The embedded eBPF object (built by build.rs from chaos-ebpf).

use anyhow::{Context as _, Result};
use aya::{Ebpf, EbpfLoader};

/// The object file, aligned as the ELF parser requires.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos"));

/// The object's bytes, for loaders of program types aya has no type for (fmod_ret).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Loads a fresh copy of every map (each fault gets its own maps and programs).
pub fn load() -> Result<Ebpf> {
    load_sized(&[], &[])
}

/// Loads the object with read-only globals set (the verifier sees them as constants). Every global is
/// a u64 in the object, so the value's bytes are its little-endian u64.
pub fn load_with_globals(globals: &[(&str, u64)]) -> Result<Ebpf> {
    load_sized(globals, &[])
}

/// The same, with maps resized first (`(map, max_entries)`), e.g. a hash sized to the targets.
pub fn load_sized(globals: &[(&str, u64)], sizes: &[(&str, u32)]) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (name, size) in sizes {
        loader.map_max_entries(name, *size);
    }
    for (name, value) in globals {
        loader.override_global(name, value, true);
    }
    loader
        .load(OBJECT)
        .context("loading kchaos's eBPF object (is this root, with BTF?)")
}
