//! Installing what the build and the tests need, once: later runs and other clones reuse it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Where installed tools and downloads live, outside the work tree: $KCHAOS_CACHE or ~/.cache/kchaos.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KCHAOS_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home =
        std::env::var_os("HOME").context("HOME is not set; set KCHAOS_CACHE to a directory")?;
    Ok(Path::new(&home).join(".cache/kchaos"))
}

/// The workspace root (xtask's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Prints a progress line for a step.
pub fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// Runs a command, failing with the step's name and the hand-run equivalent.
pub fn run_step(step_name: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{step_name}: could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{step_name} failed ({status}); to do it by hand run: {cmd:?}");
    }
    Ok(())
}

fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Nightly with rust-src (for `-Z build-std=core`). Nightly itself can't be downloaded here, so its
/// absence is an error with instructions, not an install.
pub fn ensure_nightly_rust_src() -> Result<()> {
    let Some(sysroot) = output_ok(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
    else {
        bail!(
            "the nightly toolchain is missing: install it with `rustup toolchain install nightly` (the eBPF crate needs it)"
        );
    };
    let src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        step("nightly rust-src: present");
        return Ok(());
    }
    step("nightly rust-src: installing (about 20 s)");
    run_step(
        "installing nightly rust-src",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

/// bpf-linker 0.13.0 built against the nightly's own libLLVM (Debian's LLVM is older), cached.
pub fn ensure_bpf_linker() -> Result<PathBuf> {
    let cache = cache_dir()?;
    let bin_dir = cache.join("bpf-linker/bin");
    let linker = bin_dir.join("bpf-linker");
    if output_ok(Command::new(&linker).arg("--version")).is_some_and(|v| v.contains("0.13.0")) {
        step(&format!(
            "bpf-linker 0.13.0: present in {}",
            bin_dir.display()
        ));
        return Ok(bin_dir);
    }
    let sysroot = output_ok(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot failed: is the nightly toolchain installed?")?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so") || n.starts_with("libLLVM-"))
        .with_context(|| {
            format!(
                "no libLLVM in {}: the nightly toolchain lacks LLVM's library",
                lib_dir.display()
            )
        })?;
    // The prefix must stay where it was made: the linker's RUNPATH points into it.
    let prefix = cache.join("llvm-prefix/lib");
    std::fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&libllvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let llvm_major = libllvm
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .context("reading LLVM's version from the library name")?
        .to_owned();
    step(&format!(
        "bpf-linker 0.13.0: building against the nightly's LLVM {llvm_major} (about a minute)"
    ));
    run_step(
        "building bpf-linker",
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{llvm_major}")])
            .arg("--root")
            .arg(cache.join("bpf-linker"))
            .env("LLVM_PREFIX", cache.join("llvm-prefix")),
    )?;
    Ok(bin_dir)
}

/// Installs Debian packages whose commands are missing (apt-get update once, first).
pub fn ensure_debian_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !command_exists(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    run_step(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// True when `name` is on PATH (or is an existing path).
pub fn command_exists(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}
