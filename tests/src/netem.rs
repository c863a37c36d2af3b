//! `tc netem`, the peer kchaos is measured beside: put on a device for one measurement and taken off
//! again, also when the measurement fails.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// `tc qdisc add dev DEV root netem ARGS`, removed on drop.
pub struct Netem(String);

impl Netem {
    /// An error says what tc said (a kernel without sch_netem among the reasons).
    pub fn add(dev: &str, args: &[&str]) -> Result<Self> {
        let out = Command::new("tc")
            .args(["qdisc", "add", "dev", dev, "root", "netem"])
            .args(args)
            .output()
            .context("running tc")?;
        if !out.status.success() {
            bail!(
                "tc qdisc add dev {dev} root netem {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Netem(dev.to_owned()))
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        let ok = Command::new("tc")
            .args(["qdisc", "del", "dev", &self.0, "root"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not remove netem from {}", self.0);
        }
    }
}
