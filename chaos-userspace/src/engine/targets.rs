//! The blast radius: which cgroups a fault may touch, from `--cgroup`, `--pid`, `--container` and
//! `--pod` (the same forms a scenario's `targets:` has).
//!
//! A target is a cgroup v2 directory; every cgroup below it is a target too (containers nest), also
//! ones created after the start, because the kernel runs a cgroup's programs for its descendants.

use std::path::{Component, Path, PathBuf};

use crate::{
    engine::{
        cgroup,
        containers::{self, HostRoots, Runtime},
        pods,
    },
    error::BadInput,
};

/// What the user asked for, as given on the command line or in a scenario file.
#[derive(Clone, Debug, Default, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct TargetArgs {
    /// Target cgroup v2 directory: absolute, or relative to the cgroup2 mount (e.g.
    /// system.slice/docker-<id>.scope). May be repeated. Cgroups below it are targets too.
    #[arg(long = "cgroup", value_name = "PATH")]
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// Target the cgroup v2 of this process (read from /proc/PID/cgroup). May be repeated.
    #[arg(long = "pid", value_name = "PID", value_parser = crate::units::parse_whole::<u32>, allow_hyphen_values = true)]
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Target a container by its name or id (a unique prefix), as docker ps, podman ps, nerdctl ps
    /// or crictl ps show it; read from the runtime's state on this host. With --pod: the container of
    /// that name in the pod. May be repeated.
    #[arg(long = "container", value_name = "NAME|ID", value_hint = clap::ValueHint::Other)]
    #[serde(default)]
    pub containers: Vec<String>,
    /// Look --container up in this runtime's state only (when a name is in several).
    #[arg(long, value_name = "RUNTIME", value_parser = clap::builder::PossibleValuesParser::new(Runtime::NAMES), requires = "containers", conflicts_with = "pod")]
    #[serde(default)]
    pub runtime: Option<String>,
    /// Target a Kubernetes pod on this node, NAMESPACE/NAME (found through kubelet's cgroups and
    /// /var/log/pods, no API server); with --container NAME only that container of it, sparing its
    /// sidecars.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    #[serde(default)]
    pub pod: Option<String>,
    /// Allow host-critical targets: the root cgroup, or a cgroup that holds PID 1 (init.scope),
    /// kchaos itself, or a process the host needs (sshd, systemd-journald, containerd, dockerd,
    /// crio, kubelet ...; KCHAOS_PROTECT adds names).
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
    if args.cgroups.is_empty()
        && args.pids.is_empty()
        && args.containers.is_empty()
        && args.pod.is_none()
    {
        return Err(BadInput::new(
            "no target: give --cgroup PATH, --pid PID, --container NAME or --pod NAMESPACE/NAME",
        ));
    }
    let mount = cgroup::v2_mount().map_err(|e| BadInput::new(format!("cgroup v2: {e}")))?;
    let mut found = Vec::new();
    let roots = HostRoots::host(mount.clone());
    if let Some(pod) = &args.pod {
        for t in pods::resolve(&roots, pod, &args.containers)? {
            found.push((t.path, t.origin));
        }
    } else {
        let runtime = match args.runtime.as_deref() {
            None => Runtime::Any,
            Some(name) => Runtime::from_name(name).ok_or_else(|| {
                BadInput::new(format!(
                    "--runtime {name}: allowed are {}",
                    Runtime::NAMES.join(", ")
                ))
            })?,
        };
        for given in &args.containers {
            let (path, what) = containers::resolve_name(&roots, given, runtime)?;
            found.push((path, format!("--container {given}: {what}")));
        }
    }
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
                    "{origin}: that is the root cgroup ({}), i.e. the whole host; {ALLOW_HOST_HINT}",
                    path.display()
                )));
            }
            if let Some(own) = &own
                && own.starts_with(&path)
            {
                return Err(BadInput::new(format!(
                    "{origin}: {} holds kchaos itself ({}); {ALLOW_HOST_HINT}",
                    path.display(),
                    own.display()
                )));
            }
        }
        let id = cgroup::id(&path)
            .map_err(|e| BadInput::new(format!("{origin}: {}: {e}", path.display())))?;
        targets.push(Target { path, id, origin });
    }
    let targets = outermost(targets);
    if !args.allow_host {
        // After the nesting collapsed: a target inside another is checked with it.
        for t in &targets {
            if let Some(held) = host_critical(&t.path, &mount) {
                return Err(BadInput::new(format!(
                    "{}: {} holds {held}; {ALLOW_HOST_HINT}",
                    t.origin,
                    t.path.display()
                )));
            }
        }
    }
    Ok(targets)
}

/// How every refusal of a host-critical target ends (the safety review knows such a refusal by it).
pub const ALLOW_HOST_HINT: &str =
    "add --allow-host (allow_host: true in a scenario) if you mean it";

/// The processes an operator needs to recover the host, by name: init, the journal, logins and ssh,
/// the message bus, device events, and the container runtimes and kubelet (with what they run
/// containers through). Matched against the name the kernel keeps (/proc/PID/stat, cut to 15 bytes)
/// of processes in the host's pid namespace (kchaos's own); the same names in a container's own namespace are that
/// container's business. [`PROTECT_ENV`] adds names.
pub const PROTECTED_NAMES: &[&str] = &[
    "systemd",
    "init",
    "systemd-journald",
    "systemd-logind",
    "systemd-udevd",
    "dbus-daemon",
    "dbus-broker",
    "sshd",
    "sshd-session",
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "dockerd",
    "crio",
    "conmon",
    "runc",
    "crun",
    "kubelet",
];

/// More protected names, comma-separated (`KCHAOS_PROTECT=etcd,haproxy`): the list only grows.
pub const PROTECT_ENV: &str = "KCHAOS_PROTECT";

/// How many bytes of a name the kernel keeps (TASK_COMM_LEN less its NUL).
const COMM_LEN: usize = 15;

/// True when `comm` (a name as /proc/PID/stat has it) is one of `names`, as the kernel cuts them.
fn is_protected_name(comm: &str, names: &[String]) -> bool {
    names.iter().any(|n| {
        let cut = n.as_bytes().get(..COMM_LEN).unwrap_or(n.as_bytes());
        comm.as_bytes() == cut
    })
}

/// [`PROTECTED_NAMES`] and those [`PROTECT_ENV`] adds.
pub fn protected_names() -> Vec<String> {
    let mut names: Vec<String> = PROTECTED_NAMES.iter().map(|&n| n.to_owned()).collect();
    if let Some(more) = std::env::var_os(PROTECT_ENV) {
        names.extend(
            more.to_string_lossy()
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
        );
    }
    names
}

/// What makes the cgroup tree `path` host-critical, if anything: it is or holds `init.scope`, or
/// holds PID 1, kchaos itself, or a protected process of the host's pid namespace. Said as "PID 1
/// (systemd), the host's init".
///
/// Only /proc/PID/stat (the name) and the pid namespace link are read: neither touches the process's
/// executable or memory, so a process on a stalled mount cannot hang the check.
pub fn host_critical(path: &Path, mount: &Path) -> Option<String> {
    let init_scope = mount.join("init.scope");
    if path != mount && (init_scope.starts_with(path) || path.starts_with(&init_scope)) {
        return Some(format!(
            "init.scope ({}), the cgroup of the host's init",
            init_scope.display()
        ));
    }
    let mut pids = cgroup::procs_recursive(path).ok()?;
    pids.sort_unstable();
    pids.dedup();
    held_critical(&pids, &protected_names())
}

/// The first of `pids` that is host-critical, said as [`host_critical`] says it.
fn held_critical(pids: &[u32], names: &[String]) -> Option<String> {
    let me = std::process::id();
    // kchaos's own pid namespace stands for the host's: it sees the host's processes only from there
    // (a DaemonSet with hostPID), and /proc/1 may be closed to it.
    let host_ns = std::fs::read_link("/proc/self/ns/pid").ok();
    for &pid in pids {
        if pid == 1 {
            return Some(format!(
                "PID 1 ({}), the host's init",
                crate::engine::procfs::stat_comm(pid).unwrap_or_else(|_| "?".into())
            ));
        }
        if pid == me {
            return Some(format!("kchaos itself (pid {pid})"));
        }
        let Ok(comm) = crate::engine::procfs::stat_comm(pid) else {
            continue;
        };
        if !is_protected_name(&comm, names) {
            continue;
        }
        // In a namespace of its own (a container's sshd), it is not the host's; when that cannot be
        // told, it counts as the host's.
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        if host_ns.is_some() && ns.is_some() && ns != host_ns {
            continue;
        }
        return Some(format!(
            "pid {pid} ({comm}), a process an operator needs to recover the host (the protected \
             names are in the README; {PROTECT_ENV} adds more)"
        ));
    }
    None
}

/// Keeps each target once, and drops targets that lie inside another: their processes are hit already,
/// and a second attachment would apply the fault twice.
///
/// Paths sort component by component, so a cgroup and everything below it form one run of the sorted
/// list, starting with the cgroup itself: a target lies inside a kept one exactly when it lies inside
/// the last one kept. One comparison a target, where comparing with every kept target made 10,000
/// targets take 16 s before anything was attached.
fn outermost(mut targets: Vec<Target>) -> Vec<Target> {
    targets.sort_by(|a, b| a.path.cmp(&b.path));
    let mut kept: Vec<Target> = Vec::new();
    for t in targets {
        if kept.last().is_none_or(|k| !t.path.starts_with(&k.path)) {
            kept.push(t);
        }
    }
    kept
}

/// True when `given` names the cgroup v2 root itself, however it is spelled: "/", ".", "", "/./", or
/// the mount path (when known).
pub fn names_root(given: &str, mount: Option<&Path>) -> bool {
    let p = Path::new(given.trim());
    p.components()
        .all(|c| matches!(c, Component::RootDir | Component::CurDir))
        || mount.is_some_and(|m| p == m)
}

/// `given` as a cgroup directory: absolute under the mount, or relative to it (a leading / allowed,
/// as /proc/PID/cgroup writes it). An absolute path elsewhere (a cgroup v1 hierarchy of a hybrid host,
/// say) is refused, not quietly read as relative.
fn cgroup_path(mount: &Path, given: &str) -> Result<PathBuf, BadInput> {
    let as_given = PathBuf::from(given);
    let path = if as_given.is_absolute() && as_given.starts_with(mount) {
        as_given
    } else {
        let under: PathBuf = mount
            .join(given.trim_start_matches('/'))
            .components()
            .collect();
        // "/system.slice/x" is the /proc/PID/cgroup form when it exists under the mount; a path that
        // exists as given, or lies in the usual cgroup tree, was meant as given.
        if as_given.is_absolute()
            && !under.exists()
            && (as_given.exists() || as_given.starts_with("/sys/fs/cgroup"))
        {
            return Err(BadInput::new(format!(
                "--cgroup {given} is not under the cgroup v2 mount {}: kchaos targets cgroup v2 \
                 directories; give a path under it or relative to it",
                mount.display()
            )));
        }
        under
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

/// (cgroup id, level) of each target: its depth below the cgroup2 mount, where the root is level 0.
/// Programs that run outside the target's own cgroup (host-wide syscall hooks, a TC program on a
/// device) look a cgroup's ancestor up at each level the targets span.
pub fn levels(targets: &[Target]) -> anyhow::Result<Vec<(u64, u32)>> {
    use anyhow::Context as _;
    let mount = cgroup::v2_mount()?;
    targets
        .iter()
        .map(|t| {
            let rel = t.path.strip_prefix(&mount).with_context(|| {
                format!(
                    "{} is not below the cgroup2 mount {}",
                    t.path.display(),
                    mount.display()
                )
            })?;
            Ok((t.id, rel.components().count() as u32))
        })
        .collect()
}

/// Those programs probe one ancestor per level from the shallowest target to the deepest, in a loop
/// the verifier must see bounded. `faults` names what refuses ("syscall faults").
pub fn check_level_span(refs: &[(u64, u32)], faults: &str) -> Result<(), BadInput> {
    use chaos_common::MAX_TARGET_LEVELS;
    let (Some(min), Some(max)) = (
        refs.iter().map(|&(_, l)| l).min(),
        refs.iter().map(|&(_, l)| l).max(),
    ) else {
        return Ok(());
    };
    if max - min >= MAX_TARGET_LEVELS {
        return Err(BadInput::new(format!(
            "the target cgroups span levels {min} to {max} below the cgroup2 root; {faults} \
             take targets within {MAX_TARGET_LEVELS} levels of each other (run one fault per group)"
        )));
    }
    Ok(())
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

    /// The one-comparison walk keeps exactly what comparing with every kept target keeps, also where
    /// a name sorts between a cgroup and its children as a string ("a-b": '-' comes before '/').
    #[test]
    fn nested_targets_collapse_as_a_full_comparison_would() {
        let names = [
            "a", "a-b", "a.", "b", "a/b", "a/b/c", "a-b/c", "a/c", "b/a", "ab/a",
        ];
        // Every subset of the names, in the given order: 1,024 sets.
        for mask in 0u32..(1 << names.len()) {
            let given: Vec<Target> = (0..names.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| t(&format!("/cg/{}", names[i])))
                .collect();
            let mut expected: Vec<&PathBuf> = given
                .iter()
                .map(|t| &t.path)
                .filter(|p| {
                    !given
                        .iter()
                        .any(|o| o.path != **p && p.starts_with(&o.path))
                })
                .collect();
            expected.sort();
            expected.dedup();
            let kept = outermost(given.clone());
            let kept: Vec<&PathBuf> = kept.iter().map(|t| &t.path).collect();
            assert_eq!(kept, expected, "{mask:b}");
        }
    }

    /// A fake cgroup2 mount in a temp dir: `<tmp>/unified` with a cgroup `app`, and `<tmp>/memory`
    /// beside it, as a hybrid host's cgroup v1 hierarchy.
    fn hybrid() -> PathBuf {
        let root = std::env::temp_dir().join(format!("kchaos-targets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["unified/app", "memory"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("unified/app/cgroup.procs"), "").unwrap();
        root
    }

    #[test]
    fn an_absolute_path_outside_the_mount_is_refused_naming_the_mount() {
        let root = hybrid();
        let mount = root.join("unified");
        let v1 = root.join("memory");
        let e = cgroup_path(&mount, v1.to_str().unwrap()).unwrap_err();
        assert_eq!(
            e.0,
            format!(
                "--cgroup {} is not under the cgroup v2 mount {}: kchaos targets cgroup v2 \
                 directories; give a path under it or relative to it",
                v1.display(),
                mount.display()
            )
        );
        // The usual cgroup tree, even where it does not exist.
        let e = cgroup_path(&mount, "/sys/fs/cgroup/kchaos-none/x").unwrap_err();
        assert!(e.0.contains("is not under the cgroup v2 mount"), "{e}");
        // Under the mount, relative to it, or in the /proc/PID/cgroup form: the same cgroup.
        let app = mount.join("app");
        for given in [app.to_str().unwrap(), "app", "/app", "./app"] {
            assert_eq!(cgroup_path(&mount, given).unwrap(), app, "{given}");
        }
        // Elsewhere and nowhere: it does not exist.
        let e = cgroup_path(&mount, "/kchaos-none/x").unwrap_err();
        assert!(e.0.contains("does not exist"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_root_however_spelled() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        for given in [
            "/",
            ".",
            "",
            "//",
            "/./",
            "./",
            mount.to_str().unwrap(),
            "/sys/fs/cgroup/unified/",
        ] {
            assert!(names_root(given, Some(mount)), "{given:?}");
        }
        for given in ["app", "/app", "/sys/fs/cgroup"] {
            assert!(!names_root(given, Some(mount)), "{given:?}");
        }
    }

    #[test]
    fn protected_names_match_as_the_kernel_cuts_them() {
        let names = protected_names();
        for comm in [
            "systemd-journal",
            "containerd-shim",
            "sshd",
            "kubelet",
            "dockerd",
        ] {
            assert!(is_protected_name(comm, &names), "{comm}");
        }
        for comm in ["systemd-journ", "ssh", "sshd2", "sleep", "kchaos", ""] {
            assert!(!is_protected_name(comm, &names), "{comm}");
        }
    }

    #[test]
    fn pid_1_kchaos_and_a_protected_name_are_host_critical() {
        let names = protected_names();
        let held = held_critical(&[1], &names).unwrap();
        assert!(held.starts_with("PID 1 ("), "{held}");
        assert!(held.ends_with("the host's init"), "{held}");
        let me = std::process::id();
        assert_eq!(
            held_critical(&[me], &names).unwrap(),
            format!("kchaos itself (pid {me})")
        );
        // A process named sshd (a copy of sleep), in this pid namespace: protected; sleep is not,
        // unless named.
        let dir = std::env::temp_dir().join(format!("kchaos-protected-{me}"));
        std::fs::create_dir_all(&dir).unwrap();
        let sshd = dir.join("sshd");
        std::fs::copy("/bin/sleep", &sshd).unwrap();
        let mut fake = std::process::Command::new(&sshd).arg("30").spawn().unwrap();
        let mut sleep = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let held = held_critical(&[sleep.id(), fake.id()], &names);
        let plain = held_critical(&[sleep.id()], &names);
        let named = held_critical(&[sleep.id()], &["sleep".to_owned()]);
        for c in [&mut fake, &mut sleep] {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let held = held.unwrap();
        assert!(
            held.starts_with(&format!(
                "pid {} (sshd), a process an operator needs to recover the host",
                fake.id()
            )),
            "{held}"
        );
        assert_eq!(plain, None);
        assert!(named.is_some_and(|n| n.contains("(sleep)")));
    }

    #[test]
    fn needs_a_target() {
        let err = resolve(&TargetArgs::default()).unwrap_err();
        assert!(err.to_string().contains("--cgroup"));
    }
}
