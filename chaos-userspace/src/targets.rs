//! The blast radius: which cgroups a fault may touch, from `--cgroup` and `--pid`.
//!
//! A target is a cgroup v2 directory; every cgroup below it is a target too (containers nest), also
//! ones created after the start, because the kernel runs a cgroup's programs for its descendants.

use std::path::{Path, PathBuf};

use crate::{cgroup, error::BadInput};

/// What the user asked for, as given on the command line or in a scenario file.
#[derive(Clone, Debug, Default, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct TargetArgs {
    /// Target cgroup v2 directory: absolute, or relative to the cgroup2 mount (e.g.
    /// system.slice/docker-<id>.scope). May be repeated. Cgroups below it are targets too.
    #[arg(long = "cgroup", value_name = "PATH")]
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// Target the cgroup v2 of this process (read from /proc/PID/cgroup). May be repeated.
    #[arg(long = "pid", value_name = "PID")]
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Allow targeting the root cgroup or a cgroup that holds kchaos itself.
    #[arg(long)]
    #[serde(default)]
    pub allow_host: bool,
}

/// One resolved target cgroup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// Absolute path of the cgroup directory.
    pub path: PathBuf,
    /// The kernel's cgroup id (the directory's inode).
    pub id: u64,
    /// How the user named it ("--cgroup X", "--pid N").
    pub origin: String,
}

/// Resolves the user's targets, refusing what would widen the blast radius past one container.
/// Nested duplicates collapse into the outermost target.
pub fn resolve(args: &TargetArgs) -> Result<Vec<Target>, BadInput> {
    if args.cgroups.is_empty() && args.pids.is_empty() {
        return Err(BadInput::new("no target: give --cgroup PATH or --pid PID"));
    }
    let mount = cgroup::v2_mount().map_err(|e| BadInput::new(format!("cgroup v2: {e}")))?;
    let mut found = Vec::new();
    for given in &args.cgroups {
        let path = cgroup_path(&mount, given)?;
        found.push((path, format!("--cgroup {given}")));
    }
    for &pid in &args.pids {
        let rel = cgroup::of_pid(pid).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BadInput::new(format!(
                "--pid {pid}: no such process, or it has no cgroup v2 ({e})"
            )),
            _ => BadInput::new(format!("--pid {pid}: reading its cgroup: {e}")),
        })?;
        found.push((
            mount.join(rel.trim_start_matches('/')),
            format!("--pid {pid}"),
        ));
    }

    let own = cgroup::of_pid(std::process::id())
        .map(|rel| mount.join(rel.trim_start_matches('/')))
        .ok();
    let mut targets: Vec<Target> = Vec::new();
    for (path, origin) in found {
        if !args.allow_host {
            if path == mount {
                return Err(BadInput::new(format!(
                    "{origin}: that is the root cgroup ({}), i.e. the whole host; add --allow-host if you mean it",
                    path.display()
                )));
            }
            if let Some(own) = &own
                && own.starts_with(&path)
            {
                return Err(BadInput::new(format!(
                    "{origin}: {} holds kchaos itself ({}); add --allow-host if you mean it",
                    path.display(),
                    own.display()
                )));
            }
        }
        let id = cgroup::id(&path)
            .map_err(|e| BadInput::new(format!("{origin}: {}: {e}", path.display())))?;
        targets.push(Target { path, id, origin });
    }
    Ok(outermost(targets))
}

/// Keeps each target once, and drops targets that lie inside another: their processes are hit already,
/// and a second attachment would apply the fault twice.
fn outermost(mut targets: Vec<Target>) -> Vec<Target> {
    targets.sort_by(|a, b| a.path.cmp(&b.path));
    let mut kept: Vec<Target> = Vec::new();
    for t in targets {
        if !kept.iter().any(|k| t.path.starts_with(&k.path)) {
            kept.push(t);
        }
    }
    kept
}

/// `given` as a cgroup directory: absolute under the mount, or relative to it (a leading / allowed,
/// as /proc/PID/cgroup writes it).
fn cgroup_path(mount: &Path, given: &str) -> Result<PathBuf, BadInput> {
    let as_given = PathBuf::from(given);
    let path = if as_given.is_absolute() && as_given.starts_with(mount) {
        as_given
    } else {
        mount.join(given.trim_start_matches('/'))
    };
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(BadInput::new(format!(
            "--cgroup {given}: '..' is not allowed in a cgroup path"
        )));
    }
    if !path.is_dir() {
        return Err(BadInput::new(format!(
            "--cgroup {given}: {} does not exist (cgroup v2 is mounted at {})",
            path.display(),
            mount.display()
        )));
    }
    if !cgroup::is_cgroup_dir(&path) {
        return Err(BadInput::new(format!(
            "--cgroup {given}: {} is not a cgroup v2 directory",
            path.display()
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str) -> Target {
        Target {
            path: PathBuf::from(p),
            id: 0,
            origin: p.into(),
        }
    }

    #[test]
    fn nested_targets_collapse() {
        let kept = outermost(vec![t("/cg/a/b"), t("/cg/a"), t("/cg/ab"), t("/cg/a")]);
        let paths: Vec<_> = kept.iter().map(|t| t.path.to_str().unwrap()).collect();
        assert_eq!(paths, ["/cg/a", "/cg/ab"]);
    }

    #[test]
    fn needs_a_target() {
        let err = resolve(&TargetArgs::default()).unwrap_err();
        assert!(err.to_string().contains("--cgroup"));
    }
}
