//! Network namespaces: naming one that outlives a pid, and finding it again (engine::rtnl talks to
//! one through the path it is found at).

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
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
