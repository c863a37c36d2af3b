//! sch_fq on the devices a delayed target sends through: EDT (skb->tstamp) is honoured only by fq.
//!
//! kchaos puts fq only where the device has its kernel default root qdisc (noqueue, pfifo_fast,
//! fq_codel, mq); deleting the root qdisc afterwards brings that default back. A device with a qdisc
//! someone configured is refused rather than overwritten.

use std::{io, path::Path, process::Command};

use crate::{engine::netns, error::BadInput};

/// Root qdiscs the kernel installs by itself; anything else was configured by someone.
const DEFAULT_KINDS: &[&str] = &["noqueue", "pfifo_fast", "fq_codel", "mq", "pfifo"];

/// The handle of every fq kchaos installs ("KC" in ASCII): how restoring and `kchaos stop` tell
/// kchaos's fq from one someone else put on the device.
pub const FQ_HANDLE: &str = "4b43:";

/// A device of one namespace whose root qdisc kchaos replaced with fq.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FqInstall {
    pub netns: netns::NetnsRef,
    pub dev: String,
    /// What was there before (restored by deleting fq).
    pub previous: String,
    /// The fq's handle: [`FQ_HANDLE`] (empty in records of older kchaos, which stop refuses).
    #[serde(default)]
    pub handle: String,
}

/// True when this kernel has sch_fq; tried in a scratch namespace, so no real device is touched.
pub fn kernel_has_fq() -> bool {
    netns::command_in_scratch_netns("tc")
        .args(["qdisc", "add", "dev", "lo", "root", "fq"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Devices (up, not loopback) of the namespace at `ns_path`, with their root qdisc kind.
pub fn devices(ns_path: &Path) -> io::Result<Vec<(String, String)>> {
    let out =
        netns::run_checked(netns::command_in(ns_path, "ip")?.args(["-o", "link", "show", "up"]))?;
    let mut devs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "2: eth0@if3: <BROADCAST,...,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP ..."
        let mut fields = line.split_whitespace();
        let Some(name) = fields.nth(1) else { continue };
        let name = name
            .trim_end_matches(':')
            .split('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        if name == "lo" || name.is_empty() {
            continue;
        }
        devs.push((name.clone(), root_qdisc(ns_path, &name)?.0));
    }
    Ok(devs)
}

/// The kind and handle of the device's root qdisc ("qdisc fq 4b43: root refcnt 2 ...").
fn root_qdisc(ns_path: &Path, dev: &str) -> io::Result<(String, String)> {
    let out = netns::run_checked(
        netns::command_in(ns_path, "tc")?.args(["qdisc", "show", "dev", dev, "root"]),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace().skip(1);
    let kind = fields.next().unwrap_or("noqueue").to_owned();
    let handle = fields.next().unwrap_or_default().to_owned();
    Ok((kind, handle))
}

/// Decides, before anything changes, which devices of a namespace need fq. Errors name a device with
/// a configured qdisc kchaos must not replace.
pub fn plan(ns: &netns::NetnsRef, ns_path: &Path) -> Result<Vec<FqInstall>, BadInput> {
    let devs =
        devices(ns_path).map_err(|e| BadInput::new(format!("listing devices for --delay: {e}")))?;
    let mut plan = Vec::new();
    for (dev, kind) in devs {
        if kind == "fq" {
            continue; // already honours EDT; not ours to remove later
        }
        if !DEFAULT_KINDS.contains(&kind.as_str()) {
            return Err(BadInput::new(format!(
                "--delay needs sch_fq on {dev}, which has a configured root qdisc '{kind}'; kchaos won't \
                 replace it (remove it, or narrow the target)"
            )));
        }
        plan.push(FqInstall {
            netns: ns.clone(),
            dev,
            previous: kind,
            handle: FQ_HANDLE.to_owned(),
        });
    }
    Ok(plan)
}

/// Puts fq at the root of the planned device.
pub fn install(fq: &FqInstall) -> io::Result<()> {
    let ns_path = fq
        .netns
        .locate()
        .ok_or_else(|| io::Error::other("the network namespace is gone"))?;
    tc(
        &ns_path,
        &[
            "qdisc",
            "replace",
            "dev",
            &fq.dev,
            "root",
            "handle",
            FQ_HANDLE,
            "fq",
            // Delayed packets wait in fq: the defaults (10000 packets, 100 a flow) would drop a flow
            // of a few thousand packets a second held for tens of ms. Room for 5 s at 20k pps.
            "limit",
            "200000",
            "flow_limit",
            "100000",
        ],
    )
    .map(|_| ())
}

/// Deletes kchaos's fq, which brings back the device's default qdisc. A namespace or device that is
/// gone took the qdisc with it, and a root qdisc other than kchaos's fq is someone else's: nothing to
/// do.
pub fn restore(fq: &FqInstall) -> io::Result<()> {
    let Some(ns_path) = fq.netns.locate() else {
        return Ok(());
    };
    if root_qdisc(&ns_path, &fq.dev)
        .map(|(kind, handle)| kind != "fq" || handle != FQ_HANDLE)
        .unwrap_or(true)
    {
        return Ok(());
    }
    tc(&ns_path, &["qdisc", "del", "dev", &fq.dev, "root"]).map(|_| ())
}

fn tc(ns_path: &Path, args: &[&str]) -> io::Result<std::process::Output> {
    let mut cmd: Command = netns::command_in(ns_path, "tc")?;
    netns::run_checked(cmd.args(args))
}
