//! Hybrid hosts: cgroup v2 mounted beside cgroup v1 hierarchies that hold the controllers (cpu, memory,
//! ...). There a container's limits live in its v1 cgroups, so a worker placed only in the v2 cgroup
//! would escape them. The workers also join the v1 cgroups of a process of the target, so they compete
//! within the same limits and are counted by the same accounting as the target's own processes.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// The v1 cgroup directories `pid` belongs to, one per mounted v1 hierarchy, skipping those it shares
/// with this process (joining them would change nothing).
pub fn v1_cgroups_of(pid: u32) -> io::Result<Vec<PathBuf>> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    let theirs = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let ours = v1_dirs(
        &mounts,
        &fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
    );
    Ok(v1_dirs(&mounts, &theirs)
        .into_iter()
        .filter(|dir| !ours.contains(dir))
        .collect())
}

/// Joins each /proc/PID/cgroup v1 line ("4:memory:/docker/abc") with its hierarchy's mount point.
fn v1_dirs(mounts: &str, proc_cgroup: &str) -> Vec<PathBuf> {
    let v1_mounts: Vec<(PathBuf, Vec<&str>)> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[2] == "cgroup")
                .then(|| (PathBuf::from(f[1]), f[3].split(',').collect()))
        })
        .collect();
    proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if id == "0" || controllers.is_empty() {
                return None;
            }
            let (mount, _) = v1_mounts
                .iter()
                .find(|(_, opts)| controllers.split(',').all(|c| opts.contains(&c)))?;
            Some(mount.join(path.trim_start_matches('/')))
        })
        .collect()
}

/// True when v1 hierarchies are mounted beside (or instead of) cgroup v2.
pub fn has_v1_hierarchies() -> bool {
    !v1_mount_points().is_empty()
}

/// Where each mounted v1 hierarchy is (/sys/fs/cgroup/memory, ...); none on a v2-only host.
pub fn v1_mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup").then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// The tightest v1 memory limit on the way up from `dir` (a v1 memory cgroup), and where it is set.
/// v1 reads an unlimited cgroup as a huge number.
pub fn v1_memory_limit(dir: &Path) -> Option<(u64, PathBuf)> {
    let mut tightest: Option<(u64, PathBuf)> = None;
    let mut at = Some(dir);
    while let Some(d) = at {
        let Ok(text) = fs::read_to_string(d.join("memory.limit_in_bytes")) else {
            break;
        };
        if let Ok(limit) = text.trim().parse::<u64>()
            && limit < 1 << 62
            && tightest.as_ref().is_none_or(|(t, _)| limit < *t)
        {
            tightest = Some((limit, d.to_owned()));
        }
        at = d.parent();
    }
    tightest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_hierarchy_to_its_mount() {
        let mounts = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
            cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n\
            cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
            cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,xattr,name=systemd 0 0\n";
        let proc_cgroup = "9:name=systemd:/docker/abc\n4:memory:/docker/abc\n\
            2:cpu,cpuacct:/docker/abc\n1:net_cls:/\n0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            v1_dirs(mounts, proc_cgroup),
            [
                PathBuf::from("/sys/fs/cgroup/systemd/docker/abc"),
                PathBuf::from("/sys/fs/cgroup/memory/docker/abc"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/docker/abc"),
            ]
        );
        assert!(v1_dirs("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", "0::/x\n").is_empty());
    }
}
