//! Benchmarks: ratios against a baseline measured in the same run.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build, setup};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: net, syscall, stress.
    pub which: String,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match args.which.as_str() {
        "net" => run_bin("bench-net"),
        "syscall" => run_bin("bench-syscall"),
        "stress" => crate::bench_stress::run(),
        other => bail!("unknown benchmark '{other}': allowed are net, syscall, stress"),
    }
}

/// Builds kchaos and a benchmark binary of the tests crate, then runs it with KCHAOS_BIN set.
fn run_bin(name: &str) -> Result<()> {
    let kchaos = build::build_kchaos()?;
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
    setup::run_step(
        name,
        Command::new(build::target_dir().join("release").join(name)).env("KCHAOS_BIN", &kchaos),
    )
}
