//! The embedded eBPF object (built by build.rs from chaos-ebpf).

use anyhow::{Context as _, Result};
use aya::{Ebpf, EbpfLoader};

/// The object file, aligned as the ELF parser requires.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos"));

/// Loads a fresh copy of every map (each fault gets its own maps and programs).
pub fn load() -> Result<Ebpf> {
    EbpfLoader::new()
        .load(OBJECT)
        .context("loading kchaos's eBPF object (is this root, with BTF?)")
}

/// Loads the object with a read-only global set (the verifier sees it as a constant).
pub fn load_with_global(name: &str, value: u64) -> Result<Ebpf> {
    EbpfLoader::new()
        .override_global(name, &value, true)
        .load(OBJECT)
        .context("loading kchaos's eBPF object (is this root, with BTF?)")
}
