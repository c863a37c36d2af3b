//! The residue journal: what a running kchaos made that the kernel would keep after the process dies
//! (a qdisc, a frozen cgroup, a cgroup or directory it created). Each entry is written before the thing
//! is made and removed after it is undone, so `kchaos stop` can always finish the job of a killed loader.
//!
//! Programs and links are not journaled: they are fd-owned and go with the process.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::engine::qdisc::FqInstall;

/// One thing to undo.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Residue {
    /// A root fq qdisc put on a device for `--delay`.
    Fq(FqInstall),
    /// A cgroup kchaos froze (cgroup.freeze = 1): thaw it.
    FrozenCgroup { path: PathBuf },
    /// A cgroup kchaos created: kill what is in it, then remove it.
    Cgroup { path: PathBuf },
    /// A file or directory kchaos created: remove it.
    Path { path: PathBuf },
}

impl Residue {
    /// Undoes it. Something already gone counts as undone.
    pub fn undo(&self) -> io::Result<()> {
        match self {
            Residue::Fq(fq) => crate::engine::qdisc::restore(fq),
            Residue::FrozenCgroup { path } => match fs::write(path.join("cgroup.freeze"), "0") {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
            Residue::Cgroup { path } => remove_cgroup(path),
            Residue::Path { path } => match fs::metadata(path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(path),
                Ok(_) => fs::remove_file(path),
                Err(_) => Ok(()),
            },
        }
    }
}

/// Kills every process of a cgroup tree kchaos made, then removes it bottom-up.
pub fn remove_cgroup(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill (5.14+) kills the whole subtree at once; thaw first so a frozen tree can die.
    let _ = fs::write(path.join("cgroup.freeze"), "0");
    if fs::write(path.join("cgroup.kill"), "1").is_err() {
        for pid in crate::engine::cgroup::procs_recursive(path).unwrap_or_default() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    let mut last = Ok(());
    for _ in 0..100 {
        last = remove_tree(path);
        if last.is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    last
}

fn remove_tree(path: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path())?;
            }
        }
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The file of one running kchaos.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub pid: u32,
    pub command: String,
    pub started_unix: u64,
    pub residue: Vec<Residue>,
}

/// Where records live: $KCHAOS_RUN_DIR or /run/kchaos.
pub fn run_dir() -> PathBuf {
    std::env::var_os("KCHAOS_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/kchaos"))
}

/// This process's record, kept on disk while it lives; removed when dropped with nothing left to undo.
pub struct Journal {
    path: PathBuf,
    record: Record,
}

impl Journal {
    pub fn create(command: &str) -> io::Result<Self> {
        let dir = run_dir();
        fs::create_dir_all(&dir)?;
        let pid = std::process::id();
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let journal = Self {
            path: dir.join(format!("{pid}.json")),
            record: Record {
                pid,
                command: command.to_owned(),
                started_unix,
                residue: Vec::new(),
            },
        };
        journal.save()?;
        Ok(journal)
    }

    /// A journal with no file, in memory only: for what owns a Journal before the real one exists,
    /// and for tests of code that journals.
    pub fn scratch() -> Self {
        Self {
            path: PathBuf::new(),
            record: Record {
                pid: std::process::id(),
                command: String::new(),
                started_unix: 0,
                residue: Vec::new(),
            },
        }
    }

    /// Notes something about to be made.
    pub fn add(&mut self, residue: Residue) -> io::Result<()> {
        self.record.residue.push(residue);
        self.save()
    }

    /// Forgets something that has been undone.
    pub fn remove(&mut self, residue: &Residue) -> io::Result<()> {
        self.record.residue.retain(|r| r != residue);
        self.save()
    }

    /// Undoes everything still listed, newest first; returns what could not be undone.
    pub fn undo_all(&mut self) -> Vec<(Residue, io::Error)> {
        let mut failed = Vec::new();
        while let Some(r) = self.record.residue.pop() {
            if let Err(e) = r.undo() {
                failed.push((r, e));
            }
        }
        let _ = self.save();
        failed
    }

    fn save(&self) -> io::Result<()> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&self.record)?)?;
        fs::rename(&tmp, &self.path)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        for (r, e) in self.undo_all() {
            tracing::error!("could not undo {r:?}: {e}; `kchaos stop` will retry");
        }
        if self.record.residue.is_empty() && !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Every record on disk, with its path.
pub fn records() -> Vec<(PathBuf, Record)> {
    let Ok(entries) = fs::read_dir(run_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let rec = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
            Some((p, rec))
        })
        .collect()
}
