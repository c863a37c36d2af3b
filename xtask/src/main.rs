//! `cargo xtask`: everything it takes to build, run, test and benchmark kchaos on a fresh machine.
//!
//! Each step prints one progress line, skips itself when its work is already done, and on failure
//! names itself and how to do it by hand.

mod bench;
mod bench_stress;
mod build;
mod setup;
mod tally;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and benchmark kchaos")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building needs (nightly rust-src, bpf-linker) and build kchaos (release).
    Build,
    /// Build, then run `kchaos ARGS` as root; with no ARGS, the built-in demo (`kchaos demo`).
    Run {
        /// Arguments for kchaos (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, the host integration tests, then the suite inside the VM kernel;
    /// ends with the skipped tests and a line of totals.
    Test(test::TestArgs),
    /// Run the integration tests inside a Debian 6.12 kernel under qemu (TCG).
    VmTest(vm::VmTestArgs),
    /// Build (once, then cached) the test kernel with bpf_override_return from Debian's
    /// linux-source-6.12; `vm-test` does it when it needs it.
    BuildKernel,
    /// Benchmarks, printed as ratios against a baseline measured in the same run.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build => build::build_kchaos().map(|_| ()),
        Command::Run { args } => build::run(&args),
        Command::Test(args) => test::run(&args),
        Command::VmTest(args) => vm::run(&args),
        Command::BuildKernel => vm::build_kprobe_kernel(),
        Command::Bench(args) => bench::run(&args),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}
