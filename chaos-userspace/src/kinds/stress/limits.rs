//! What a stress request must fit in: the cgroup's memory.max, the host's MemAvailable, free space for
//! the io file, RLIMIT_NOFILE. Checked before any worker starts.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::format_size;
use crate::{engine::procfs, error::BadInput};

/// The io worker rewrites one file of at most this size, so a long run does not fill the disk.
pub const IO_FILE_WRAP: u64 = 64 << 20;

/// The --io-dir must be an existing directory with room for the io file.
pub fn check_io_dir(dir: &Path) -> Result<(), BadInput> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(BadInput::new(format!(
                "--io-dir {}: not a directory",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(BadInput::new(format!("--io-dir {}: {e}", dir.display())));
        }
    }
    let free = free_bytes(dir)
        .map_err(|e| BadInput::new(format!("--io-dir {}: statvfs: {e}", dir.display())))?;
    if free < 2 * IO_FILE_WRAP {
        return Err(BadInput::new(format!(
            "--io-dir {}: only {} free; the io worker needs {} (it rewrites a file of {})",
            dir.display(),
            format_size(free),
            format_size(2 * IO_FILE_WRAP),
            format_size(IO_FILE_WRAP)
        )));
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let c_path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs writes into a zeroed struct of the right type; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail * st.f_frsize)
}

/// The tightest memory.max on the way from `cgroup` up to the cgroup v2 mount, and where it is set.
/// None when no cgroup on the way limits memory (or the v2 memory controller is not enabled there).
pub fn memory_max(cgroup: &Path, mount: &Path) -> Option<(u64, PathBuf)> {
    let mut tightest: Option<(u64, PathBuf)> = None;
    let mut dir = Some(cgroup);
    while let Some(d) = dir {
        if !d.starts_with(mount) {
            break;
        }
        if let Ok(text) = fs::read_to_string(d.join("memory.max"))
            && let Ok(limit) = text.trim().parse::<u64>()
            && tightest.as_ref().is_none_or(|(t, _)| limit < *t)
        {
            tightest = Some((limit, d.to_owned()));
        }
        dir = d.parent();
    }
    tightest
}

/// Refuses --memory that the cgroup or the host cannot hold, unless forced. Nothing runs yet.
/// `v1_dirs` are the v1 cgroups the workers will join as well (hybrid hosts).
pub fn check_memory(
    bytes: u64,
    cgroup: &Path,
    mount: &Path,
    v1_dirs: &[PathBuf],
    force: bool,
) -> Result<(), BadInput> {
    if force {
        return Ok(());
    }
    let available = procfs::mem_available()
        .map_err(|e| BadInput::new(format!("reading MemAvailable from /proc/meminfo: {e}")))?;
    let tightest = v1_dirs
        .iter()
        .filter_map(|d| super::hybrid::v1_memory_limit(d))
        .chain(memory_max(cgroup, mount))
        .min_by_key(|(limit, _)| *limit);
    match memory_refusal(bytes, tightest, available) {
        Some(why) => Err(BadInput::new(why)),
        None => Ok(()),
    }
}

fn memory_refusal(bytes: u64, max: Option<(u64, PathBuf)>, available: u64) -> Option<String> {
    if let Some((limit, at)) = max
        && bytes > limit
    {
        return Some(format!(
            "--memory {}: more than the memory limit of {} ({}); the OOM killer would end it (or the \
             target's own processes) before it is held. Add --force if that is the point",
            format_size(bytes),
            at.display(),
            format_size(limit)
        ));
    }
    if bytes > available {
        return Some(format!(
            "--memory {}: more than the host's MemAvailable ({}); holding it would push the whole \
             host into reclaim and swap. Add --force if that is the point",
            format_size(bytes),
            format_size(available)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_refused_above_either_limit_with_the_numbers() {
        let cg = PathBuf::from("/sys/fs/cgroup/app");
        let why = memory_refusal(2 << 30, Some((1 << 30, cg.clone())), 8 << 30).unwrap();
        assert!(
            why.contains("memory limit of /sys/fs/cgroup/app (1.0 GiB)"),
            "{why}"
        );
        assert!(why.contains("2.0 GiB"), "{why}");
        let why = memory_refusal(2 << 30, None, 1 << 30).unwrap();
        assert!(why.contains("MemAvailable (1.0 GiB)"), "{why}");
        assert_eq!(memory_refusal(1 << 30, Some((2 << 30, cg)), 4 << 30), None);
    }

    #[test]
    fn tightest_memory_max_on_the_way_up() {
        let root = std::env::temp_dir().join(format!("kchaos-limits-{}", std::process::id()));
        let child = root.join("a/b");
        fs::create_dir_all(&child).unwrap();
        fs::write(root.join("a/memory.max"), "1048576\n").unwrap();
        fs::write(child.join("memory.max"), "max\n").unwrap();
        let found = memory_max(&child, &root);
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, Some((1 << 20, root.join("a"))));
    }

    #[test]
    fn io_dir_must_exist() {
        assert!(check_io_dir(Path::new("/no/such")).is_err());
        assert!(check_io_dir(&std::env::temp_dir()).is_ok());
    }
}
