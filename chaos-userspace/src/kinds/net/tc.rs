//! The TC egress program of `--duplicate` and `--corrupt` (kernel side: chaos-ebpf/src/net_tc.rs).
//!
//! cgroup_skb may not write packet data, so these faults run where the target's packets leave: on
//! every up device of each network namespace a target process lives in. They are tcx links, owned
//! by the loader's fds, so they end with it whatever kills it; the program lets every packet whose
//! socket is not in a target cgroup through after one lookup per cgroup level the targets span.

use std::{fs::File, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::HashMap,
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};
use nix::sched::{CloneFlags, setns};

use crate::{
    engine::{netns::NetnsRef, rtnl::Rtnl, targets::Target},
    error::BadInput,
};

/// The program's name in the object.
pub const PROGRAM: &str = "net_tc_egress";

/// Every namespace a process of a target lives in; kchaos's own when the targets hold none yet.
pub fn target_namespaces(targets: &[Target]) -> Result<Vec<NetnsRef>> {
    let mut namespaces: Vec<NetnsRef> = Vec::new();
    for t in targets {
        for pid in crate::engine::cgroup::procs_recursive(&t.path).unwrap_or_default() {
            if let Ok(ns) = NetnsRef::of_pid(pid)
                && !namespaces.iter().any(|n| n.inode == ns.inode)
            {
                namespaces.push(ns);
            }
        }
    }
    if namespaces.is_empty() {
        namespaces.push(NetnsRef::own()?);
    }
    Ok(namespaces)
}

/// Refuses, before anything is loaded, a kernel without tcx: its older TC attachments are netlink
/// filters that would outlive a killed loader.
pub fn preflight() -> Result<(), BadInput> {
    crate::engine::capabilities::tcx().map(drop).map_err(|why| {
        BadInput::new(format!(
            "--duplicate and --corrupt need tcx links (kernel 6.6+), which end with kchaos however \
             it stops: {why}"
        ))
    })
}

/// Fills the target ids, loads the program and links it first on the egress of every up device of
/// `namespaces`. Returns a line per attachment. On error the links made so far close with `ebpf`.
pub fn attach(
    ebpf: &mut Ebpf,
    targets: &[(u64, u32)],
    namespaces: &[NetnsRef],
) -> Result<Vec<String>> {
    // The program compares up to INLINE_TARGETS ids from the config itself; the hash serves more.
    if targets.len() > chaos_common::INLINE_TARGETS {
        let mut ids = HashMap::<_, u64, u8>::try_from(
            ebpf.map_mut("NET_TARGETS").context("map NET_TARGETS")?,
        )?;
        for &(id, _) in targets {
            ids.insert(id, 1, 0)
                .with_context(|| format!("adding cgroup id {id} to NET_TARGETS"))?;
        }
    }
    let prog: &mut SchedClassifier = ebpf.program_mut(PROGRAM).context(PROGRAM)?.try_into()?;
    prog.load()
        .with_context(|| format!("loading the {PROGRAM} program"))?;
    let mut lines = Vec::new();
    for ns in namespaces {
        let path = ns
            .locate()
            .context("a target's network namespace vanished")?;
        let devices: Vec<String> = Rtnl::in_netns(&path)
            .and_then(|mut r| r.links())
            .with_context(|| format!("listing the devices of {}", path.display()))?
            .into_iter()
            .filter(|l| l.up)
            .map(|l| l.name)
            .collect();
        crate::engine::fds::reserve_links(
            devices.len() as u64,
            &format!("tcx links on {} device(s)", devices.len()),
        )?;
        attach_in(prog, PROGRAM, &path, &devices)?;
        lines.extend(devices.iter().map(|d| {
            format!(
                "tcx/egress -> {d} (netns {}, first; link, fd-owned)",
                ns.inode
            )
        }));
    }
    Ok(lines)
}

/// Loads `name` and links it first on the egress of `devices` of kchaos's own namespace.
pub fn attach_here(ebpf: &mut Ebpf, name: &str, devices: &[String]) -> Result<Vec<String>> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .context(name.to_owned())?
        .try_into()?;
    prog.load()
        .with_context(|| format!("loading the {name} program"))?;
    crate::engine::fds::reserve_links(
        devices.len() as u64,
        &format!("tcx links on {} device(s)", devices.len()),
    )?;
    attach_in(prog, name, Path::new("/proc/self/ns/net"), devices)?;
    Ok(devices
        .iter()
        .map(|d| format!("tcx/egress -> {d} ({name}, first; link, fd-owned)"))
        .collect())
}

/// Links the program to `devices` from a thread that entered the namespace at `ns_path` (a device
/// name means something only in its namespace; the calling thread's namespace is never changed).
fn attach_in(
    prog: &mut SchedClassifier,
    name: &str,
    ns_path: &Path,
    devices: &[String],
) -> Result<()> {
    let ns = File::open(ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<()> {
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {}", ns_path.display()))?;
                for dev in devices {
                    // First, so a program before ours that ends the chain can't hide the target's
                    // packets from it; ours always passes on to the next (TCX_NEXT).
                    prog.attach_with_options(
                        dev,
                        TcAttachType::Egress,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                    .with_context(|| format!("attaching {name} to the egress of {dev}"))?;
                }
                Ok(())
            })
            .join()
            .map_err(|_| {
                anyhow::anyhow!("the thread attaching to {} panicked", ns_path.display())
            })?
    })
}
