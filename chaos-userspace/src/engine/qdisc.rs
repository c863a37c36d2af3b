//! sch_fq on the devices a delayed target sends through: EDT (skb->tstamp) is honoured only by fq.
//!
//! kchaos puts fq only where the device has its kernel default root qdisc (noqueue, pfifo_fast,
//! fq_codel, mq); deleting the root qdisc afterwards brings that default back. A device with a qdisc
//! someone configured is refused rather than overwritten. Devices and qdiscs are read and changed
//! over route netlink ([`rtnl`]).

use std::{io, path::Path};

use crate::{
    engine::{
        netns,
        rtnl::{self, FqLimits, Rtnl, RtnlError},
    },
    error::BadInput,
};

/// Root qdiscs the kernel installs by itself; anything else was configured by someone.
const DEFAULT_KINDS: &[&str] = &["noqueue", "pfifo_fast", "fq_codel", "mq", "pfifo"];

/// The handle of every fq kchaos installs ("KC" in ASCII), as records (and `tc`) write it: how
/// restoring and `kchaos stop` tell kchaos's fq from one someone else put on the device.
pub const FQ_HANDLE: &str = "4b43:";

/// [`FQ_HANDLE`] as the kernel has it: major 0x4b43, minor 0.
const FQ_HANDLE_ID: u32 = 0x4b43_0000;

/// Delayed packets wait in fq: the defaults (10000 packets, 100 a flow) would drop a flow of a few
/// thousand packets a second held for tens of ms. Room for 5 s at 20k pps.
const FQ_LIMITS: FqLimits = FqLimits {
    limit: 200_000,
    flow_limit: 100_000,
};

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

/// Installing fq failed.
#[derive(Debug, thiserror::Error)]
pub enum QdiscError {
    #[error(transparent)]
    Rtnl(#[from] RtnlError),
    #[error("the network namespace of {dev} is gone")]
    NetnsGone { dev: String },
    #[error("{dev} is gone from its network namespace")]
    DeviceGone { dev: String },
}

/// Puts kchaos's fq (its handle and limits, as [`install`] does) on `lo` of a scratch namespace,
/// which vanishes afterwards: no real device is touched. Err says why this kernel cannot.
pub fn try_fq_in_scratch_netns() -> Result<(), RtnlError> {
    let mut rtnl = Rtnl::in_scratch_netns()?;
    let lo = rtnl.loopback()?;
    rtnl.replace_root_fq(&lo, FQ_HANDLE_ID, FQ_LIMITS)
}

/// True when this kernel has sch_fq.
pub fn kernel_has_fq() -> bool {
    try_fq_in_scratch_netns().is_ok()
}

/// Devices (up, not loopback) of the namespace at `ns_path`, with their root qdisc kind.
pub fn devices(ns_path: &Path) -> Result<Vec<(String, String)>, RtnlError> {
    let mut rtnl = Rtnl::in_netns(ns_path)?;
    let mut devs = Vec::new();
    for link in rtnl.links()? {
        if !link.up || link.loopback {
            continue;
        }
        // An up device always has a root qdisc; "noqueue" is what a missing one behaves as.
        let kind = rtnl
            .root_qdisc(&link)?
            .map_or_else(|| "noqueue".to_owned(), |q| q.kind);
        devs.push((link.name, kind));
    }
    Ok(devs)
}

/// Decides, before anything changes, which devices of a namespace (those `wanted`) need fq. Errors
/// name a device with a configured qdisc kchaos must not replace.
pub fn plan(
    ns: &netns::NetnsRef,
    ns_path: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<FqInstall>, BadInput> {
    let devs = devices(ns_path)
        .map_err(|e| BadInput::new(format!("listing devices for --delay or --rate: {e}")))?;
    let mut plan = Vec::new();
    for (dev, kind) in devs.into_iter().filter(|(dev, _)| wanted(dev)) {
        if kind == "fq" {
            continue; // already honours EDT; not ours to remove later
        }
        if !DEFAULT_KINDS.contains(&kind.as_str()) {
            return Err(BadInput::new(format!(
                "--delay and --rate need sch_fq on {dev}, which has a configured root qdisc '{kind}'; kchaos won't \
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
pub fn install(fq: &FqInstall) -> Result<(), QdiscError> {
    let ns_path = fq.netns.locate().ok_or_else(|| QdiscError::NetnsGone {
        dev: fq.dev.clone(),
    })?;
    let mut rtnl = Rtnl::in_netns(&ns_path)?;
    let link = rtnl.link(&fq.dev)?.ok_or_else(|| QdiscError::DeviceGone {
        dev: fq.dev.clone(),
    })?;
    rtnl.replace_root_fq(&link, FQ_HANDLE_ID, FQ_LIMITS)?;
    Ok(())
}

/// Deletes kchaos's fq, which brings back the device's default qdisc. A namespace or device that is
/// gone took the qdisc with it, and a root qdisc other than kchaos's fq is someone else's: nothing to
/// do.
pub fn restore(fq: &FqInstall) -> Result<(), QdiscError> {
    let Some(ns_path) = fq.netns.locate() else {
        return Ok(());
    };
    let mut rtnl = match Rtnl::in_netns(&ns_path) {
        Err(RtnlError::OpenNetns { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(()); // the namespace ended since it was located
        }
        other => other?,
    };
    let Some(link) = rtnl.link(&fq.dev)? else {
        return Ok(());
    };
    let ours = rtnl::Qdisc {
        kind: "fq".into(),
        handle: FQ_HANDLE_ID,
    };
    if rtnl.root_qdisc(&link)?.as_ref() != Some(&ours) {
        return Ok(());
    }
    // The kernel deletes only a root with this handle, so one put there since is left alone.
    match rtnl.delete_root_qdisc(&link, FQ_HANDLE_ID) {
        // The device went away meanwhile, and its qdisc with it.
        Err(e) if e.errno() == Some(nix::errno::Errno::ENODEV) => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::engine::rtnl::testing::{TestNetns, root};

    fn netns_ref(ns: &TestNetns) -> netns::NetnsRef {
        netns::NetnsRef {
            inode: std::fs::metadata(ns.path()).unwrap().ino(),
            // No process is in it: locate() finds it under /run/netns.
            pid_hint: 0,
        }
    }

    #[test]
    fn plans_fq_for_default_roots_and_refuses_configured_ones() {
        if !root("plans_fq_for_default_roots_and_refuses_configured_ones") {
            return;
        }
        let ns = TestNetns::new("plan");
        ns.veth("kcp0");
        ns.veth("kcp1");
        ns.tc(&["qdisc", "replace", "dev", "kcp1", "root", "pfifo_fast"]);
        let mut devs = devices(&ns.path()).unwrap();
        devs.sort();
        // Not lo, not the peers that are down.
        assert_eq!(
            devs,
            [
                ("kcp0".to_owned(), "noqueue".to_owned()),
                ("kcp1".to_owned(), "pfifo_fast".to_owned())
            ]
        );
        let netns = netns_ref(&ns);
        let mut plan = plan(&netns, &ns.path(), |_| true).unwrap();
        plan.sort_by(|a, b| a.dev.cmp(&b.dev));
        assert_eq!(plan.len(), 2);
        assert_eq!(
            (
                plan[1].dev.as_str(),
                plan[1].previous.as_str(),
                plan[1].handle.as_str()
            ),
            ("kcp1", "pfifo_fast", FQ_HANDLE)
        );
        ns.tc(&[
            "qdisc", "replace", "dev", "kcp1", "root", "handle", "1:", "htb",
        ]);
        let refused = super::plan(&netns, &ns.path(), |_| true)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("kcp1") && refused.contains("'htb'"),
            "{refused}"
        );
    }

    #[test]
    fn restore_leaves_what_is_not_kchaos_fq() {
        if !root("restore_leaves_what_is_not_kchaos_fq") {
            return;
        }
        let ns = TestNetns::new("restore");
        ns.veth("kcr0");
        // kchaos's handle, but not fq: someone else's.
        ns.tc(&[
            "qdisc",
            "replace",
            "dev",
            "kcr0",
            "root",
            "handle",
            "4b43:",
            "pfifo_fast",
        ]);
        let fq = |dev: &str| FqInstall {
            netns: netns_ref(&ns),
            dev: dev.into(),
            previous: "noqueue".into(),
            handle: FQ_HANDLE.into(),
        };
        restore(&fq("kcr0")).unwrap();
        let shown = ns.tc(&["qdisc", "show", "dev", "kcr0", "root"]);
        assert!(shown.contains("qdisc pfifo_fast 4b43: root"), "{shown}");
        // A device that is gone, and a namespace that is gone, took the qdisc with them.
        restore(&fq("kcgone0")).unwrap();
        let gone = FqInstall {
            netns: netns::NetnsRef {
                inode: 1,
                pid_hint: 0,
            },
            ..fq("kcr0")
        };
        restore(&gone).unwrap();
        let e = install(&gone).unwrap_err();
        assert!(matches!(e, QdiscError::NetnsGone { .. }), "{e}");
        let e = install(&fq("kcgone0")).unwrap_err();
        assert_eq!(e.to_string(), "kcgone0 is gone from its network namespace");
    }

    #[test]
    fn the_handle_records_keep_is_the_one_the_kernel_gets() {
        assert_eq!(format!("{:x}:", FQ_HANDLE_ID >> 16), FQ_HANDLE);
        assert_eq!(FQ_HANDLE_ID & 0xffff, 0);
    }
}
