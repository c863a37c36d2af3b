//! `cargo xtask test`: unit tests, the integration tests on this kernel, then inside the VM kernel.

use std::process::Command;

use anyhow::Result;

use crate::{build, setup, vm};

#[derive(clap::Args, Default)]
pub struct TestArgs {
    /// Skip the VM suite.
    #[arg(long)]
    pub host_only: bool,
    /// Only tests whose name contains this.
    #[arg(last = true)]
    pub filter: Vec<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let kchaos = build::build_kchaos()?;
    let linker_dir = setup::ensure_bpf_linker()?;
    let root = setup::workspace_root();
    setup::step("unit tests");
    setup::run_step(
        "unit tests",
        Command::new(env!("CARGO"))
            .args([
                "test",
                "--release",
                "-p",
                "chaos-common",
                "-p",
                "chaos-userspace",
                "-p",
                "xtask",
            ])
            .current_dir(&root)
            .env("PATH", build::path_with(&linker_dir)),
    )?;
    setup::ensure_debian_packages(&[("ip", "iproute2"), ("tc", "iproute2")])?;
    setup::step("integration tests on this kernel");
    setup::run_step(
        "integration tests",
        Command::new(env!("CARGO"))
            .args(["test", "--release", "-p", "integration-tests", "--"])
            .args(["--test-threads=1"])
            .args(&args.filter)
            .current_dir(&root)
            .env("KCHAOS_BIN", &kchaos)
            .env("PATH", build::path_with(&linker_dir)),
    )?;
    if !args.host_only {
        vm::run(&vm::VmTestArgs {
            kernel: None,
            filter: args.filter.clone(),
        })?;
    }
    Ok(())
}
