//! Container ids to cgroup directories: each runtime names a container's cgroup after its id with a
//! prefix of its own (docker-<id>.scope, docker/<id>, cri-containerd-<id>.scope, crio-<id>.scope,
//! libpod-<id>.scope). kchaos searches the cgroup2 tree for the one directory that matches.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
};

use crate::error::BadInput;

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

    /// Directory-name prefixes this runtime puts before the id.
    fn prefixes(self) -> &'static [&'static str] {
        match self {
            // systemd driver: docker-<id>.scope; cgroupfs driver: docker/<id> (the bare id, under a
            // directory named docker).
            Runtime::Docker => &["docker-", ""],
            Runtime::Containerd => &["cri-containerd-"],
            Runtime::Crio => &["crio-"],
            Runtime::Podman => &["libpod-"],
            Runtime::Any => &["docker-", "cri-containerd-", "crio-", "libpod-", ""],
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
    let mut found = Vec::new();
    let mut queue = VecDeque::from([(root.to_path_buf(), 0usize)]);
    while let Some((dir, depth)) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let parent_is_docker = dir.file_name().is_some_and(|n| n == "docker");
            if matches_id(&name, &id, runtime, parent_is_docker) {
                found.push(entry.path());
            } else if depth + 1 < MAX_DEPTH {
                queue.push_back((entry.path(), depth + 1));
            }
        }
    }
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

fn matches_id(name: &str, id: &str, runtime: Runtime, parent_is_docker: bool) -> bool {
    let name = name.to_ascii_lowercase();
    runtime.prefixes().iter().any(|prefix| {
        if prefix.is_empty() {
            // A bare id is docker's cgroupfs layout only.
            parent_is_docker && name.starts_with(id) && name.bytes().all(|b| b.is_ascii_hexdigit())
        } else {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with(id))
        }
    })
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
}
