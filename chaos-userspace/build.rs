//! Builds the eBPF object (chaos-ebpf, for bpfel-unknown-none with nightly) and leaves it in OUT_DIR
//! so `kchaos` embeds it with `include_bytes_aligned!`: one self-contained binary.
//!
//! The eBPF crate is not a member of the host workspace (it can only build for the BPF target), so this
//! script calls cargo on it directly, with its own target dir (cargo would otherwise wait on the lock it
//! holds itself). `cargo xtask build` installs what this needs: nightly's rust-src and bpf-linker.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("workspace root")?;
    let ebpf_dir = root.join("chaos-ebpf");
    for watched in [
        "chaos-ebpf/src",
        "chaos-ebpf/Cargo.toml",
        "chaos-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=KCHAOS_CACHE");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("ebpf");
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;

    // target-cpu=v3 (rustc hands it to bpf-linker, which does the codegen): atomic fetch-add
    // (BPF_ATOMIC | BPF_FETCH, kernel 5.12+) for the exact --after/--max counters.
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "-Z",
        "build-std=core",
    ])
    .args(["--target", "bpfel-unknown-none", "--bin", "chaos"])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&ebpf_dir)
    .env("PATH", path_with_linker()?)
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Ctarget-cpu=v3"),
    );
    // What cargo set for the host build must not leak into the nightly BPF build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!(
            "building the eBPF programs failed ({status}). `cargo xtask build` installs what it needs \
             (nightly rust-src, bpf-linker 0.13.0); see the README"
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/chaos");
    std::fs::copy(&object, out_dir.join("chaos"))
        .with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

/// PATH with the bpf-linker that `cargo xtask build` caches (KCHAOS_CACHE or ~/.cache/kchaos) in front.
fn path_with_linker() -> anyhow::Result<std::ffi::OsString> {
    let cache = match env::var_os("KCHAOS_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?)
            .join(".cache/kchaos"),
    };
    let mut dirs = vec![cache.join("bpf-linker/bin")];
    dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    Ok(env::join_paths(dirs)?)
}
