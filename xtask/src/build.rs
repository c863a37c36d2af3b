//! Building kchaos (its build script builds and embeds the eBPF object) and running it.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::setup::{self, step};

/// Installs the build's prerequisites and builds `kchaos` in release mode; returns its path.
pub fn build_kchaos() -> Result<PathBuf> {
    setup::ensure_nightly_rust_src()?;
    let linker_dir = setup::ensure_bpf_linker()?;
    step("building kchaos and its eBPF programs (release)");
    let root = setup::workspace_root();
    setup::run_step(
        "cargo build --release -p chaos-userspace",
        Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "chaos-userspace",
                "--bin",
                "kchaos",
            ])
            .current_dir(&root)
            .env("PATH", path_with(&linker_dir)),
    )?;
    Ok(target_dir().join("release/kchaos"))
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| setup::workspace_root().join("target"))
}

/// PATH with `dir` in front.
pub fn path_with(dir: &std::path::Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap_or_default()
}

/// `cargo xtask run [-- ARGS]`: kchaos ARGS, or the demo.
pub fn run(args: &[String]) -> Result<()> {
    let kchaos = build_kchaos()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!(
            "kchaos needs root (it loads eBPF programs and makes network namespaces): run as root"
        );
    }
    let args: Vec<String> = if args.is_empty() {
        vec!["demo".into()]
    } else {
        args.to_vec()
    };
    step(&format!("running {} {}", kchaos.display(), args.join(" ")));
    let status = Command::new(&kchaos).args(&args).status()?;
    std::process::exit(status.code().unwrap_or(1));
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
