//! One stress load on one target cgroup, from start to stop: where the workers go (the target, or a
//! child cgroup kchaos makes), the io directory, the workers themselves, a CPU load that can change while
//! they run, and taking it all down again. `kchaos stress` and the `stress` kind of experiments both
//! drive their load through this.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::{
    StressSpec, hybrid, limits,
    worker::WorkerKind,
    workers::{Measurement, STOP_GRACE, Workers},
};
use crate::{
    engine::cgroup,
    engine::journal::{Journal, Residue},
    engine::targets::Target,
    kinds::kill::signal_processes as kill,
};

/// How long workers get to join the cgroup and report ready.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A running stress load. Dropping it ends and reaps the workers; [`Stress::stop`] also removes what
/// kchaos made (the io directory, the workers' cgroup) and says how everything ended.
pub struct Stress {
    pub spec: StressSpec,
    pub target: Target,
    /// Where the workers run (the target, or a child cgroup kchaos made).
    pub placement: Placement,
    /// The v1 cgroups the workers joined as well (hybrid hosts), and what to tell the user about it.
    pub v1: V1Placement,
    pub io_dir: Option<PathBuf>,
    pub workers: Workers,
    /// CLOCK_MONOTONIC at the start: the spec's own ramp counts from it.
    pub start_ns: u64,
    pub ready_at: Instant,
    /// The workers' numbers once they were all ready.
    pub at_ready: Measurement,
    /// The CPU workers' load now (the spec's, until [`Stress::set_cpu_load`]).
    pub cpu_load: Option<f64>,
}

/// How a stress load ended: the last readings, each worker's end, what was removed.
pub struct Stopped {
    pub stopped_at: Instant,
    /// Just before the workers were told to stop.
    pub at_stop: Measurement,
    /// After they stopped (the io worker's last report comes as it exits).
    pub after_stop: Measurement,
    pub workers: Vec<(WorkerKind, u32, String)>,
    pub dir_removed: bool,
    /// What could not be removed, for the user.
    pub errors: Vec<String>,
}

impl Stress {
    /// Checks the memory against the limits (unless the spec forces it), places and starts the
    /// workers, and waits until each is in the cgroup. `pid_hint` is a process of the target whose v1
    /// cgroups the workers join on hybrid hosts (else one is found in the target).
    pub fn start(
        spec: StressSpec,
        target: Target,
        pid_hint: Option<u32>,
        journal: &mut Journal,
    ) -> Result<Self> {
        let mount = cgroup::v2_mount().context("finding the cgroup v2 mount")?;
        let v1 = V1Placement::find(pid_hint, &target);
        if let Some(bytes) = spec.memory_bytes {
            limits::check_memory(bytes, &target.path, &mount, &v1.dirs, spec.force)?;
        }
        let placement = Placement::prepare(&target.path, journal)?;
        let io_dir = match &spec.io {
            Some(io) => match make_io_dir(&io.parent, journal) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    placement.remove(journal);
                    return Err(e);
                }
            },
            None => None,
        };
        let start_ns = crate::engine::lifecycle::monotonic_ns();
        let spawned = Workers::spawn(
            &placement.path,
            &v1.dirs,
            spec.worker_kinds(io_dir.as_deref()),
            start_ns,
            spec.ramp,
        )
        .map_err(anyhow::Error::from)
        .and_then(|mut w| {
            w.wait_ready(READY_TIMEOUT)?;
            Ok(w)
        });
        let mut workers = match spawned {
            Ok(w) => w,
            Err(e) => {
                // The workers (if any) ended with the error's drop; now what was made for them.
                if let Some(dir) = &io_dir {
                    let _ = undo(journal, Residue::Path { path: dir.clone() });
                }
                placement.remove(journal);
                return Err(e);
            }
        };
        let ready_at = Instant::now();
        let at_ready = workers.measure();
        Ok(Self {
            cpu_load: spec.cpu.map(|c| c.load_pct),
            spec,
            target,
            placement,
            v1,
            io_dir,
            workers,
            start_ns,
            ready_at,
            at_ready,
        })
    }

    /// Sets every CPU worker's load, in percent of one CPU (ramps); they follow within a period.
    pub fn set_cpu_load(&mut self, pct: f64) -> Result<()> {
        if self.spec.cpu.is_none() {
            anyhow::bail!("this stress load has no CPU workers");
        }
        self.workers
            .set_cpu_load(pct)
            .context("telling the CPU workers their new load")?;
        self.cpu_load = Some(pct);
        Ok(())
    }

    /// The workers' numbers now.
    pub fn measure(&mut self) -> Measurement {
        self.workers.measure()
    }

    /// Ends the workers (a grace period to report, then SIGKILL), reaps them, and removes the io
    /// directory and the workers' cgroup if kchaos made them.
    pub fn stop(mut self, journal: &mut Journal) -> Stopped {
        let stopped_at = Instant::now();
        let at_stop = self.workers.measure();
        self.workers.stop(STOP_GRACE);
        let after_stop = self.workers.measure();
        let workers = self
            .workers
            .list
            .iter()
            .map(|w| (w.kind.clone(), w.pid, w.exit.clone().unwrap_or_default()))
            .collect();
        let mut errors = Vec::new();
        let dir_removed = match &self.io_dir {
            Some(dir) => match undo(journal, Residue::Path { path: dir.clone() }) {
                // Still there: it is not kchaos's any more (someone's directory took its path; the
                // undo warned and left it).
                Ok(()) => std::fs::symlink_metadata(dir).is_err(),
                Err(e) => {
                    errors.push(format!("could not remove {}: {e}", dir.display()));
                    false
                }
            },
            None => false,
        };
        if let Some(e) = self.placement.remove(journal) {
            errors.push(e);
        }
        Stopped {
            stopped_at,
            at_stop,
            after_stop,
            workers,
            dir_removed,
            errors,
        }
    }
}

/// Undoes one journaled thing now and forgets it.
fn undo(journal: &mut Journal, residue: Residue) -> std::io::Result<()> {
    residue.undo()?;
    journal.remove(&residue)
}

/// Where the workers run: the target itself, or a child cgroup kchaos makes when the target has
/// controllers enabled for its children (cgroup v2 lets processes live only in leaves then).
pub struct Placement {
    pub path: PathBuf,
    pub made: bool,
}

impl Placement {
    fn prepare(target: &Path, journal: &mut Journal) -> Result<Self> {
        let subtree =
            std::fs::read_to_string(target.join("cgroup.subtree_control")).unwrap_or_default();
        if subtree.trim().is_empty() {
            return Ok(Self {
                path: target.to_owned(),
                made: false,
            });
        }
        let path = target.join(unique_name());
        journal
            .add(Residue::Cgroup { path: path.clone() })
            .context("journaling the workers' cgroup")?;
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, made: true })
    }

    /// Removes the cgroup if kchaos made it; says why not if that failed.
    fn remove(&self, journal: &mut Journal) -> Option<String> {
        if !self.made {
            return None;
        }
        undo(
            journal,
            Residue::Cgroup {
                path: self.path.clone(),
            },
        )
        .err()
        .map(|e| format!("could not remove {}: {e}", self.path.display()))
    }
}

/// The v1 cgroups the workers join on a hybrid host: those of a process of the target (the pid given,
/// else one found in the target's tree), so the container's v1 limits and accounting apply to them.
pub struct V1Placement {
    pub dirs: Vec<PathBuf>,
    /// What the user should know about it.
    pub note: Option<String>,
}

impl V1Placement {
    pub fn find(pid_hint: Option<u32>, target: &Target) -> Self {
        if !hybrid::has_v1_hierarchies() {
            return Self {
                dirs: Vec::new(),
                note: None,
            };
        }
        let reference = pid_hint.or_else(|| {
            kill::candidates(std::slice::from_ref(target))
                .ok()
                .and_then(|(found, _)| found.first().map(|c| c.pid))
        });
        let Some(pid) = reference else {
            return Self {
                dirs: Vec::new(),
                note: Some(
                    "note: this host also has cgroup v1 hierarchies, where a container's cpu and memory \
                     limits may live; the target has no process to take them from, so the workers \
                     stay in kchaos's own v1 cgroups"
                        .into(),
                ),
            };
        };
        match hybrid::v1_cgroups_of(pid) {
            Ok(dirs) if dirs.is_empty() => Self { dirs, note: None },
            Ok(dirs) => Self {
                note: Some(format!(
                    "also in the v1 cgroups of pid {pid}: {}",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                dirs,
            },
            Err(e) => Self {
                dirs: Vec::new(),
                note: Some(format!(
                    "note: could not read the v1 cgroups of pid {pid} ({e}); the workers stay in \
                     kchaos's own"
                )),
            },
        }
    }
}

/// `kchaos-stress-<pid>[-<n>]`: unique per call in this process, so two stress faults of one run
/// (on different targets) never share a cgroup or a directory.
fn unique_name() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let suffix = if n == 0 {
        String::new()
    } else {
        format!("-{n}")
    };
    format!(
        "{}{}{suffix}",
        crate::engine::journal::MADE_PREFIX,
        std::process::id()
    )
}

/// The directory the io worker writes in, made by mkdtemp(3): a name no one can guess and so make
/// (or point a symlink at) first, mode 0700, then journaled once it exists (a SIGKILL in between
/// leaves an empty directory, never a record that could name someone else's path), then marked.
fn make_io_dir(parent: &Path, journal: &mut Journal) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let template = parent.join(format!("{}-io-XXXXXX", unique_name()));
    let mut bytes = template.as_os_str().as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: `bytes` is a NUL-terminated, writable buffer ending in XXXXXX that outlives the call;
    // mkdtemp only rewrites those six bytes in place.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating a directory in {}", parent.display()));
    }
    bytes.pop();
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
    if let Err(e) = journal.add(Residue::Path { path: dir.clone() }) {
        let _ = std::fs::remove_dir(&dir);
        return Err(e).context("journaling the io directory");
    }
    // The marker is what lets `kchaos stop` remove this directory: a record alone may name no path.
    crate::engine::run_identity::write_marker(&dir)
        .with_context(|| format!("marking {} as kchaos's", dir.display()))?;
    Ok(dir)
}
