//! Benchmarks: ratios against a baseline measured in the same run.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{build, setup};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: net, syscall, stress, time.
    pub which: String,
    /// Run it inside the Debian 6.12 test VM (net: also EDT delay precision beside netem, which needs
    /// sch_fq; syscall: the host-wide backends, lsm and fmod_ret, and kprobe too on the kprobe
    /// kernel when it is built and cached). Under emulation absolute numbers mean little: read the
    /// ratios.
    #[arg(long)]
    pub vm: bool,
    /// With --vm: the Debian kernel only, even when the kprobe kernel is built.
    #[arg(long, requires = "vm")]
    pub skip_kprobe_kernel: bool,
    /// Passed to the benchmark binary (syscall: `--calls N`, `--passes N`, `--loops-only`), e.g.
    /// `cargo xtask bench syscall --vm -- --loops-only`.
    #[arg(last = true)]
    pub bench_args: Vec<String>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match args.which.as_str() {
        "net" if args.vm => net_in_vm(),
        "syscall" if args.vm => syscall_in_vm(args.skip_kprobe_kernel, &args.bench_args),
        _ if args.vm => bail!("--vm is for the net and syscall benchmarks"),
        "net" => run_bin("bench-net", &args.bench_args),
        "syscall" => run_bin("bench-syscall", &args.bench_args),
        "stress" => crate::bench_stress::run(),
        "time" => run_bin("bench-time", &args.bench_args),
        other => bail!("unknown benchmark '{other}': allowed are net, syscall, stress, time"),
    }
}

/// The net benchmark and the delay-precision test (kchaos beside netem, same boot) in the VM.
fn net_in_vm() -> Result<()> {
    let kchaos = build::build_kchaos()?;
    let bench = build_bin("bench-net")?;
    let delay = crate::vm::cargo_tests::build_integration_tests()?
        .into_iter()
        .find(|t| t.name == "delay")
        .context("no `delay` integration test executable")?;
    let payloads = [
        crate::vm::Payload {
            name: "bench-net".into(),
            binary: bench,
            args: vec![],
            cwd: None,
        },
        crate::vm::Payload {
            name: "delay-rate-reorder".into(),
            binary: delay.path,
            // The delay's precision, the rate's bandwidth and the reorder share, each beside netem
            // on the same veth in this boot.
            args: [
                "--test-threads=1",
                "--nocapture",
                "edt_delay",
                "rate_holds",
                "reorder_sends",
            ]
            .map(String::from)
            .to_vec(),
            cwd: None,
        },
    ];
    let results = crate::vm::run_payloads(
        None,
        Some(&kchaos),
        &payloads,
        std::time::Duration::from_secs(20 * 60),
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
