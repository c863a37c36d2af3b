//! Who a process is, beyond its pid: pids are reused, so a run record names its process by the pid, the
//! start time the kernel gave it (field 22 of /proc/PID/stat, clock ticks after boot, fixed for the
//! process's life) and its executable (device and inode, which stay those of the running image even
//! when the file is replaced). `kchaos stop` signals a pid only when all three still match and the
//! executable is a kchaos binary.
//!
//! Also the marker kchaos leaves in a directory it makes for a run, so `kchaos stop` can tell that
//! directory from any other path a record might name.

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::bounded_read;

/// How long `kchaos stop` and `status` wait for one look at another process's executable.
pub const LOOKUP_LIMIT: Duration = Duration::from_secs(1);

/// /proc/PID/stat is one line of a few hundred bytes.
const STAT_LIMIT: u64 = 64 << 10;

/// A process as a run record names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    /// Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot.
    pub start_time: u64,
    /// /proc/PID/exe resolved (for people; a replaced file reads "... (deleted)").
    pub exe: PathBuf,
    /// Device and inode of the running executable: what identity is judged by.
    pub exe_dev: u64,
    pub exe_ino: u64,
}

impl ProcessIdentity {
    /// The identity of a live process; an error when it is gone, a zombie or a kernel thread (none of
    /// which can be a running kchaos).
    pub fn of(pid: u32) -> io::Result<Self> {
        let stat = read_stat(pid)?;
        if matches!(stat.state, 'Z' | 'X' | 'x') {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {pid} has exited"),
            ));
        }
        let link = PathBuf::from(format!("/proc/{pid}/exe"));
        let exe = fs::read_link(&link)?;
        // metadata follows the magic link to the image the process runs, deleted or not.
        let meta = fs::metadata(&link)?;
        Ok(Self {
            start_time: stat.start_time,
            exe,
            exe_dev: meta.dev(),
            exe_ino: meta.ino(),
        })
    }

    /// [`ProcessIdentity::of`] given up after `limit` (an error of kind TimedOut): its executable's
    /// attributes come from the file system that holds it, which may never answer (a stalled FUSE
    /// mount).
    pub fn of_within(pid: u32, limit: Duration) -> io::Result<Self> {
        crate::engine::procfs::within(limit, move || Self::of(pid)).unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "reading /proc/{pid}/exe took longer than {}s (its file system does not answer?)",
                    limit.as_secs_f64()
                ),
            ))
        })
    }

    /// This process.
    pub fn of_self() -> io::Result<Self> {
        Self::of(std::process::id())
    }

    /// True when `other` is the same process (the pid is the caller's to compare).
    pub fn same_process(&self, other: &Self) -> bool {
        self.start_time == other.start_time
            && self.exe_dev == other.exe_dev
            && self.exe_ino == other.exe_ino
    }

    /// True when the executable is a kchaos: the very binary this process runs, or any file named
    /// `kchaos` (an older build still running while the file was replaced reads "kchaos (deleted)").
    pub fn is_kchaos_binary(&self) -> bool {
        let own = fs::metadata("/proc/self/exe").ok();
        if own.is_some_and(|m| m.dev() == self.exe_dev && m.ino() == self.exe_ino) {
            return true;
        }
        let name = self
            .exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.trim_end_matches(" (deleted)") == "kchaos"
    }
}

/// True when a process's name (/proc/PID/stat) may be a kchaos run: `kchaos`, or the name this
/// process runs under (a kchaos installed under another name runs its runs under it too).
pub fn named_like_kchaos_run(name: &str, own_name: Option<&str>) -> bool {
    name == "kchaos" || own_name == Some(name)
}

/// True when a process's name (/proc/PID/stat) may be any kchaos process: a run
/// ([`named_like_kchaos_run`]), a stress worker (`kchaos-cpu`, `kchaos-memory` ...) or a helper
/// started through /proc/self/exe (`exe`, until it names itself). Only these are worth the look at
/// the executable, which can block; any other name is not kchaos's.
pub fn named_like_kchaos(name: &str, own_name: Option<&str>) -> bool {
    named_like_kchaos_run(name, own_name) || name.starts_with("kchaos-") || name == "exe"
}

/// The fields of /proc/PID/stat kchaos reads.
struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: u32) -> io::Result<Stat> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text =
        bounded_read::read_to_string(&path, STAT_LIMIT, "process status").map_err(|e| match e {
            bounded_read::ReadError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        })?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat: {text:?}"),
        )
    })
}

/// When `pid` started (field 22 of /proc/PID/stat), and whether it still runs (not a zombie); only
/// /proc/PID/stat is read, which never blocks on the process's executable or memory. NotFound when
/// there is no such process.
pub fn started_and_live(pid: u32) -> io::Result<(u64, bool)> {
    let stat = read_stat(pid)?;
    Ok((stat.start_time, !matches!(stat.state, 'Z' | 'X' | 'x')))
}

/// When `pid` started (field 22 of /proc/PID/stat, clock ticks since boot); None when it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    read_stat(pid).ok().map(|s| s.start_time)
}

/// The state letter (field 3) of a /proc/PID/stat or /proc/PID/task/TID/stat text.
pub fn state_in(stat_text: &str) -> Option<char> {
    parse_stat(stat_text).map(|s| s.state)
}

/// State (field 3) and start time (field 22) from the text of /proc/PID/stat.
fn parse_stat(text: &str) -> Option<Stat> {
    // The name (field 2) is in parentheses and may itself hold spaces and parentheses: count the
    // fields after the last ')', where the state is field 3, so the start time is the 20th.
    let (_, after_name) = text.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// The file kchaos puts in a directory it makes for a run (the stress io directory).
pub const MARKER: &str = ".kchaos-owned";

/// What the marker of the run `pid` started at `start_time` holds.
pub fn marker_text(pid: u32, start_time: u64) -> String {
    format!("kchaos run pid {pid} start_time {start_time}\n")
}

/// Marks `dir` (just made by this process) as this run's. The marker is never a link and never
/// overwrites anything.
pub fn write_marker(dir: &Path) -> io::Result<()> {
    let me = ProcessIdentity::of_self()?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(MARKER))?;
    file.write_all(marker_text(std::process::id(), me.start_time).as_bytes())
}

/// True when `dir` carries the marker of the run `pid` started at `start_time`, made by `owner`: a
/// plain file (not a link), owned by `owner`, holding exactly that text.
pub fn has_marker(dir: &Path, pid: u32, start_time: u64, owner: u32) -> bool {
    let path = dir.join(MARKER);
    let Ok(meta) = fs::symlink_metadata(&path) else {
        return false;
    };
    if !meta.file_type().is_file() || meta.uid() != owner || meta.len() > 256 {
        return false;
    }
    fs::read_to_string(&path).is_ok_and(|t| t == marker_text(pid, start_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kill kind looks at the executable of processes named like kchaos only: runs, stress
    /// workers and helpers not yet named; stop only at runs.
    #[test]
    fn kchaos_names_and_others() {
        for ours in ["kchaos", "kchaos-cpu", "kchaos-memory", "exe", "chaos"] {
            assert!(named_like_kchaos(ours, Some("chaos")), "{ours}");
        }
        for other in ["sleep", "sshd", "kchao", "xkchaos", ""] {
            assert!(!named_like_kchaos(other, Some("chaos")), "{other}");
            assert!(!named_like_kchaos_run(other, Some("chaos")), "{other}");
        }
        assert!(!named_like_kchaos_run("kchaos-cpu", Some("kchaos")));
        assert!(!named_like_kchaos_run("exe", None));
    }

    #[test]
    fn reads_state_and_start_time_past_an_odd_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 1 0 98765 1000 200";
        let s = parse_stat(stat).unwrap();
        assert_eq!((s.state, s.start_time), ('S', 98765));
        assert!(parse_stat("4242 (x) S 1").is_none());
    }

    #[test]
    fn this_process_is_itself_and_not_its_parent() {
        let me = ProcessIdentity::of_self().unwrap();
        assert!(me.same_process(&ProcessIdentity::of(std::process::id()).unwrap()));
        assert!(
            me.is_kchaos_binary(),
            "the binary this process runs counts as kchaos"
        );
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        if let Ok(p) = ProcessIdentity::of(parent) {
            assert!(!me.same_process(&p));
        }
        assert!(ProcessIdentity::of(u32::MAX - 1).is_err());
    }

    #[test]
    fn a_deleted_kchaos_is_kchaos_and_sleep_is_not() {
        let id = |exe: &str| ProcessIdentity {
            start_time: 1,
            exe: exe.into(),
            exe_dev: 0,
            exe_ino: 0,
        };
        assert!(id("/usr/local/bin/kchaos (deleted)").is_kchaos_binary());
        assert!(id("/work/target/release/kchaos").is_kchaos_binary());
        assert!(!id("/usr/bin/sleep").is_kchaos_binary());
        assert!(!id("/usr/bin/kchaos-lookalike").is_kchaos_binary());
    }

    #[test]
    fn the_marker_names_one_run() {
        let dir = std::env::temp_dir().join(format!("kchaos-marker-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let me = ProcessIdentity::of_self().unwrap();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert!(!has_marker(&dir, std::process::id(), me.start_time, uid));
        write_marker(&dir).unwrap();
        assert!(has_marker(&dir, std::process::id(), me.start_time, uid));
        assert!(!has_marker(
            &dir,
            std::process::id(),
            me.start_time + 1,
            uid
        ));
        assert!(!has_marker(
            &dir,
            std::process::id() + 1,
            me.start_time,
            uid
        ));
        assert!(write_marker(&dir).is_err(), "a marker is never overwritten");
        fs::remove_dir_all(&dir).unwrap();
    }
}
