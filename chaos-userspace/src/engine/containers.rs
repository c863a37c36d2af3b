//! Containers to cgroup directories. A container is named by its runtime's name for it (`docker ps`,
//! `podman ps`, `nerdctl ps`, `crictl ps` show it) or by its id or a unique prefix of it. Names come
//! from each runtime's own state on the host, read as files (no client library, no daemon socket):
//! Docker's /var/lib/docker/containers/*/config.v2.json, containers-storage's containers.json (Podman
//! and CRI-O), nerdctl's name store (/var/lib/nerdctl/*/names/NAMESPACE/NAME) and kubelet's
//! /var/log/containers links (containerd or CRI-O under Kubernetes). An id then leads to the cgroup:
//! each runtime names a container's cgroup after its id with a prefix of its own (docker-<id>.scope,
//! docker/<id>, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope, libpod_parent/libpod-<id>,
//! kubepods/.../pod<uid>/<id>); kchaos searches the cgroup2 tree for the one directory that matches.

use std::path::{Path, PathBuf};

use crate::error::BadInput;

/// Where runtimes keep their state on the host. Tests point it at fixture trees; on a host the
/// environment variable KCHAOS_STATE_ROOT (a directory standing in for /) moves every state path but
/// the cgroup mount.
#[derive(Clone, Debug)]
pub struct HostRoots {
    /// The cgroup v2 mount.
    pub cgroup: PathBuf,
    /// Docker's data root (/var/lib/docker).
    pub docker: PathBuf,
    /// containers-storage roots (Podman and CRI-O, rootful): /var/lib/containers/storage and the
    /// run root /run/containers/storage.
    pub storage: Vec<PathBuf>,
    /// nerdctl's data root (/var/lib/nerdctl).
    pub nerdctl: PathBuf,
    /// kubelet's pod log directories (/var/log/pods/NAMESPACE_NAME_UID/CONTAINER/).
    pub pod_logs: PathBuf,
    /// kubelet's links to container logs (/var/log/containers/POD_NAMESPACE_CONTAINER-ID.log).
    pub container_logs: PathBuf,
}

impl HostRoots {
    /// This host's: the standard places, under KCHAOS_STATE_ROOT when it is set.
    pub fn host(cgroup: PathBuf) -> Self {
        let base = std::env::var_os("KCHAOS_STATE_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        Self::under(cgroup, &base)
    }

    /// The standard places under `base` (a directory standing in for /).
    pub fn under(cgroup: PathBuf, base: &Path) -> Self {
        let at = |p: &str| base.join(p);
        HostRoots {
            cgroup,
            docker: at("var/lib/docker"),
            storage: vec![
                at("var/lib/containers/storage"),
                at("run/containers/storage"),
            ],
            nerdctl: at("var/lib/nerdctl"),
            pod_logs: at("var/log/pods"),
            container_logs: at("var/log/containers"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
    /// Whichever runtime's naming matches.
    Any,
}

impl Runtime {
    pub const NAMES: &'static [&'static str] = &["docker", "containerd", "crio", "podman", "any"];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "docker" => Runtime::Docker,
            "containerd" => Runtime::Containerd,
            "crio" => Runtime::Crio,
            "podman" => Runtime::Podman,
            "any" => Runtime::Any,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Podman => "podman",
            Runtime::Any => "any",
        }
    }

    /// Directory-name prefixes this runtime puts before the id.
    fn prefixes(self) -> &'static [&'static str] {
        match self {
            // systemd driver: docker-<id>.scope; cgroupfs driver: docker/<id> (the bare id, under a
            // directory named docker).
            Runtime::Docker => &["docker-", ""],
            // systemd driver: cri-containerd-<id>.scope, crio-<id>.scope; kubelet's cgroupfs driver:
            // kubepods/<qos>/pod<uid>/<id>.
            // nerdctl (systemd driver): nerdctl-<id>.scope.
            Runtime::Containerd => &["cri-containerd-", "nerdctl-", ""],
            Runtime::Crio => &["crio-", ""],
            Runtime::Podman => &["libpod-"],
            Runtime::Any => &[
                "docker-",
                "cri-containerd-",
                "nerdctl-",
                "crio-",
                "libpod-",
                "",
            ],
        }
    }
}

/// Ids are hex (a prefix of at least 12 digits, as `docker ps` shows, is enough).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.len() >= 12 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "'{id}' is not a container id: allowed are 12 to 64 hex digits (docker ps, crictl ps, podman ps show them)"
        ))
    }
}

/// The depth the search goes to: kubepods.slice/kubepods-burstable.slice/...-pod<uid>.slice/<ctr> is 4.
const MAX_DEPTH: usize = 6;

/// Finds the container's cgroup under `root` (the cgroup2 mount).
pub fn resolve(root: &Path, id: &str, runtime: Runtime) -> Result<PathBuf, BadInput> {
    check_id(id).map_err(BadInput::new)?;
    let id = id.to_ascii_lowercase();
    let mut found = super::cgroup::find_below(root, MAX_DEPTH, |dir, name| {
        let bare_ok = dir.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            n == "docker" || n.starts_with("pod")
        });
        matches_id(name, &id, runtime, bare_ok)
    });
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(BadInput::new(format!(
            "container {id}: no cgroup under {} is named after it ({:?} naming); is it running, and is \
             this its host?",
            root.display(),
            runtime
        ))),
        _ => Err(BadInput::new(format!(
            "container {id}: the id matches several cgroups ({}); give more of the id",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// True when the cgroup directory `name` is the container `id`'s. `bare_ok`: the parent is where a
/// cgroupfs driver puts bare ids (docker/<id>, kubepods/.../pod<uid>/<id>).
pub fn matches_id(name: &str, id: &str, runtime: Runtime, bare_ok: bool) -> bool {
    let name = name.to_ascii_lowercase();
    runtime.prefixes().iter().any(|prefix| {
        if prefix.is_empty() {
            bare_ok && name.starts_with(id) && name.bytes().all(|b| b.is_ascii_hexdigit())
        } else {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with(id))
        }
    })
}

/// A container one of the runtimes' state files knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// Which state it came from: "docker", "podman/cri-o", "nerdctl", "kubernetes".
    pub source: &'static str,
    /// The full id (lowercase hex).
    pub id: String,
    pub name: String,
    /// Where it lives beyond its name (a nerdctl namespace, a pod), shown in messages.
    pub detail: String,
}

impl Known {
    fn describe(&self) -> String {
        let short = &self.id[..self.id.len().min(12)];
        if self.detail.is_empty() {
            format!("{} ({} {short})", self.name, self.source)
        } else {
            format!("{} ({} {short}, {})", self.name, self.source, self.detail)
        }
    }

    /// Whether `--runtime` lets this one through.
    fn is_of(&self, runtime: Runtime) -> bool {
        match runtime {
            Runtime::Any => true,
            Runtime::Docker => self.source == "docker",
            Runtime::Podman => self.source == "podman/cri-o",
            Runtime::Crio => matches!(self.source, "podman/cri-o" | "kubernetes"),
            Runtime::Containerd => matches!(self.source, "nerdctl" | "kubernetes"),
        }
    }
}

/// State files are small; a larger one is not what kchaos expects there, and is skipped.
const STATE_LIMIT: u64 = 64 << 20;

fn is_full_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every container the runtimes' state on this host names (created ones too, running or not).
pub fn known(roots: &HostRoots) -> Vec<Known> {
    let mut out = Vec::new();
    docker_known(&roots.docker, &mut out);
    for root in &roots.storage {
        storage_known(root, &mut out);
    }
    nerdctl_known(&roots.nerdctl, &mut out);
    kubernetes_known(&roots.container_logs, &mut out);
    out
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let text =
        crate::bounded_read::read_to_string(path, STATE_LIMIT, "container runtime state").ok()?;
    serde_json::from_str(&text).ok()
}

fn dir_names(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

/// Docker: containers/<id>/config.v2.json holds "ID" and "Name" ("/web").
fn docker_known(root: &Path, out: &mut Vec<Known>) {
    for (id, dir) in dir_names(&root.join("containers")) {
        if !is_full_id(&id) {
            continue;
        }
        let Some(v) = read_json(&dir.join("config.v2.json")) else {
            continue;
        };
        let name = v["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/');
        if !name.is_empty() {
            out.push(Known {
                source: "docker",
                id: id.to_ascii_lowercase(),
                name: name.to_owned(),
                detail: String::new(),
            });
        }
    }
}

/// containers-storage (Podman, CRI-O): <driver>-containers/containers.json (and the run root's
/// volatile-containers.json), a list of {"id", "names": [...]}.
fn storage_known(root: &Path, out: &mut Vec<Known>) {
    for (dir_name, dir) in dir_names(root) {
        if !dir_name.ends_with("-containers") {
            continue;
        }
        for file in ["containers.json", "volatile-containers.json"] {
            let Some(serde_json::Value::Array(list)) = read_json(&dir.join(file)) else {
                continue;
            };
            for c in list {
                let id = c["id"].as_str().unwrap_or_default();
                if !is_full_id(id) {
                    continue;
                }
                for name in c["names"].as_array().into_iter().flatten() {
                    if let Some(name) = name.as_str() {
                        out.push(Known {
                            source: "podman/cri-o",
                            id: id.to_ascii_lowercase(),
                            name: name.to_owned(),
                            detail: String::new(),
                        });
                    }
                }
            }
        }
    }
}

/// nerdctl: <data store hash>/names/<namespace>/<name>, a file holding the id.
fn nerdctl_known(root: &Path, out: &mut Vec<Known>) {
    for (_, store) in dir_names(root) {
        for (namespace, ns_dir) in dir_names(&store.join("names")) {
            for (name, file) in dir_names(&ns_dir) {
                let Ok(id) = crate::bounded_read::read_to_string(&file, 256, "nerdctl name") else {
                    continue;
                };
                let id = id.trim();
                if is_full_id(id) {
                    out.push(Known {
                        source: "nerdctl",
                        id: id.to_ascii_lowercase(),
                        name,
                        detail: format!("namespace {namespace}"),
                    });
                }
            }
        }
    }
}

/// kubelet: /var/log/containers/<pod>_<namespace>_<container>-<id>.log (pod names, namespaces and
/// container names hold no '_').
fn kubernetes_known(dir: &Path, out: &mut Vec<Known>) {
    for (file, _) in dir_names(dir) {
        if let Some(k) = parse_container_log(&file) {
            out.push(Known {
                source: "kubernetes",
                id: k.id,
                name: k.container,
                detail: format!("pod {}/{}", k.namespace, k.pod),
            });
        }
    }
}

/// One /var/log/containers file name, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct ContainerLog {
    pub pod: String,
    pub namespace: String,
    pub container: String,
    pub id: String,
}

pub fn parse_container_log(file: &str) -> Option<ContainerLog> {
    let stem = file.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if !is_full_id(id) {
        return None;
    }
    let mut parts = rest.split('_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [pod, namespace, container].iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(ContainerLog {
        pod: pod.into(),
        namespace: namespace.into(),
        container: container.into(),
        id: id.to_ascii_lowercase(),
    })
}

/// How many candidates an error lists.
const LISTED: usize = 12;

fn listing(items: &[String]) -> String {
    let mut text = items[..items.len().min(LISTED)].join(", ");
    if items.len() > LISTED {
        text += &format!(", ... ({} in all)", items.len());
    }
    text
}

/// Resolves `--container NAME|ID` to the container's cgroup and a description of what matched
/// ("web (podman/cri-o 4f1e2a9c0b7d)"). A name matches exactly; an id matches by a unique prefix (at
/// least 4 hex digits). An id no state file knows is still looked for in the cgroup tree (12 hex
/// digits or more), for runtimes whose state kchaos does not read.
pub fn resolve_name(
    roots: &HostRoots,
    given: &str,
    runtime: Runtime,
) -> Result<(PathBuf, String), BadInput> {
    if given.is_empty() {
        return Err(BadInput::new(
            "--container: empty; give a container's name or id (docker ps, podman ps, nerdctl ps, \
             crictl ps show them)",
        ));
    }
    let all: Vec<Known> = known(roots)
        .into_iter()
        .filter(|k| k.is_of(runtime))
        .collect();
    let lower = given.to_ascii_lowercase();
    let mut matched: Vec<&Known> = all.iter().filter(|k| k.name == given).collect();
    if matched.is_empty() && given.len() >= 4 && given.bytes().all(|b| b.is_ascii_hexdigit()) {
        matched = all.iter().filter(|k| k.id.starts_with(&lower)).collect();
    }
    // The same container in two states (CRI-O's storage and kubelet's links): once.
    let mut seen = std::collections::HashSet::new();
    matched.retain(|k| seen.insert(k.id.clone()));
    let search = |id: &str| resolve(&roots.cgroup, id, runtime);
    match matched.as_slice() {
        [one] => {
            let path = search(&one.id).map_err(|e| {
                BadInput::new(format!(
                    "--container {given}: {} has no cgroup: is it running? ({e})",
                    one.describe()
                ))
            })?;
            Ok((path, one.describe()))
        }
        [] => {
            if check_id(given).is_ok() {
                return search(given)
                    .map(|p| (p, format!("id {lower}")))
                    .map_err(|e| {
                        BadInput::new(format!(
                            "--container {given}: no runtime's state names it, and {e}"
                        ))
                    });
            }
            let mut names: Vec<String> = all.iter().map(Known::describe).collect();
            names.sort();
            names.dedup();
            Err(BadInput::new(if names.is_empty() {
                format!(
                    "--container {given}: no container of that name or id on this host (kchaos \
                     reads Docker's, Podman's, CRI-O's, nerdctl's and kubelet's state and found \
                     none{}); give its id or --cgroup PATH",
                    if runtime == Runtime::Any {
                        String::new()
                    } else {
                        format!(" of runtime {}", runtime.name())
                    }
                )
            } else {
                format!(
                    "--container {given}: no container of that name or id; known here: {}",
                    listing(&names)
                )
            }))
        }
        several => {
            let names: Vec<String> = several.iter().map(|k| k.describe()).collect();
            Err(BadInput::new(format!(
                "--container {given}: matches {} containers: {}; give more of the id{}",
                several.len(),
                listing(&names),
                if runtime == Runtime::Any {
                    " or --runtime"
                } else {
                    ""
                }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1e2a9c0b7d8e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

    fn tree(dirs: &[&str]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "kchaos-unit-containers-{}-{}",
            std::process::id(),
            dirs.len()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        root
    }

    #[test]
    fn finds_each_runtimes_naming() {
        let cases = [
            (format!("system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("docker/{ID}"), Runtime::Docker),
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
                ),
                Runtime::Containerd,
            ),
            (
                format!("kubepods.slice/kubepods-pod2.slice/crio-{ID}.scope"),
                Runtime::Crio,
            ),
            (format!("machine.slice/libpod-{ID}.scope"), Runtime::Podman),
        ];
        for (i, (dir, runtime)) in cases.iter().enumerate() {
            let root = tree(&[
                dir.as_str(),
                "system.slice/other.service",
                &"x".repeat(i + 1),
            ]);
            assert_eq!(resolve(&root, ID, *runtime).unwrap(), root.join(dir));
            assert_eq!(
                resolve(&root, &ID[..12], Runtime::Any).unwrap(),
                root.join(dir)
            );
            std::fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn refuses_unknown_ambiguous_and_bad_ids() {
        let root = tree(&[
            "system.slice/docker-4f1e2a9c0b7d1111.scope",
            "system.slice/docker-4f1e2a9c0b7d2222.scope",
            "machine.slice/libpod-aaaaaaaaaaaa.scope",
            "a/b/c",
        ]);
        assert!(
            resolve(&root, "4f1e2a9c0b7d", Runtime::Any)
                .unwrap_err()
                .0
                .contains("several")
        );
        assert!(
            resolve(&root, "aaaaaaaaaaaa", Runtime::Docker)
                .unwrap_err()
                .0
                .contains("no cgroup")
        );
        assert!(resolve(&root, "aaaaaaaaaaaa", Runtime::Podman).is_ok());
        assert!(check_id("xyz").is_err());
        assert!(check_id("../../etc/pa").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    const ID2: &str = "aa11bb22cc33dd44ee55ff66aa77bb88cc99dd00ee11ff22aa33bb44cc55dd66";
    const ID3: &str = "4f1e2a9c0b7d0000000000000000000000000000000000000000000000000000";

    /// A host in a temp dir: the cgroup tree under cgroup/, state files under state/.
    fn host(tag: &str) -> (PathBuf, HostRoots) {
        let base =
            std::env::temp_dir().join(format!("kchaos-unit-names-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let roots = HostRoots::under(base.join("cgroup"), &base.join("state"));
        (base, roots)
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn names_from_each_runtimes_state() {
        let (base, roots) = host("each");
        // Docker (systemd driver), Podman (cgroupfs driver, as on a hybrid host), nerdctl, kubelet.
        write(
            &roots.docker.join(format!("containers/{ID}/config.v2.json")),
            &format!(r#"{{"ID":"{ID}","Name":"/web","State":{{"Running":true}}}}"#),
        );
        std::fs::create_dir_all(roots.cgroup.join(format!("system.slice/docker-{ID}.scope")))
            .unwrap();
        write(
            &roots.storage[0].join("overlay-containers/containers.json"),
            &format!(r#"[{{"id":"{ID2}","names":["db","db-alias"],"image":"x"}}]"#),
        );
        std::fs::create_dir_all(roots.cgroup.join(format!("libpod_parent/libpod-{ID2}"))).unwrap();
        write(
            &roots.nerdctl.join("1935db59/names/default/cache"),
            &format!("{ID3}\n"),
        );
        let cases = [
            (
                "web",
                format!("system.slice/docker-{ID}.scope"),
                "web (docker 4f1e2a9c0b7d)",
            ),
            (
                "db",
                format!("libpod_parent/libpod-{ID2}"),
                "db (podman/cri-o aa11bb22cc33)",
            ),
            (
                "db-alias",
                format!("libpod_parent/libpod-{ID2}"),
                "db-alias (podman/cri-o aa11bb22cc33)",
            ),
            (
                "aa11bb",
                format!("libpod_parent/libpod-{ID2}"),
                "db (podman/cri-o aa11bb22cc33)",
            ),
        ];
        for (given, dir, what) in cases {
            let (path, described) = resolve_name(&roots, given, Runtime::Any).unwrap();
            assert_eq!(
                (path, described.as_str()),
                (roots.cgroup.join(dir), what),
                "{given}"
            );
        }
        // Named, but not running (no cgroup): said so.
        let e = resolve_name(&roots, "cache", Runtime::Any).unwrap_err();
        assert!(
            e.0.contains("cache (nerdctl 4f1e2a9c0b7d, namespace default) has no cgroup"),
            "{e}"
        );
        // An id prefix two containers share: both listed.
        let e = resolve_name(&roots, "4f1e2a9c", Runtime::Any).unwrap_err();
        assert!(
            e.0.contains("matches 2 containers")
                && e.0.contains("web (docker")
                && e.0.contains("cache (nerdctl"),
            "{e}"
        );
        // --runtime narrows it.
        assert_eq!(
            resolve_name(&roots, "4f1e2a9c", Runtime::Docker).unwrap().0,
            roots.cgroup.join(format!("system.slice/docker-{ID}.scope"))
        );
        // Unknown: what is known is listed.
        let e = resolve_name(&roots, "nginx", Runtime::Any).unwrap_err();
        assert!(
            e.0.starts_with(
                "--container nginx: no container of that name or id; known here: cache (nerdctl"
            ),
            "{e}"
        );
        assert!(
            e.0.contains("db (podman/cri-o aa11bb22cc33)")
                && e.0.contains("web (docker 4f1e2a9c0b7d)"),
            "{e}"
        );
        let e = resolve_name(&roots, "web", Runtime::Podman).unwrap_err();
        assert!(e.0.contains("known here: db (podman"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn names_of_the_same_container_in_two_states_are_one() {
        let (base, roots) = host("two");
        // CRI-O under Kubernetes: storage names it k8s_..., kubelet links it by its container name.
        write(
            &roots.storage[0].join("overlay-containers/containers.json"),
            &format!(r#"[{{"id":"{ID}","names":["k8s_app_web-0_shop_1234_0"]}}]"#),
        );
        write(
            &roots
                .container_logs
                .join(format!("web-0_shop_app-{ID}.log")),
            "",
        );
        let dir = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/crio-{ID}.scope"
        );
        std::fs::create_dir_all(roots.cgroup.join(&dir)).unwrap();
        let (path, what) = resolve_name(&roots, "app", Runtime::Any).unwrap();
        assert_eq!(path, roots.cgroup.join(&dir));
        assert_eq!(what, "app (kubernetes 4f1e2a9c0b7d, pod shop/web-0)");
        assert_eq!(
            resolve_name(&roots, &ID[..12], Runtime::Crio).unwrap().0,
            roots.cgroup.join(&dir)
        );
        // No state at all and not an id: says what it read.
        let (base2, empty) = host("none");
        let e = resolve_name(&empty, "web", Runtime::Any).unwrap_err();
        assert!(
            e.0.contains("no container of that name or id on this host"),
            "{e}"
        );
        // An id no state knows: the cgroup tree is still searched.
        std::fs::create_dir_all(empty.cgroup.join(format!("system.slice/docker-{ID}.scope")))
            .unwrap();
        assert_eq!(
            resolve_name(&empty, &ID[..12], Runtime::Any).unwrap().1,
            format!("id {}", &ID[..12])
        );
        std::fs::remove_dir_all(&base).unwrap();
        std::fs::remove_dir_all(&base2).unwrap();
    }

    #[test]
    fn container_log_names_taken_apart() {
        let l = parse_container_log(&format!(
            "web-7d4b9c-x2x5q_kube-system_istio-proxy-{ID}.log"
        ))
        .unwrap();
        assert_eq!(
            (
                l.pod.as_str(),
                l.namespace.as_str(),
                l.container.as_str(),
                l.id.as_str()
            ),
            ("web-7d4b9c-x2x5q", "kube-system", "istio-proxy", ID)
        );
        for bad in [
            "x.log",
            "a_b-c.log",
            &format!("a_b_c_d-{ID}.log"),
            &format!("a_b_c-{ID}.txt"),
        ] {
            assert_eq!(parse_container_log(bad), None, "{bad}");
        }
    }
}
