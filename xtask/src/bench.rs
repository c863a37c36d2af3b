//! Benchmarks: ratios against a baseline measured in the same run.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build, setup};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: net, syscall, stress, time.
    pub which: String,
    /// Run it inside the Debian 6.12 test VM (net: also kchaos beside netem fault by fault, which
    /// needs sch_fq and sch_netem; syscall: the host-wide backends, lsm and fmod_ret, and kprobe too
    /// on the kprobe kernel when it is built and cached). Under emulation absolute numbers mean
    /// little: read the ratios and the side-by-side comparison.
    #[arg(long)]
    pub vm: bool,
    /// With --vm: the Debian kernel only, even when the kprobe kernel is built.
    #[arg(long, requires = "vm")]
    pub skip_kprobe_kernel: bool,
    /// Passed to the benchmark binary (syscall: `--calls N`, `--passes N`, `--loops-only`; net --vm:
    /// to the netem comparison, `--rounds N`, `--only delay|loss|duplicate|corrupt|reorder|rate`),
    /// e.g. `cargo xtask bench syscall --vm -- --loops-only`.
    #[arg(last = true)]
    pub bench_args: Vec<String>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match args.which.as_str() {
        "net" if args.vm => net_in_vm(&args.bench_args),
        "syscall" if args.vm => syscall_in_vm(args.skip_kprobe_kernel, &args.bench_args),
        _ if args.vm => bail!("--vm is for the net and syscall benchmarks"),
        "net" => run_bin("bench-net", &args.bench_args),
        "syscall" => run_bin("bench-syscall", &args.bench_args),
        "stress" => crate::bench_stress::run(),
        "time" => run_bin("bench-time", &args.bench_args),
        other => bail!("unknown benchmark '{other}': allowed are net, syscall, stress, time"),
    }
}

/// The net benchmark, then kchaos beside `tc netem` fault by fault (bench-netem: delay, loss,
/// Gilbert-Elliott, duplicate, corrupt, reorder, rate; several rounds interleaved, same boot) in the
/// VM, whose kernel has sch_fq and sch_netem. `bench_args` go to bench-netem (`--rounds N`,
/// `--only GROUP`).
fn net_in_vm(bench_args: &[String]) -> Result<()> {
    let kchaos = build::build_kchaos()?;
    let bench = build_bin("bench-net")?;
    let netem = build_bin("bench-netem")?;
    let payloads = [
        crate::vm::Payload {
            name: "bench-net".into(),
            binary: bench,
            args: vec![],
            cwd: None,
        },
        crate::vm::Payload {
            name: "bench-netem".into(),
            binary: netem,
            args: bench_args.to_vec(),
            cwd: None,
        },
    ];
    // Seen under TCG: building and booting a few minutes, bench-net about 9, a bench-netem round
    // about 2.5 (140 s); the rest is margin for a loaded host.
    let rounds = bench_args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| bench_args.get(i + 1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(5);
    let results = crate::vm::run_payloads(
        None,
        Some(&kchaos),
        &payloads,
        std::time::Duration::from_secs((20 + 4 * rounds) * 60),
    )?;
    for r in &results {
        if r.exit_code != 0 {
            bail!("{} failed inside the VM (exit {})", r.name, r.exit_code);
        }
    }
    Ok(())
}

/// The syscall benchmark on the Debian kernel, then on the kprobe kernel if `cargo xtask
/// build-kernel` has built it (building it here would take a quarter of an hour or more).
fn syscall_in_vm(skip_kprobe_kernel: bool, bench_args: &[String]) -> Result<()> {
    // strace -e inject is the peer beside kchaos; the VM image takes it from the host.
    setup::ensure_debian_packages(&[("strace", "strace")])?;
    let kchaos = build::build_kchaos()?;
    let bench = build_bin("bench-syscall")?;
    let payload = crate::vm::Payload {
        name: "bench-syscall".into(),
        binary: bench,
        // A fifth of the host's calls per loop: under emulation strace's two stops per call make a
        // 50,000-call loop take minutes, and the run has 40.
        args: ["--calls", "10000"]
            .iter()
            .map(|s| s.to_string())
            .chain(bench_args.iter().cloned())
            .collect(),
        cwd: None,
    };
    let mut kernels: Vec<Option<std::path::PathBuf>> = vec![None];
    if skip_kprobe_kernel {
        setup::step("bench: --skip-kprobe-kernel: Debian's kernel only");
    } else if crate::vm::build_kernel::cached()?.is_some() {
        kernels.push(Some(crate::vm::kernel::KPROBE_KERNEL.into()));
    } else {
        setup::step(
            "bench: the kprobe kernel is not built (cargo xtask build-kernel): Debian's only",
        );
    }
    for kernel in kernels {
        let results = crate::vm::run_payloads(
            kernel.as_deref(),
            Some(&kchaos),
            std::slice::from_ref(&payload),
            std::time::Duration::from_secs(40 * 60),
        )?;
        for r in &results {
            if r.exit_code != 0 {
                bail!("{} failed inside the VM (exit {})", r.name, r.exit_code);
            }
        }
    }
    Ok(())
}

/// Builds a binary of the tests crate; returns its path.
fn build_bin(name: &str) -> Result<std::path::PathBuf> {
    let linker_dir = setup::ensure_bpf_linker()?;
    setup::step(&format!("building {name}"));
    setup::run_step(
        name,
        Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "integration-tests",
                "--bin",
                name,
            ])
            .current_dir(setup::workspace_root())
            .env("PATH", build::path_with(&linker_dir)),
    )?;
    Ok(build::target_dir().join("release").join(name))
}

/// Builds kchaos and a benchmark binary of the tests crate, then runs it with KCHAOS_BIN set.
fn run_bin(name: &str, args: &[String]) -> Result<()> {
    let kchaos = build::build_kchaos()?;
    let bin = build_bin(name)?;
    setup::run_step(
        name,
        Command::new(bin).args(args).env("KCHAOS_BIN", &kchaos),
    )
}
