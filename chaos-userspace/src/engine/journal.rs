//! The residue journal: what a running kchaos made that the kernel would keep after the process dies
//! (a qdisc, a frozen cgroup, a cgroup or directory it created). Each entry is written before the thing
//! is made and removed after it is undone, so `kchaos stop` can always finish the job of a killed loader.
//!
//! Programs and links are not journaled: they are fd-owned and go with the process.
//!
//! A record is trusted by `kchaos stop` only as far as it can be checked, since stop runs as root and
//! signals and deletes what a record names:
//! - the record directory must be root's and writable by no one else, nor replaceable through a
//!   parent directory ([`check_run_dir`]);
//! - a record names its process by pid, start time and executable ([`ProcessIdentity`]); stop signals
//!   only a live process that still matches and is a kchaos ([`liveness`]);
//! - each residue entry must name something kchaos makes ([`Residue::check`]); anything else is left
//!   alone.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    ops::Bound,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Component, Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use crate::{
    bounded_read,
    engine::cgroup,
    engine::qdisc::{self, FqInstall},
    engine::run_identity::{self, ProcessIdentity},
    engine::targets::Target,
    error::BadInput,
};

/// The first part of the name of every cgroup and directory kchaos makes for a run:
/// `kchaos-stress-<pid>[-<n>]`.
pub const MADE_PREFIX: &str = "kchaos-stress-";

/// True when `name` is one kchaos gives what it makes for the run `pid`.
pub fn is_made_name(name: &str, pid: u32) -> bool {
    let Some(rest) = name
        .strip_prefix(MADE_PREFIX)
        .and_then(|r| r.strip_prefix(&pid.to_string()))
    else {
        return false;
    };
    rest.is_empty()
        || rest
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// One thing to undo.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Residue {
    /// A root fq qdisc put on a device for `--delay`.
    Fq(FqInstall),
    /// A cgroup kchaos froze (cgroup.freeze = 1): thaw it, if it is still that cgroup.
    FrozenCgroup {
        path: PathBuf,
        /// The cgroup's id (its directory's inode) when it was frozen: a cgroup at the same path with
        /// another id replaced it (a restarted container) and is not kchaos's to thaw. None in records
        /// of an older kchaos.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A cgroup kchaos created: kill what is in it, then remove it.
    Cgroup { path: PathBuf },
    /// A directory kchaos created (with its [`run_identity::MARKER`]), or something inside one: remove it.
    Path { path: PathBuf },
    /// vDSO time hooks tagged `tag` in target processes: restore the vDSO where they are.
    TimeHooks { tag: u64 },
}

/// What `kchaos stop` may do about one checked entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It is gone already: nothing to do.
    Gone,
    /// It is kchaos's: undo it.
    Undo,
    /// A directory kchaos made, left empty because the run died before marking it: remove it (not
    /// recursively, so it is only ever an empty directory).
    RemoveEmptyDir,
}

/// The run a record belongs to, which its entries are checked against.
pub struct RecordOwner<'a> {
    pub pid: u32,
    /// From the record's identity; None in a record of an older kchaos.
    pub start_time: Option<u64>,
    /// Who made the files (the user kchaos runs as: root).
    pub uid: u32,
    /// The cgroup2 mount, if any.
    pub cgroup_mount: Option<&'a Path>,
}

impl Residue {
    /// Undoes it. Something already gone counts as undone. Only for what this process journaled
    /// itself; `kchaos stop` goes through [`Residue::check`] and [`Residue::apply`].
    pub fn undo(&self) -> io::Result<()> {
        match self {
            Residue::Fq(fq) => qdisc::restore(fq).map_err(io::Error::other),
            Residue::FrozenCgroup { path, id } => thaw_cgroup(path, *id),
            Residue::Cgroup { path } => remove_cgroup(path),
            // Only what still carries this process's marker (or the empty directory it made before
            // marking it): a directory that replaced it at its path (after a /tmp cleaner removed
            // it) is someone else's, and left alone with a warning.
            Residue::Path { path } => {
                let me = RecordOwner {
                    pid: std::process::id(),
                    start_time: run_identity::start_time(std::process::id()),
                    uid: owner_uid(),
                    cgroup_mount: None,
                };
                match check_path(path, &me) {
                    Ok(v) => self.apply(v),
                    Err(why) => {
                        tracing::warn!(
                            "{} is no longer what kchaos made ({why}): left alone",
                            path.display()
                        );
                        Ok(())
                    }
                }
            }
            Residue::TimeHooks { tag } => {
                let out =
                    crate::kinds::time::process::restore_all(*tag).map_err(io::Error::other)?;
                // Disarmed is safe (real time): said, not failed.
                for why in &out.disarmed_only {
                    tracing::warn!(
                        "time: {why}: its clock is real (hooks disarmed), its vDSO still leads to \
                         the disarmed hook page"
                    );
                }
                if out.failed.is_empty() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!(
                        "could not disarm (clocks real again when the lease lapses, within 3 s): {}",
                        out.failed.join(", ")
                    )))
                }
            }
        }
    }

    /// Decides whether the entry names something kchaos made for the run `owner`; the error says why
    /// not. Nothing is changed.
    pub fn check(&self, owner: &RecordOwner) -> Result<Verdict, String> {
        match self {
            Residue::Fq(fq) => check_fq(fq),
            Residue::FrozenCgroup { path, id } => {
                match check_cgroup(path, owner, CgroupUse::Thaw)? {
                    // Another cgroup at its path: the one frozen is gone, this one is not kchaos's.
                    Verdict::Undo if id.is_some() && cgroup::id(path).ok() != *id => {
                        Ok(Verdict::Gone)
                    }
                    v => Ok(v),
                }
            }
            Residue::Cgroup { path } => check_cgroup(path, owner, CgroupUse::Remove),
            Residue::Path { path } => check_path(path, owner),
            // Only processes whose hook page carries the tag are touched.
            Residue::TimeHooks { .. } => Ok(Verdict::Undo),
        }
    }

    /// Carries out a verdict of [`Residue::check`].
    pub fn apply(&self, verdict: Verdict) -> io::Result<()> {
        match (verdict, self) {
            (Verdict::Gone, _) => Ok(()),
            // Checked already (against the record's run, or this process): removed as it is.
            // symlink_metadata: a link is removed itself, never what it points to (remove_dir_all
            // does not follow links either).
            (Verdict::Undo, Residue::Path { path }) => match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(path),
                Ok(_) => fs::remove_file(path),
                Err(_) => Ok(()),
            },
            (Verdict::Undo, _) => self.undo(),
            (Verdict::RemoveEmptyDir, Residue::Path { path }) => match fs::remove_dir(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
            (Verdict::RemoveEmptyDir, _) => Ok(()),
        }
    }
}

/// An absolute path of plain names only: no `..` or `.` that could lead out of where it seems to be.
fn plain_absolute(path: &Path) -> Result<(), String> {
    let mut components = path.components();
    if components.next() != Some(Component::RootDir)
        || !components.all(|c| matches!(c, Component::Normal(_)))
    {
        return Err("it is not an absolute path of plain names".into());
    }
    Ok(())
}

fn check_fq(fq: &FqInstall) -> Result<Verdict, String> {
    if fq.handle != qdisc::FQ_HANDLE {
        return Err(format!(
            "its qdisc handle '{}' is not kchaos's ({})",
            fq.handle,
            qdisc::FQ_HANDLE
        ));
    }
    // IFNAMSIZ is 16 with the NUL; names hold neither '/' nor white space.
    let dev_ok = !fq.dev.is_empty()
        && fq.dev.len() < 16
        && !fq.dev.starts_with('-')
        && fq
            .dev
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if !dev_ok {
        return Err(format!("'{}' is not a network device name", fq.dev));
    }
    Ok(Verdict::Undo)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CgroupUse {
    Thaw,
    Remove,
}

fn check_cgroup(path: &Path, owner: &RecordOwner, usage: CgroupUse) -> Result<Verdict, String> {
    plain_absolute(path)?;
    let mount = owner
        .cgroup_mount
        .ok_or("no cgroup2 file system is mounted here")?;
    if !path.starts_with(mount) || path == mount {
        return Err(format!(
            "it is not below the cgroup2 mount {}",
            mount.display()
        ));
    }
    if usage == CgroupUse::Remove {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !is_made_name(&name, owner.pid) {
            return Err(format!(
                "its name '{name}' is not one kchaos gives the cgroups it makes for run pid {} \
                 ('{MADE_PREFIX}{}[-N]')",
                owner.pid, owner.pid
            ));
        }
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Gone),
        Err(e) => return Err(format!("it cannot be inspected: {e}")),
    };
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    match fs::canonicalize(path) {
        Ok(real) if real == path => {}
        Ok(real) => return Err(format!("it leads elsewhere ({})", real.display())),
        Err(e) => return Err(format!("it cannot be resolved: {e}")),
    }
    let needed = match usage {
        CgroupUse::Thaw => "cgroup.freeze",
        CgroupUse::Remove => "cgroup.procs",
    };
    if !path.join(needed).is_file() {
        return Err(format!("it has no {needed}: not a cgroup v2 directory"));
    }
    Ok(Verdict::Undo)
}

fn check_path(path: &Path, owner: &RecordOwner) -> Result<Verdict, String> {
    plain_absolute(path)?;
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Gone),
        Err(e) => return Err(format!("it cannot be inspected: {e}")),
    };
    // The nearest marked directory at or above it, with no link on the way down to it.
    if let Some(start_time) = owner.start_time {
        for dir in path.ancestors() {
            let Ok(m) = fs::symlink_metadata(dir) else {
                break;
            };
            if m.file_type().is_symlink() {
                return Err(format!("{} is a symbolic link", dir.display()));
            }
            if m.is_dir()
                && m.uid() == owner.uid
                && run_identity::has_marker(dir, owner.pid, start_time, owner.uid)
            {
                return Ok(Verdict::Undo);
            }
        }
    }
    // A directory the run made and died before marking: empty, ours, named for this run.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if meta.is_dir()
        && meta.uid() == owner.uid
        && is_made_name(&name, owner.pid)
        && fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
    {
        return Ok(Verdict::RemoveEmptyDir);
    }
    Err(format!(
        "neither it nor a directory above it carries the {} marker of run pid {}{}",
        run_identity::MARKER,
        owner.pid,
        if owner.start_time.is_none() {
            " (its record has no process identity to match one)"
        } else {
            ""
        }
    ))
}

/// Thaws the cgroup at `path` if it is still the one with `id` (any, when None). One that is gone, or
/// that another cgroup replaced at its path, is left alone: Ok. The directory is opened once and the
/// write goes through it, so a cgroup that replaces it between the check and the write is never
/// touched.
pub fn thaw_cgroup(path: &Path, id: Option<u64>) -> io::Result<()> {
    let dir = match fs::File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    if id.is_some_and(|id| dir.metadata().is_ok_and(|m| m.ino() != id)) {
        return Ok(());
    }
    match write_at(&dir, "cgroup.freeze", "0") {
        // Removed since it was opened.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {
            Ok(())
        }
        other => other,
    }
}

/// Writes `text` to the file `name` of the open directory `dir` (through /proc/self/fd: the
/// directory itself, wherever its path now leads).
pub fn write_at(dir: &fs::File, name: &str, text: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))?;
    io::Write::write_all(&mut f, text.as_bytes())
}

/// Kills every process of a cgroup tree kchaos made, then removes it bottom-up.
pub fn remove_cgroup(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill (5.14+) kills the whole subtree at once; thaw first so a frozen tree can die.
    let _ = fs::write(path.join("cgroup.freeze"), "0");
    if fs::write(path.join("cgroup.kill"), "1").is_err() {
        // Before 5.14: each process listed, through a pidfd opened before the check that it is still
        // in this tree, so a pid reused since the listing is never hit.
        let mount = crate::engine::cgroup::v2_mount().ok();
        for pid in crate::engine::cgroup::procs_recursive(path).unwrap_or_default() {
            let in_tree = || {
                mount.as_ref().is_some_and(|mount| {
                    crate::engine::cgroup::of_pid(pid)
                        .is_ok_and(|rel| mount.join(rel.trim_start_matches('/')).starts_with(path))
                })
            };
            let _ = crate::engine::pidfd::signal_if(pid, libc::SIGKILL, in_tree);
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
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub pid: u32,
    /// Who the process is beyond its pid. None in records of kchaos before identities: such a record
    /// never counts as naming a live run.
    #[serde(default)]
    pub identity: Option<ProcessIdentity>,
    pub command: String,
    /// The run's name (`--name`, else `<command>-<pid>`): unique among live runs. None in records of
    /// an older kchaos.
    #[serde(default)]
    pub name: Option<String>,
    pub started_unix: u64,
    /// The cgroups the run injects into (for the check against stacking runs).
    #[serde(default)]
    pub targets: Vec<PathBuf>,
    /// The fault kinds it injects ("net", "pause", ...): runs stack where they share a kind (two drop
    /// rates compound; a kill during a stress does not). Empty in records of an older kchaos.
    #[serde(default)]
    pub kinds: Vec<String>,
    pub residue: Vec<Residue>,
}

/// Whether a record's process is still that run.
#[derive(Debug)]
pub enum Liveness {
    /// The pid is the recorded kchaos process, alive.
    Running,
    /// No such process (or only a zombie).
    Gone,
    /// The pid is alive but not the recorded kchaos run (a reused pid, or an unverifiable record).
    NotThatRun(String),
    /// The process could not be inspected.
    Unknown(io::Error),
}

/// Judges the record's process now.
///
/// /proc/PID/stat comes first (it never blocks): a pid that is gone, or started at another time than
/// the record says, is judged without looking at its executable, which lives on whatever file system
/// holds it (a stalled mount would hang the look). Only the recorded process itself is looked at
/// further, and that look is given up after [`run_identity::LOOKUP_LIMIT`].
pub fn liveness(record: &Record) -> Liveness {
    let pid = record.pid;
    let (start_time, live) = match run_identity::started_and_live(pid) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Liveness::Gone,
        Err(e) => return Liveness::Unknown(e),
    };
    if !live {
        return Liveness::Gone;
    }
    let comm = || crate::engine::procfs::stat_comm(pid).unwrap_or_else(|_| "?".into());
    let Some(recorded) = &record.identity else {
        return Liveness::NotThatRun(format!(
            "the record carries no process identity (an older kchaos wrote it) and pid {pid} now \
             runs {}",
            comm()
        ));
    };
    if start_time != recorded.start_time {
        return Liveness::NotThatRun(format!(
            "pid {pid} is now another process ({}, started at tick {start_time}; the record says \
             tick {}, {})",
            comm(),
            recorded.start_time,
            recorded.exe.display()
        ));
    }
    let live = match ProcessIdentity::of_within(pid, run_identity::LOOKUP_LIMIT) {
        Ok(live) => live,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Liveness::Gone,
        Err(e) => return Liveness::Unknown(e),
    };
    if !recorded.same_process(&live) {
        return Liveness::NotThatRun(format!(
            "pid {} is now another process (started at tick {}, runs {}; the record says tick {}, {})",
            record.pid,
            live.start_time,
            live.exe.display(),
            recorded.start_time,
            recorded.exe.display()
        ));
    }
    if !live.is_kchaos_binary() {
        return Liveness::NotThatRun(format!(
            "pid {} runs {}, which is not kchaos",
            record.pid,
            live.exe.display()
        ));
    }
    Liveness::Running
}

/// Where records live: $KCHAOS_RUN_DIR or /run/kchaos.
pub fn run_dir() -> PathBuf {
    std::env::var_os("KCHAOS_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/kchaos"))
}

/// The user records and markers must belong to: the one kchaos runs as. Every command that writes or
/// acts on records requires root, so this is root; taking it from the process lets the checks be
/// tested without privileges.
pub fn owner_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// What is wrong with one directory on the way to the records, if anything: the record directory
/// itself must be `uid`'s and writable by no one else; a directory above it must be `uid`'s and either
/// writable by no one else or sticky (like /tmp), so no one else can swap what lies below it.
fn dir_problem(dir_uid: u32, mode: u32, uid: u32, is_record_dir: bool) -> Option<&'static str> {
    let others_write = mode & 0o022 != 0;
    let sticky = mode & libc::S_ISVTX != 0;
    if dir_uid != uid {
        Some("it must be owned by root")
    } else if others_write && (is_record_dir || !sticky) {
        Some("it must not be writable by group or others")
    } else {
        None
    }
}

/// Checks the record directory and the directories above it; returns it resolved. The error names the
/// directory, its owner and mode: the user's to fix (exit 2).
pub fn check_run_dir(dir: &Path) -> Result<PathBuf, BadInput> {
    let uid = owner_uid();
    let real = fs::canonicalize(dir).map_err(|e| {
        BadInput::new(format!(
            "kchaos's record directory {} (KCHAOS_RUN_DIR, else /run/kchaos): {e}",
            dir.display()
        ))
    })?;
    for (i, d) in real.ancestors().enumerate() {
        let meta = fs::metadata(d).map_err(|e| {
            BadInput::new(format!(
                "inspecting {} (record directory): {e}",
                d.display()
            ))
        })?;
        if i == 0 && !meta.is_dir() {
            return Err(BadInput::new(format!(
                "kchaos's record directory {} is not a directory",
                dir.display()
            )));
        }
        if let Some(why) = dir_problem(meta.uid(), meta.mode(), uid, i == 0) {
            let what = if i == 0 {
                format!("kchaos's record directory {}", real.display())
            } else {
                format!(
                    "{}, above kchaos's record directory {},",
                    d.display(),
                    real.display()
                )
            };
            return Err(BadInput::new(format!(
                "refusing {what} owned by uid {} with mode {:04o}: {why}, since the records there \
                 tell `kchaos stop` (as root) what to signal and remove; use a directory only root \
                 can write (e.g. `install -d -m 0700 -o root DIR`) for KCHAOS_RUN_DIR",
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(real)
}

/// Removes /run/kchaos when it holds nothing (no record of another run, no log of a failed detached
/// one), so that a machine kchaos ran on is left as it was. A directory set by $KCHAOS_RUN_DIR is the
/// user's and stays.
pub fn remove_default_run_dir_if_empty() {
    if std::env::var_os("KCHAOS_RUN_DIR").is_none() {
        // Fails, and so keeps it, when anything is in it.
        let _ = fs::remove_dir(run_dir());
    }
}

/// Makes the record directory (0700) if it is missing, then checks it.
pub fn prepare_run_dir() -> Result<PathBuf, BadInput> {
    let dir = run_dir();
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| BadInput::new(format!("creating {}: {e}", dir.display())))?;
    }
    check_run_dir(&dir)
}

/// The paths of resolved targets, as [`Journal::create`] takes them.
pub fn target_paths(targets: &[Target]) -> Vec<PathBuf> {
    targets.iter().map(|t| t.path.clone()).collect()
}

/// This process's record, kept on disk while it lives; removed when dropped with nothing left to undo.
pub struct Journal {
    path: PathBuf,
    record: Record,
}

impl Journal {
    /// Writes this run's record, before anything is attached. `targets` are the cgroups the run
    /// injects into; another live run on one of them, a parent or a child is refused (bad input)
    /// unless `stack`.
    pub fn create(
        command: &str,
        name: &str,
        kinds: &[&str],
        targets: &[PathBuf],
        stack: bool,
    ) -> anyhow::Result<Journal> {
        let dir = prepare_run_dir()?;
        let identity =
            ProcessIdentity::of_self().context("reading this process's identity in /proc/self")?;
        let pid = std::process::id();
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let journal = Self {
            path: dir.join(record_name(pid, identity.start_time, "json")),
            record: Record {
                pid,
                identity: Some(identity),
                command: command.to_owned(),
                name: Some(name.to_owned()),
                started_unix,
                targets: targets.to_vec(),
                kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
                residue: Vec::new(),
            },
        };
        let mut saved = journal.save();
        // A run ending at this moment removes the default directory if it found it empty (see
        // `remove_default_run_dir_if_empty`): make it again and write once more.
        for _ in 0..3 {
            if !matches!(&saved, Err(e) if e.kind() == io::ErrorKind::NotFound) {
                break;
            }
            prepare_run_dir()?;
            saved = journal.save();
        }
        saved.with_context(|| format!("writing the run record {}", journal.path.display()))?;
        // Checked after our own record is written: of two runs starting together, the later one to
        // look always sees the other.
        let records = records_in(&dir);
        if let Some(other) = same_name(&journal.record, &records) {
            return Err(BadInput::new(format!(
                "a kchaos run named '{name}' is already running (kchaos {}, pid {}): pick another \
                 --name, or end that one first (`kchaos stop --name {name}`)",
                other.command, other.pid
            ))
            .into());
        }
        let clashes = clashes(&journal.record, &records);
        if !clashes.is_empty() {
            // Thousands of targets on both sides would be thousands of lines.
            const SHOWN: usize = 20;
            let mut text = clashes[..clashes.len().min(SHOWN)]
                .iter()
                .map(|(line, _)| line.as_str())
                .collect::<Vec<_>>()
                .join("\n  ");
            let names: std::collections::BTreeSet<&str> =
                clashes.iter().map(|(_, name)| name.as_str()).collect();
            let stops = names
                .iter()
                .map(|n| format!("`kchaos stop --name {n}`"))
                .collect::<Vec<_>>()
                .join(", ");
            if clashes.len() > SHOWN {
                text += &format!("\n  ... and {} more", clashes.len() - SHOWN);
            }
            if !stack {
                // Dropping the journal removes the record again.
                return Err(BadInput::new(format!(
                    "another kchaos run already injects a fault of the same kind into these \
                     cgroups:\n  {text}\n\
                     Two runs there stack: each draws its own packets or calls, so the effective rate \
                     compounds and neither report tells it. End the other run first ({stops}), \
                     or pass --stack to run both anyway"
                ))
                .into());
            }
            eprintln!(
                "kchaos: --stack: running on top of another kchaos run (the effective rate \
                 compounds):\n  {text}"
            );
        }
        Ok(journal)
    }

    /// A journal with no file, in memory only: for what owns a Journal before the real one exists,
    /// and for tests of code that journals.
    pub fn scratch() -> Self {
        Self {
            path: PathBuf::new(),
            record: Record {
                pid: std::process::id(),
                identity: None,
                command: String::new(),
                name: None,
                started_unix: 0,
                targets: Vec::new(),
                kinds: Vec::new(),
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
        write_record(&self.path, &self.record)
    }

    /// The record directory (empty for a scratch journal).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new(""))
    }

    /// The run's name.
    pub fn name(&self) -> &str {
        self.record.name.as_deref().unwrap_or("")
    }

    /// Writes what the run shows about itself to its status file, beside its record (`kchaos status`
    /// reads it while the record names a live run).
    pub fn publish_status(&self, snapshot: &crate::live::Snapshot) -> io::Result<()> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        write_private(
            &status_path(&self.path),
            &self.path.with_extension(STATUS_TMP_EXT),
            &serde_json::to_vec(snapshot)?,
        )
    }
}

/// The extension of a run's status file, beside its record `<pid>-<start>.json`.
pub const STATUS_EXT: &str = "status";
/// The extension of a status file being written.
pub const STATUS_TMP_EXT: &str = "status-tmp";

/// The status file of the record at `record`.
pub fn status_path(record: &Path) -> PathBuf {
    record.with_extension(STATUS_EXT)
}

/// Reads the status file of the record at `record`; None when it is missing, not root's alone or
/// not a status.
pub fn read_status(record: &Path) -> Option<crate::live::Snapshot> {
    let path = status_path(record);
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.file_type().is_file() || meta.uid() != owner_uid() || meta.mode() & 0o022 != 0 {
        return None;
    }
    let bytes = bounded_read::read(&path, bounded_read::RECORD_LIMIT, "run status").ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The live run other than `mine` that has `mine`'s name, if any.
fn same_name<'a>(mine: &Record, others: &'a [RecordFile]) -> Option<&'a Record> {
    others.iter().find_map(|file| {
        let other = file.record.as_ref().ok()?;
        (other.pid != mine.pid
            && other.name.is_some()
            && other.name == mine.name
            && matches!(liveness(other), Liveness::Running))
        .then_some(other)
    })
}

impl Drop for Journal {
    fn drop(&mut self) {
        for (r, e) in self.undo_all() {
            tracing::error!("could not undo {r:?}: {e}; `kchaos stop` will retry");
        }
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(status_path(&self.path));
            if self.record.residue.is_empty() {
                let _ = fs::remove_file(&self.path);
                remove_default_run_dir_if_empty();
            }
        }
    }
}

/// `<pid>-<start time>.<ext>`: the start time keeps the record of an earlier process that had the
/// same pid (killed, its record not yet cleared) from being overwritten.
fn record_name(pid: u32, start_time: u64, ext: &str) -> String {
    format!("{pid}-{start_time}.{ext}")
}

/// The pid and start time in a record's or temp file's name (`<pid>-<start>.json`, or `<pid>.json`
/// from an older kchaos), and its extension.
pub fn parse_record_name(name: &str) -> Option<(u32, Option<u64>, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    match stem.split_once('-') {
        Some((pid, start)) => Some((pid.parse().ok()?, Some(start.parse().ok()?), ext)),
        None => Some((stem.parse().ok()?, None, ext)),
    }
}

/// Writes a record: a 0600 temp file, then renamed over the record, so a reader never sees half of
/// one.
pub fn write_record(path: &Path, record: &Record) -> io::Result<()> {
    write_private(
        path,
        &path.with_extension("tmp"),
        &serde_json::to_vec_pretty(record)?,
    )
}

/// Writes `bytes` to `path` through the 0600 file `tmp`, renamed over it.
fn write_private(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)?;
    // A temp file left by an earlier process keeps its mode through O_TRUNC: set it again.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    drop(file);
    fs::rename(tmp, path)
}

/// One record file, read and checked, or why it can't be trusted.
pub struct RecordFile {
    pub path: PathBuf,
    pub record: Result<Record, String>,
}

/// Every record (`*.json`) in `dir`.
pub fn records_in(dir: &Path) -> Vec<RecordFile> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let record = read_record(&path);
            RecordFile { path, record }
        })
        .collect()
}

/// Reads one record, refusing a file that is not root's alone or not a record.
pub fn read_record(path: &Path) -> Result<Record, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("it is not a plain file".into());
    }
    if meta.uid() != owner_uid() || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "it is owned by uid {} with mode {:04o}; records are root's, writable by root only",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    let bytes = bounded_read::read(path, bounded_read::RECORD_LIMIT, "run record")
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("it is not a kchaos run record: {e}"))
}

fn resolved(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

/// The lines naming each live run (other than `mine`'s) whose targets overlap `mine`'s.
///
/// Each path is resolved once, and another run's targets go into a sorted map: a target of ours
/// overlaps one of theirs that is it or one of its ancestors (a lookup each), or one below it (they
/// sort right after it, in one run). Two runs of 10,000 targets each compare in milliseconds, where
/// comparing every pair (and resolving both paths each time) took minutes.
/// Each overlap of `mine`'s targets with another live run's of a shared kind: a line saying so, and
/// that run's name.
fn clashes(mine: &Record, others: &[RecordFile]) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    let mut ours: Option<Vec<(&PathBuf, PathBuf)>> = None;
    for file in others {
        let Ok(other) = &file.record else { continue };
        if other.pid == mine.pid || !matches!(liveness(other), Liveness::Running) {
            continue;
        }
        // Only faults of one kind compound; a record that does not say counts as every kind.
        let shared_kind = mine.kinds.is_empty()
            || other.kinds.is_empty()
            || mine.kinds.iter().any(|k| other.kinds.contains(k));
        if !shared_kind {
            continue;
        }
        let ours =
            ours.get_or_insert_with(|| mine.targets.iter().map(|p| (p, resolved(p))).collect());
        let theirs: BTreeMap<PathBuf, &PathBuf> =
            other.targets.iter().map(|p| (resolved(p), p)).collect();
        let kinds = if other.kinds.contains(&other.command) {
            String::new()
        } else {
            format!(", faults {}", other.kinds.join(", "))
        };
        for (given, ours) in ours.iter() {
            let containing = ours.ancestors().filter_map(|a| theirs.get(a));
            let inside = theirs
                .range::<Path, _>((Bound::Excluded(ours.as_path()), Bound::Unbounded))
                .take_while(|(t, _)| t.starts_with(ours))
                .map(|(_, t)| t);
            let name = other
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", other.command, other.pid));
            for theirs in containing.chain(inside) {
                lines.push((
                    format!(
                        "{} overlaps the target {} of the run '{name}' (kchaos {}, pid {}){kinds}",
                        given.display(),
                        theirs.display(),
                        other.command,
                        other.pid,
                    ),
                    name.clone(),
                ));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("kchaos-journal-test-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
            Self(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn me() -> (u32, u64) {
        (
            std::process::id(),
            ProcessIdentity::of_self().unwrap().start_time,
        )
    }

    fn owner(mount: Option<&Path>) -> RecordOwner<'_> {
        let (pid, start) = me();
        RecordOwner {
            pid,
            start_time: Some(start),
            uid: owner_uid(),
            cgroup_mount: mount,
        }
    }

    #[test]
    fn a_path_needs_this_runs_marker_at_or_above_it() {
        let s = Scratch::new("path");
        let o = owner(None);
        let made = s.0.join(format!("kchaos-stress-{}", o.pid));
        fs::create_dir(&made).unwrap();
        fs::write(made.join("data"), "x").unwrap();
        let entry = |p: &Path| Residue::Path { path: p.into() };
        // No marker: refused, although the name looks like kchaos's.
        assert!(entry(&made).check(&o).is_err());
        run_identity::write_marker(&made).unwrap();
        assert_eq!(entry(&made).check(&o), Ok(Verdict::Undo));
        assert_eq!(entry(&made.join("data")).check(&o), Ok(Verdict::Undo));
        // Another run's record, or one without an identity, does not own it.
        let other = RecordOwner {
            start_time: o.start_time.map(|t| t + 1),
            ..owner(None)
        };
        assert!(entry(&made).check(&other).is_err());
        let old = RecordOwner {
            start_time: None,
            ..owner(None)
        };
        assert!(entry(&made).check(&old).is_err());
        // Anything else: a plain directory, a relative or dotted path, a link to the marked one.
        let plain = s.0.join("victim");
        fs::create_dir(&plain).unwrap();
        let err = entry(&plain).check(&o).unwrap_err();
        assert!(err.contains(".kchaos-owned"), "{err}");
        assert!(entry(Path::new("relative/dir")).check(&o).is_err());
        assert!(entry(&made.join("..").join("victim")).check(&o).is_err());
        let link = s.0.join(format!("kchaos-stress-{}-9", o.pid));
        std::os::unix::fs::symlink(&made, &link).unwrap();
        let err = entry(&link).check(&o).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        // Gone: nothing to do.
        assert_eq!(entry(&s.0.join("never-made")).check(&o), Ok(Verdict::Gone));
        // Undoing removes the marked directory, marker and all.
        entry(&made).apply(Verdict::Undo).unwrap();
        assert!(!made.exists());
        assert!(plain.exists());
        // This process's own undo checks the same: a directory put in place of its own (after a /tmp
        // cleaner removed that) is left alone; its own, marked, is removed.
        fs::create_dir(&made).unwrap();
        fs::write(made.join("theirs"), "x").unwrap();
        entry(&made).undo().unwrap();
        assert!(made.join("theirs").exists());
        run_identity::write_marker(&made).unwrap();
        entry(&made).undo().unwrap();
        assert!(!made.exists());
    }

    #[test]
    fn an_unmarked_directory_is_removed_only_when_empty_and_named_for_the_run() {
        let s = Scratch::new("empty");
        let o = owner(None);
        let made = s.0.join(format!("kchaos-stress-{}", o.pid));
        fs::create_dir(&made).unwrap();
        let entry = Residue::Path { path: made.clone() };
        assert_eq!(entry.check(&o), Ok(Verdict::RemoveEmptyDir));
        fs::write(made.join("f"), "x").unwrap();
        assert!(entry.check(&o).is_err(), "not empty any more");
        fs::remove_file(made.join("f")).unwrap();
        let other_run = s.0.join(format!("kchaos-stress-{}", o.pid + 1));
        fs::create_dir(&other_run).unwrap();
        assert!(
            Residue::Path { path: other_run }.check(&o).is_err(),
            "named for another pid"
        );
        entry.apply(Verdict::RemoveEmptyDir).unwrap();
        assert!(!made.exists());
    }

    #[test]
    fn cgroups_must_be_kchaos_named_and_below_the_mount() {
        // A stand-in for the cgroup2 mount: directories with a cgroup.procs and cgroup.freeze.
        let s = Scratch::new("cg");
        let mount = fs::canonicalize(&s.0).unwrap();
        let o = owner(Some(&mount));
        let cg = |name: &str| {
            let p = mount.join(name);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("cgroup.procs"), "").unwrap();
            fs::write(p.join("cgroup.freeze"), "0").unwrap();
            p
        };
        let ours = cg(&format!("kchaos-stress-{}-1", o.pid));
        let app = cg("app.slice");
        let lab = cg("kchaos-lab-x");
        let another_run = cg(&format!("kchaos-stress-{}", o.pid + 1));
        let remove = |p: &Path| Residue::Cgroup { path: p.into() };
        let thaw = |p: &Path| Residue::FrozenCgroup {
            path: p.into(),
            id: None,
        };
        assert_eq!(remove(&ours).check(&o), Ok(Verdict::Undo));
        for p in [&app, &lab, &another_run] {
            let err = remove(p).check(&o).unwrap_err();
            assert!(err.contains("kchaos-stress-"), "{err}");
        }
        assert!(remove(&mount).check(&o).is_err(), "the mount itself");
        // Thawing needs no kchaos name, but a cgroup below the mount.
        assert_eq!(thaw(&app).check(&o), Ok(Verdict::Undo));
        // With the id it had when frozen: another cgroup at its path is not kchaos's to thaw.
        let id = cgroup::id(&app).unwrap();
        let thaw_id = |id| Residue::FrozenCgroup {
            path: app.clone(),
            id: Some(id),
        };
        assert_eq!(thaw_id(id).check(&o), Ok(Verdict::Undo));
        assert_eq!(thaw_id(id + 1).check(&o), Ok(Verdict::Gone));
        assert!(thaw(&mount).check(&o).is_err());
        let outside = Scratch::new("cg-outside");
        let stray = outside.0.join(format!("kchaos-stress-{}", o.pid));
        fs::create_dir(&stray).unwrap();
        fs::write(stray.join("cgroup.procs"), "").unwrap();
        let err = remove(&stray).check(&o).unwrap_err();
        assert!(err.contains("not below the cgroup2 mount"), "{err}");
        let err = thaw(&stray).check(&o).unwrap_err();
        assert!(err.contains("not below the cgroup2 mount"), "{err}");
        // Not a cgroup (no cgroup.procs), or a link out of the mount.
        let plain = mount.join(format!("kchaos-stress-{}-2", o.pid));
        fs::create_dir(&plain).unwrap();
        assert!(remove(&plain).check(&o).is_err());
        let link = mount.join(format!("kchaos-stress-{}-3", o.pid));
        std::os::unix::fs::symlink(&stray, &link).unwrap();
        assert!(remove(&link).check(&o).is_err());
        assert!(remove(&mount.join("x/../app.slice")).check(&o).is_err());
        assert_eq!(
            remove(&mount.join(format!("kchaos-stress-{}-4", o.pid))).check(&o),
            Ok(Verdict::Gone)
        );
        assert!(
            remove(&ours).check(&owner(None)).is_err(),
            "no cgroup2 mount"
        );
    }

    #[test]
    fn made_names_belong_to_one_run() {
        assert!(is_made_name("kchaos-stress-42", 42));
        assert!(is_made_name("kchaos-stress-42-3", 42));
        assert!(!is_made_name("kchaos-stress-421", 42));
        assert!(!is_made_name("kchaos-stress-42-", 42));
        assert!(!is_made_name("kchaos-stress-42-x", 42));
        assert!(!is_made_name("kchaos-stress-4", 42));
        assert!(!is_made_name("kchaos-lab-42", 42));
    }

    #[test]
    fn fq_must_carry_kchaos_handle() {
        let o = owner(None);
        let fq = |dev: &str, handle: &str| {
            Residue::Fq(FqInstall {
                netns: crate::engine::netns::NetnsRef {
                    inode: 1,
                    pid_hint: 1,
                },
                dev: dev.into(),
                previous: "noqueue".into(),
                handle: handle.into(),
            })
        };
        assert_eq!(fq("eth0", qdisc::FQ_HANDLE).check(&o), Ok(Verdict::Undo));
        assert!(fq("eth0", "1:").check(&o).is_err());
        assert!(fq("eth0", "").check(&o).is_err(), "an older record");
        assert!(fq("../x", qdisc::FQ_HANDLE).check(&o).is_err());
        assert!(fq("-help", qdisc::FQ_HANDLE).check(&o).is_err());
        assert!(
            fq("a-very-long-device", qdisc::FQ_HANDLE)
                .check(&o)
                .is_err()
        );
    }

    #[test]
    fn the_record_directory_must_be_the_owners_alone() {
        let root = 0;
        assert_eq!(dir_problem(root, 0o40700, root, true), None);
        assert_eq!(dir_problem(root, 0o40755, root, true), None);
        assert!(dir_problem(root, 0o40777, root, true).is_some());
        assert!(dir_problem(root, 0o40770, root, true).is_some());
        assert!(dir_problem(65534, 0o40700, root, true).is_some());
        // Above it: /tmp (sticky, root's) is fine; a user's home is not.
        assert_eq!(dir_problem(root, 0o41777, root, false), None);
        assert!(dir_problem(root, 0o41777, root, true).is_some());
        assert!(dir_problem(1000, 0o40755, root, false).is_some());
        assert!(dir_problem(root, 0o40777, root, false).is_some());

        // The directories above a scratch directory are root's: the rest needs root.
        if owner_uid() != 0 {
            return;
        }
        let s = Scratch::new("rundir");
        assert_eq!(
            check_run_dir(&s.0).unwrap(),
            fs::canonicalize(&s.0).unwrap()
        );
        fs::set_permissions(&s.0, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_run_dir(&s.0).unwrap_err().0;
        assert!(
            err.contains("0777") && err.contains(&s.0.display().to_string()),
            "{err}"
        );
        assert!(check_run_dir(&s.0.join("missing")).is_err());
    }

    #[test]
    fn records_are_written_0600_and_read_back_with_names_parsed() {
        use std::os::unix::fs::PermissionsExt as _;
        let s = Scratch::new("records");
        let (pid, start) = me();
        let record = Record {
            pid,
            identity: Some(ProcessIdentity::of_self().unwrap()),
            command: "net".into(),
            name: Some("n".into()),
            started_unix: 1,
            targets: vec!["/sys/fs/cgroup/a".into()],
            kinds: vec!["net".into()],
            residue: vec![],
        };
        let path = s.0.join(record_name(pid, start, "json"));
        write_record(&path, &record).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!path.with_extension("tmp").exists());
        let files = records_in(&s.0);
        assert_eq!(files.len(), 1);
        let back = files[0].record.as_ref().unwrap();
        assert_eq!(back.targets, record.targets);
        assert!(matches!(liveness(back), Liveness::Running));
        // The old format still parses (no identity: never a live run).
        fs::write(
            s.0.join("1.json"),
            format!(r#"{{"pid":{pid},"command":"net","started_unix":1,"residue":[]}}"#),
        )
        .unwrap();
        let old = read_record(&s.0.join("1.json")).unwrap();
        assert!(matches!(liveness(&old), Liveness::NotThatRun(_)));
        fs::write(s.0.join("2.json"), "garbage").unwrap();
        assert!(read_record(&s.0.join("2.json")).is_err());
        assert_eq!(
            parse_record_name("42-777.json"),
            Some((42, Some(777), "json"))
        );
        assert_eq!(parse_record_name("42.tmp"), Some((42, None, "tmp")));
        assert_eq!(parse_record_name("x.tmp"), None);
    }

    #[test]
    fn a_name_is_taken_only_by_a_live_run() {
        let live = Record {
            pid: std::process::id(),
            identity: Some(ProcessIdentity::of_self().unwrap()),
            command: "net".into(),
            name: Some("loss".into()),
            started_unix: 1,
            targets: vec!["/cg/a".into()],
            kinds: vec!["net".into()],
            residue: vec![],
        };
        let file = |r: Record| RecordFile {
            path: "x".into(),
            record: Ok(r),
        };
        let mine = Record {
            pid: std::process::id() + 1,
            ..live.clone()
        };
        let others = [file(live.clone())];
        assert_eq!(same_name(&mine, &others).map(|r| r.pid), Some(live.pid));
        let other_name = Record {
            name: Some("other".into()),
            ..mine.clone()
        };
        assert!(same_name(&other_name, &others).is_none());
        // A dead or unverifiable run's record, or a record of an older kchaos (no name), frees it.
        let stale = [file(Record {
            identity: None,
            ..live.clone()
        })];
        assert!(same_name(&mine, &stale).is_none());
        let unnamed = [file(Record {
            name: None,
            ..live.clone()
        })];
        let mine_unnamed = Record {
            name: None,
            ..mine.clone()
        };
        assert!(same_name(&mine_unnamed, &unnamed).is_none());
        // Its own record is not another run.
        assert!(same_name(&live, &others).is_none());
    }

    #[test]
    fn clashing_targets_are_the_same_cgroup_a_parent_or_a_child() {
        // A live run (this process) on /cg/a clashes with a record of another pid there.
        let live = Record {
            pid: std::process::id(),
            identity: Some(ProcessIdentity::of_self().unwrap()),
            command: "net".into(),
            name: Some("n".into()),
            started_unix: 1,
            targets: vec!["/cg/a".into()],
            kinds: vec!["net".into()],
            residue: vec![],
        };
        let mine = Record {
            pid: std::process::id() + 1,
            targets: vec!["/cg/a/b".into()],
            ..live.clone()
        };
        let file = RecordFile {
            path: "x".into(),
            record: Ok(live.clone()),
        };
        let lines = clashes(&mine, std::slice::from_ref(&file));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].0.contains(&format!("pid {}", live.pid)),
            "{lines:?}"
        );
        // The run is named, so the advice can be `kchaos stop --name n`, not a bare `kchaos stop`
        // that would end every run on the host.
        assert!(lines[0].0.contains("the run 'n'"), "{lines:?}");
        assert_eq!(lines[0].1, "n");
        // Faults of another kind do not compound: a kill during a net fault is no stack.
        let kill = Record {
            kinds: vec!["kill".into()],
            ..mine.clone()
        };
        assert!(clashes(&kill, std::slice::from_ref(&file)).is_empty());
        // A dead or unverifiable run does not.
        let stale = RecordFile {
            path: "x".into(),
            record: Ok(Record {
                identity: None,
                ..live
            }),
        };
        assert!(clashes(&mine, &[stale]).is_empty());
    }

    /// The map walk finds exactly the pairs a comparison of every pair finds: the same cgroup, a
    /// parent, a child, and not a sibling whose name starts alike ("a-b": '-' sorts before '/').
    #[test]
    fn clashes_are_the_overlapping_pairs() {
        let names = ["a", "a-b", "a/b", "a/b/c", "a-b/c", "b", "ab"];
        let record = |pid: u32, targets: Vec<PathBuf>| Record {
            pid,
            identity: Some(ProcessIdentity::of_self().unwrap()),
            command: "net".into(),
            name: None,
            started_unix: 1,
            targets,
            kinds: vec!["net".into()],
            residue: vec![],
        };
        let pick = |mask: u32| -> Vec<PathBuf> {
            (0..names.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| PathBuf::from(format!("/nonexistent-kchaos/{}", names[i])))
                .collect()
        };
        for m in 0u32..(1 << names.len()) {
            for t in [1u32, 0b10, 0b100, 0b1001, 0b110000, 0b1111111] {
                let (ours, theirs) = (pick(m), pick(t));
                let mut expected = 0;
                for o in &ours {
                    for t in &theirs {
                        expected += usize::from(o.starts_with(t) || t.starts_with(o));
                    }
                }
                let live = RecordFile {
                    path: "x".into(),
                    record: Ok(record(std::process::id(), theirs)),
                };
                let mine = record(std::process::id() + 1, ours);
                let lines = clashes(&mine, std::slice::from_ref(&live));
                assert_eq!(lines.len(), expected, "{m:b} {t:b}: {lines:?}");
            }
        }
    }
}
