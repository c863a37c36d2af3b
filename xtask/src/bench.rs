//! Benchmarks: ratios against a baseline measured in the same run.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: net.
    pub which: String,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    bail!("unknown benchmark '{}'", args.which)
}
