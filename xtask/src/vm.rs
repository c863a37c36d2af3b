//! The second test kernel: the integration tests inside a Debian 6.12 kernel under qemu (TCG).
//! (Being written: see issue 4.)

use anyhow::{Result, bail};

#[derive(clap::Args, Default, Clone)]
pub struct VmTestArgs {
    /// A kernel .deb or an unpacked directory to boot instead of the default Debian kernel.
    #[arg(long)]
    pub kernel: Option<std::path::PathBuf>,
    /// Only tests whose name contains this.
    #[arg(last = true)]
    pub filter: Vec<String>,
}

pub fn run(_args: &VmTestArgs) -> Result<()> {
    bail!("vm-test is not built yet")
}
