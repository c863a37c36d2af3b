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

/// `cargo xtask` is `cargo run`, which gives xtask its package's variables (CARGO_MANIFEST_DIR,
/// CARGO_PKG_NAME, ...). The cargo commands xtask runs would inherit them, and build scripts that
/// watch them (ring's does) would see them differ from a plain `cargo build`'s and rebuild ring,
/// rustls, ureq and kchaos whenever one alternates the two (3 min on 2 cores). Removed first thing.
fn forget_cargo_run_env() {
    let names: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("CARGO_PKG_")
                || matches!(
                    &*k,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                )
        })
        .collect();
    for k in names {
        // SAFETY: called at the start of main, before any thread exists: nothing reads the
        // environment meanwhile.
        unsafe { std::env::remove_var(k) };
    }
}

fn main() {
    forget_cargo_run_env();
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
