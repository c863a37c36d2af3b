//! Delay and rate on the way in (`--delay`, `--rate` with `--direction ingress|both`), for a target
//! in a network namespace of its own (a container): kernel side `net_tc_ingress` in
//! chaos-ebpf/src/net_tc.rs.
//!
//! EDT is honoured where a packet leaves a device, and a packet arriving for the target leaves one
//! device on its way: the host-side end of the container's veth. Its egress is the container's
//! ingress, so a tcx program there stamps the departure time and fq on that device holds the packet.
//! That device carries the whole namespace's traffic, so kchaos first checks that every process in
//! the namespace belongs to a target; a target in kchaos's own namespace has no such device (its
//! packets arrive on devices every process shares), and is refused.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use crate::{
    engine::{cgroup, netns::NetnsRef, rtnl::Rtnl, targets::Target},
    error::BadInput,
};

/// The program's name in the object.
pub const PROGRAM: &str = "net_tc_ingress";

/// The host-side ends (in kchaos's namespace) of the veths of every target's namespace, or why
/// a delay or a rate on ingress can't be held to the targets.
pub fn plan(targets: &[Target]) -> Result<Vec<String>, BadInput> {
    let why = "--delay or --rate on ingress (--direction ingress or both)";
    let own = NetnsRef::own().map_err(|e| BadInput::new(format!("{why}: {e}")))?;
    let mut namespaces: Vec<NetnsRef> = Vec::new();
    for t in targets {
        for pid in cgroup::procs_recursive(&t.path).unwrap_or_default() {
            if let Ok(ns) = NetnsRef::of_pid(pid)
                && !namespaces.iter().any(|n| n.inode == ns.inode)
            {
                namespaces.push(ns);
            }
        }
    }
    if namespaces.is_empty() {
        return Err(BadInput::new(format!(
            "{why} needs a process in the target already: its network namespace is where the \
             delay goes, and an empty cgroup has none yet"
        )));
    }
    let mount = cgroup::v2_mount().map_err(|e| BadInput::new(format!("{why}: {e}")))?;
    let host_links = Rtnl::here()
        .and_then(|mut r| r.links())
        .map_err(|e| BadInput::new(format!("{why}: {e}")))?;
    let mut devices = Vec::new();
    for ns in &namespaces {
        if ns.inode == own.inode {
            return Err(BadInput::new(format!(
                "{why} needs the target in a network namespace of its own (a container): process \
                 {} of it lives in kchaos's namespace, where packets arrive on devices every \
                 process shares. Delay or limit what it sends (--direction egress), or drop on ingress \
                 (--percent with --direction ingress)",
                ns.pid_hint
            )));
        }
        if let Some((pid, cg)) = outsider(ns, targets, &mount) {
            return Err(BadInput::new(format!(
                "{why} would delay everything entering the network namespace of process {}, and \
                 process {pid} shares it from cgroup {cg}, which is not a target: target that \
                 cgroup too, or delay on egress",
                ns.pid_hint
            )));
        }
        let path = ns.locate().ok_or_else(|| {
            BadInput::new(format!(
                "{why}: the network namespace of process {} is gone",
                ns.pid_hint
            ))
        })?;
        let inside = Rtnl::in_netns(&path)
            .and_then(|mut r| r.links())
            .map_err(|e| BadInput::new(format!("{why}: {e}")))?;
        for dev in inside.iter().filter(|l| l.up && !l.loopback) {
            let host_end = dev.peer_elsewhere.and_then(|peer| {
                host_links
                    .iter()
                    .find(|h| h.index == peer && h.peer_elsewhere == Some(dev.index))
            });
            let Some(host_end) = host_end else {
                return Err(BadInput::new(format!(
                    "{why}: {} in the namespace of process {} has no other end in kchaos's \
                     namespace (not a veth to this host), so no device here carries what \
                     arrives on it",
                    dev.name, ns.pid_hint
                )));
            };
            if !devices.contains(&host_end.name) {
                devices.push(host_end.name.clone());
            }
        }
    }
    Ok(devices)
}

/// A process (pid, cgroup) in namespace `ns` outside every target, if there is one.
fn outsider(ns: &NetnsRef, targets: &[Target], mount: &Path) -> Option<(u32, String)> {
    let pids = fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids {
        let in_ns = fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ns.inode);
        if !in_ns {
            continue;
        }
        // A process that exited meanwhile is no one's.
        let Ok(cg) = cgroup::of_pid(pid) else {
            continue;
        };
        let dir = mount.join(cg.trim_start_matches('/'));
        if !targets.iter().any(|t| dir.starts_with(&t.path)) {
            return Some((pid, cg));
        }
    }
    None
}
