//! Kubernetes pods on this node to cgroup directories, without the API server: kubelet keeps a
//! directory per pod, /var/log/pods/NAMESPACE_NAME_UID/ (one directory per container inside), and a
//! cgroup per pod named after its uid, by QoS class:
//!
//! - systemd driver: kubepods.slice/kubepods-pod<uid>.slice (guaranteed),
//!   kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice, and besteffort alike,
//!   the uid's '-' written '_'; containers below as cri-containerd-<id>.scope, crio-<id>.scope or
//!   docker-<id>.scope;
//! - cgroupfs driver: kubepods/pod<uid>, kubepods/burstable/pod<uid>, kubepods/besteffort/pod<uid>;
//!   containers below as <id>.
//!
//! A container of the pod is found by its name through kubelet's links
//! /var/log/containers/<pod>_<namespace>_<container>-<id>.log, whose id names its cgroup.

use std::path::{Path, PathBuf};

use super::containers::{self, HostRoots, Runtime};
use crate::error::BadInput;

/// Where the search for a pod's cgroup stops going down (a kind node nests kubepods under its own
/// container's cgroup: kubelet.slice/kubelet-kubepods.slice/... is 4 deep with the pod).
const MAX_DEPTH: usize = 7;

/// A DNS-1123 label or subdomain, as namespaces and pod names are.
fn valid_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `NAMESPACE/NAME`, checked.
pub fn parse_pod(given: &str) -> Result<(&str, &str), String> {
    match given.split_once('/') {
        Some((ns, name)) if valid_k8s_name(ns) && valid_k8s_name(name) => Ok((ns, name)),
        _ => Err(format!(
            "'{given}' is not a pod: give NAMESPACE/NAME (lowercase letters, digits, '-' and '.'), \
             as `kubectl get pods -A` shows them, e.g. default/web-7d4b9c-x2x5q"
        )),
    }
}

/// One pod log directory: NAMESPACE_NAME_UID.
fn split_pod_dir(dir: &str) -> Option<(&str, &str, &str)> {
    let (ns, rest) = dir.split_once('_')?;
    let (name, uid) = rest.rsplit_once('_')?;
    (!ns.is_empty() && !name.is_empty() && !uid.is_empty()).then_some((ns, name, uid))
}

/// The cgroup directory names a pod with this uid has under either driver.
fn is_pod_cgroup(dir_name: &str, uid: &str) -> bool {
    let systemd = format!("pod{}.slice", uid.replace('-', "_"));
    dir_name == format!("pod{uid}")
        || (dir_name.starts_with("kubepods") && dir_name.ends_with(&systemd))
}

/// Every cgroup below `root` that is the pod `uid`'s.
fn pod_cgroups(root: &Path, uid: &str) -> Vec<PathBuf> {
    super::cgroup::find_below(root, MAX_DEPTH, |_, name| is_pod_cgroup(name, uid))
}

/// One resolved pod target: the cgroup and how it was named.
#[derive(Debug, PartialEq, Eq)]
pub struct PodTarget {
    pub path: PathBuf,
    pub origin: String,
}

/// Resolves `--pod NAMESPACE/NAME`, and with `containers` those containers of it (by name); without,
/// the whole pod's cgroup (every container, the sandbox too).
pub fn resolve(
    roots: &HostRoots,
    given: &str,
    containers: &[String],
) -> Result<Vec<PodTarget>, BadInput> {
    let (ns, name) = parse_pod(given).map_err(|e| BadInput::new(format!("--pod {e}")))?;
    let mut pods_here: Vec<String> = Vec::new();
    let mut uids: Vec<(String, PathBuf)> = Vec::new();
    let entries = std::fs::read_dir(&roots.pod_logs).map_err(|e| {
        BadInput::new(format!(
            "--pod {given}: reading {}: {e} (is this a Kubernetes node? kchaos finds pods through \
             kubelet's pod log directories)",
            roots.pod_logs.display()
        ))
    })?;
    for entry in entries.flatten() {
        let dir = entry.file_name().to_string_lossy().into_owned();
        let Some((pod_ns, pod_name, uid)) = split_pod_dir(&dir) else {
            continue;
        };
        if (pod_ns, pod_name) == (ns, name) {
            uids.push((uid.to_owned(), entry.path()));
        } else if pod_ns == ns || pod_name == name {
            pods_here.push(format!("{pod_ns}/{pod_name}"));
        }
    }
    if uids.is_empty() {
        pods_here.sort();
        pods_here.dedup();
        return Err(BadInput::new(format!(
            "--pod {given}: no such pod on this node (no {}/{ns}_{name}_<uid>){}",
            roots.pod_logs.display(),
            if pods_here.is_empty() {
                String::new()
            } else {
                format!("; similar pods here: {}", pods_here.join(", "))
            }
        )));
    }
    // A pod recreated under the same name leaves the old log directory for a while: the one with a
    // cgroup is the running one.
    let mut running: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    for (uid, log_dir) in &uids {
        for cg in pod_cgroups(&roots.cgroup, uid) {
            running.push((uid.clone(), log_dir.clone(), cg));
        }
    }
    let (uid, log_dir, pod_cg) = match running.len() {
        1 => running.remove(0),
        0 => {
            return Err(BadInput::new(format!(
                "--pod {given}: kubelet knows it (uid {}) but it has no cgroup under {}: is it \
                 running on this node?",
                uids.iter()
                    .map(|(u, _)| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                roots.cgroup.display()
            )));
        }
        _ => {
            return Err(BadInput::new(format!(
                "--pod {given}: several pod cgroups match: {}",
                running
                    .iter()
                    .map(|(_, _, cg)| cg.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    if containers.is_empty() {
        return Ok(vec![PodTarget {
            path: pod_cg,
            origin: format!("--pod {given} (uid {uid})"),
        }]);
    }
    let mut out = Vec::new();
    for container in containers {
        out.push(PodTarget {
            path: container_cgroup(roots, given, (ns, name), &log_dir, &pod_cg, container)?,
            origin: format!("--pod {given} --container {container}"),
        });
    }
    Ok(out)
}

/// The cgroup of the pod's container named `container`.
fn container_cgroup(
    roots: &HostRoots,
    given: &str,
    (ns, name): (&str, &str),
    log_dir: &Path,
    pod_cg: &Path,
    container: &str,
) -> Result<PathBuf, BadInput> {
    if !log_dir.join(container).is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(log_dir)
            .map(|es| {
                es.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        return Err(BadInput::new(format!(
            "--pod {given} --container {container}: the pod has no container of that name; its \
             containers: {}",
            if names.is_empty() {
                "(none listed)".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    // Every id kubelet has linked for it (one per restart kept), newest first by name is no order:
    // the one whose cgroup is there is the running one.
    let ids: Vec<String> = std::fs::read_dir(&roots.container_logs)
        .map(|es| {
            es.flatten()
                .filter_map(|e| containers::parse_container_log(&e.file_name().to_string_lossy()))
                .filter(|l| l.namespace == ns && l.pod == name && l.container == container)
                .map(|l| l.id)
                .collect()
        })
        .unwrap_or_default();
    let children: Vec<(String, PathBuf)> = std::fs::read_dir(pod_cg)
        .map(|es| {
            es.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    let mut found: Vec<PathBuf> = children
        .iter()
        .filter(|(child, _)| {
            ids.iter()
                .any(|id| containers::matches_id(child, id, Runtime::Any, true))
        })
        .map(|(_, p)| p.clone())
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(BadInput::new(format!(
            "--pod {given} --container {container}: no running container cgroup under {} (ids \
             kubelet links in {}: {}); is the container running?",
            pod_cg.display(),
            roots.container_logs.display(),
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.iter().map(|i| &i[..12]).collect::<Vec<_>>().join(", ")
            }
        ))),
        _ => Err(BadInput::new(format!(
            "--pod {given} --container {container}: several cgroups match: {}",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8d3c6a1e-5b2f-4c7d-9e0a-1f2b3c4d5e6f";
    const APP: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const SIDECAR: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const PAUSE: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    /// The pod cgroup's path for a driver and QoS class, relative to the cgroup root.
    fn pod_dir(systemd: bool, qos: &str) -> String {
        let u = UID.replace('-', "_");
        match (systemd, qos) {
            (true, "guaranteed") => format!("kubepods.slice/kubepods-pod{u}.slice"),
            (true, q) => format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{u}.slice"),
            (false, "guaranteed") => format!("kubepods/pod{UID}"),
            (false, q) => format!("kubepods/{q}/pod{UID}"),
        }
    }

    fn container_dir(systemd: bool, runtime: &str, id: &str) -> String {
        if systemd {
            format!("{runtime}-{id}.scope")
        } else {
            id.to_owned()
        }
    }

    /// A node in a temp dir: pod shop/web-0 with containers app and sidecar (and a pause sandbox),
    /// another pod shop/db-0, and an old log directory of web-0 from a previous uid.
    fn node(tag: &str, systemd: bool, qos: &str, runtime: &str) -> (PathBuf, HostRoots) {
        let base =
            std::env::temp_dir().join(format!("kchaos-unit-pods-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let roots = HostRoots::under(base.join("cgroup"), &base.join("state"));
        let pod = roots.cgroup.join(pod_dir(systemd, qos));
        for id in [APP, SIDECAR, PAUSE] {
            std::fs::create_dir_all(pod.join(container_dir(systemd, runtime, id))).unwrap();
        }
        std::fs::create_dir_all(
            roots
                .cgroup
                .join("kubepods.slice/kubepods-besteffort.slice/other"),
        )
        .unwrap();
        for c in ["app", "sidecar"] {
            std::fs::create_dir_all(roots.pod_logs.join(format!("shop_web-0_{UID}/{c}"))).unwrap();
        }
        std::fs::create_dir_all(roots.pod_logs.join("shop_web-0_0ld-uid/app")).unwrap();
        std::fs::create_dir_all(roots.pod_logs.join("shop_db-0_9999/db")).unwrap();
        std::fs::create_dir_all(&roots.container_logs).unwrap();
        for (c, id) in [("app", APP), ("sidecar", SIDECAR)] {
            std::fs::write(
                roots
                    .container_logs
                    .join(format!("web-0_shop_{c}-{id}.log")),
                "",
            )
            .unwrap();
        }
        // An earlier run of app, gone.
        let old = "4444444444444444444444444444444444444444444444444444444444444444";
        std::fs::write(
            roots
                .container_logs
                .join(format!("web-0_shop_app-{old}.log")),
            "",
        )
        .unwrap();
        (base, roots)
    }

    #[test]
    fn both_drivers_every_qos_class() {
        for systemd in [true, false] {
            for qos in ["guaranteed", "burstable", "besteffort"] {
                for runtime in ["cri-containerd", "crio"] {
                    let tag = format!("{systemd}-{qos}-{runtime}");
                    let (base, roots) = node(&tag, systemd, qos, runtime);
                    let pod = roots.cgroup.join(pod_dir(systemd, qos));
                    let whole = resolve(&roots, "shop/web-0", &[]).unwrap();
                    assert_eq!(whole.len(), 1, "{tag}");
                    assert_eq!(whole[0].path, pod, "{tag}");
                    assert_eq!(whole[0].origin, format!("--pod shop/web-0 (uid {UID})"));
                    let one = resolve(&roots, "shop/web-0", &["app".into()]).unwrap();
                    assert_eq!(
                        one,
                        vec![PodTarget {
                            path: pod.join(container_dir(systemd, runtime, APP)),
                            origin: "--pod shop/web-0 --container app".into()
                        }],
                        "{tag}"
                    );
                    let both =
                        resolve(&roots, "shop/web-0", &["app".into(), "sidecar".into()]).unwrap();
                    assert_eq!(
                        both[1].path,
                        pod.join(container_dir(systemd, runtime, SIDECAR))
                    );
                    std::fs::remove_dir_all(&base).unwrap();
                }
            }
        }
    }

    #[test]
    fn unknown_pods_and_containers_say_what_is_there() {
        let (base, roots) = node("errors", true, "burstable", "cri-containerd");
        let e = resolve(&roots, "shop/web-1", &[]).unwrap_err();
        assert!(e.0.contains("no such pod on this node"), "{e}");
        assert!(
            e.0.contains("similar pods here: shop/db-0, shop/web-0"),
            "{e}"
        );
        let e = resolve(&roots, "shop/web-0", &["proxy".into()]).unwrap_err();
        assert!(
            e.0.ends_with("the pod has no container of that name; its containers: app, sidecar"),
            "{e}"
        );
        // Known to kubelet, but no cgroup here.
        let e = resolve(&roots, "shop/db-0", &[]).unwrap_err();
        assert!(e.0.contains("has no cgroup under"), "{e}");
        // The container's cgroup is gone (it restarted and the new one is not linked yet).
        let pod = roots.cgroup.join(pod_dir(true, "burstable"));
        std::fs::remove_dir(pod.join(format!("cri-containerd-{APP}.scope"))).unwrap();
        let e = resolve(&roots, "shop/web-0", &["app".into()]).unwrap_err();
        assert!(e.0.contains("no running container cgroup"), "{e}");
        for bad in [
            "web-0",
            "Shop/web-0",
            "shop/",
            "/web-0",
            "shop/web_0",
            "a/b/c",
        ] {
            let e = resolve(&roots, bad, &[]).unwrap_err();
            assert!(
                e.0.contains("is not a pod: give NAMESPACE/NAME"),
                "{bad}: {e}"
            );
        }
        let e = resolve(
            &HostRoots::under(roots.cgroup.clone(), &base.join("nowhere")),
            "shop/web-0",
            &[],
        )
        .unwrap_err();
        assert!(e.0.contains("is this a Kubernetes node?"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
