//! Network namespaces: naming one that outlives a pid, and running a command inside one.

use std::{
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// A network namespace, named by its inode (stable for its whole life) and a pid seen inside it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetnsRef {
    pub inode: u64,
    pub pid_hint: u32,
}

impl NetnsRef {
    /// The namespace process `pid` lives in.
    pub fn of_pid(pid: u32) -> io::Result<Self> {
        Ok(Self {
            inode: fs::metadata(format!("/proc/{pid}/ns/net"))?.ino(),
            pid_hint: pid,
        })
    }

    /// The namespace kchaos itself lives in.
    pub fn own() -> io::Result<Self> {
        Self::of_pid(std::process::id())
    }

    /// A path that opens this namespace now, if it still exists: the pid it was seen with, any other
    /// process in it, or a name under /run/netns.
    pub fn locate(&self) -> Option<PathBuf> {
        let matches = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.ino() == self.inode)
                .unwrap_or(false)
        };
        let hinted = PathBuf::from(format!("/proc/{}/ns/net", self.pid_hint));
        if matches(&hinted) {
            return Some(hinted);
        }
        let named = fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        let procs = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .map(|e| e.path().join("ns/net"));
        named.chain(procs).find(|p| matches(p))
    }
}

/// Makes `cmd` run inside the namespace at `ns_path` (setns in the child before exec).
pub fn command_in(ns_path: &Path, program: &str) -> io::Result<Command> {
    let ns = fs::File::open(ns_path)?;
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; the fd stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Makes `cmd` run in a brand-new, empty network namespace that vanishes with it: a place to try
/// things (a qdisc kind, say) without touching any real device.
pub fn command_in_scratch_netns(program: &str) -> Command {
    let mut cmd = Command::new(program);
    // SAFETY: unshare is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs a command and returns its output, or an error carrying its stderr.
pub fn run_checked(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
