//! cgroup v2: finding the mount, reading a process's cgroup, ids, moving processes.

use std::{
    collections::VecDeque,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where cgroup v2 is mounted: /sys/fs/cgroup on most hosts, /sys/fs/cgroup/unified on hybrid ones.
/// Found once per process (resolving 100k scenario targets would otherwise read /proc/mounts 100k
/// times); not finding it is not remembered, so a later mount is seen.
pub fn v2_mount() -> io::Result<PathBuf> {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let mounts = fs::read_to_string("/proc/mounts")?;
    let found = mount_from(&mounts).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (see /proc/mounts)",
        )
    })?;
    Ok(FOUND.get_or_init(|| found).clone())
}

fn mount_from(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// /proc/mounts escapes spaces and a few other bytes as \ooo.
fn unescape_mount_path(p: &str) -> String {
    let mut out = String::new();
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&p[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The v2 cgroup of a process, as a path relative to the mount ("/system.slice/foo.scope").
pub fn of_pid(pid: u32) -> io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    v2_line(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} has no cgroup v2 entry (0::) in /proc/{pid}/cgroup"),
        )
    })
}

fn v2_line(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

/// The cgroup id the kernel uses (bpf_get_current_cgroup_id, cgroup links): the directory's inode.
pub fn id(dir: &Path) -> io::Result<u64> {
    Ok(fs::metadata(dir)?.ino())
}

/// True when `dir` is a cgroup directory (it has cgroup.procs).
pub fn is_cgroup_dir(dir: &Path) -> bool {
    dir.join("cgroup.procs").is_file()
}

/// Moves a process into the cgroup (all its threads go with it).
pub fn add_process(dir: &Path, pid: u32) -> io::Result<()> {
    fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// The pids directly in this cgroup (not in its children).
pub fn procs(dir: &Path) -> io::Result<Vec<u32>> {
    Ok(fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// The pids in this cgroup and every cgroup below it.
pub fn procs_recursive(dir: &Path) -> io::Result<Vec<u32>> {
    let mut pids = procs(dir)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            // A child may vanish while we walk: that is not an error.
            if let Ok(more) = procs_recursive(&entry.path()) {
                pids.extend(more);
            }
        }
    }
    Ok(pids)
}

/// True when this process lives in `dir` or a cgroup below it.
pub fn holds_this_process(dir: &Path) -> bool {
    let Ok(mount) = v2_mount() else {
        return false;
    };
    of_pid(std::process::id())
        .map(|rel| mount.join(rel.trim_start_matches('/')).starts_with(dir))
        .unwrap_or(false)
}

/// The cgroup directories below `root`, at most `max_depth` levels down, for which
/// `is_match(parent, name)` holds, breadth first; a match is not searched below. Unreadable
/// directories are passed over (the tree changes while it is read).
pub fn find_below(
    root: &Path,
    max_depth: usize,
    mut is_match: impl FnMut(&Path, &str) -> bool,
) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut queue = VecDeque::from([(root.to_path_buf(), 0usize)]);
    while let Some((dir, depth)) = queue.pop_front() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if is_match(&dir, &entry.file_name().to_string_lossy()) {
                found.push(entry.path());
            } else if depth + 1 < max_depth {
                queue.push_back((entry.path(), depth + 1));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            mount_from(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(mount_from(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(mount_from("proc /proc proc rw 0 0\n"), None);
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
    }

    #[test]
    fn reads_v2_line() {
        let text = "12:pids:/x\n1:name=systemd:/y\n0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            v2_line(text).as_deref(),
            Some("/system.slice/docker-abc.scope")
        );
        assert_eq!(v2_line("1:cpu:/\n"), None);
    }
}
