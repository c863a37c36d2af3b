//! Freezing cgroups (cgroup.freeze) and thawing them again, for the `pause` kind.
//!
//! A frozen cgroup stays frozen when the process that froze it dies, so two things thaw it besides the
//! loader itself: a guard process (`kchaos pause-guard`, a child in its own process group that the
//! kernel signals when the loader dies, PR_SET_PDEATHSIG) thaws at once; the journal's FrozenCgroup
//! entry lets `kchaos stop` thaw it when even the guard is gone.

use std::{
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    engine::cgroup::{self, holds_this_process},
    engine::journal::{Journal, Residue, write_at},
    error::BadInput,
};

/// `kchaos pause-guard`: started by `kchaos pause`, never by users.
#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    /// The loader's pid.
    #[arg(long)]
    pub parent: u32,
    /// The cgroups to thaw if the loader dies.
    #[arg(long = "cgroup", required = true)]
    pub cgroups: Vec<PathBuf>,
    /// Their ids (directory inodes), in the same order: a cgroup at one of the paths with another id
    /// replaced the target and is left alone.
    #[arg(long = "cgroup-id")]
    pub ids: Vec<u64>,
}

/// How long freezing or thawing may take before the run says so.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a freeze could not be made or undone.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error(transparent)]
    Refused(#[from] BadInput),
    #[error("starting the thaw guard: {0}")]
    Guard(#[source] io::Error),
    #[error("journaling the freeze of {path}: {source}")]
    Journal { path: PathBuf, source: io::Error },
    #[error("freezing {path}: {source}")]
    Freeze { path: PathBuf, source: io::Error },
    #[error("could not thaw {0}; `kchaos stop` retries")]
    Thaw(String),
    #[error("{path} still reports frozen {secs}s after cgroup.freeze was set to 0")]
    StillFrozen { path: PathBuf, secs: u64 },
}

/// Cgroups frozen by this process, with the guard that thaws them if it dies. Used by `kchaos pause`
/// and by the `pause` fault kind of scenarios.
///
/// Dropping it without [`Freeze::thaw`] thaws too (best effort; the journal keeps the entries, so its
/// own drop or `kchaos stop` retries).
pub struct Freeze {
    paths: Vec<PathBuf>,
    /// The target directories, opened once: every write and read goes through them, so a cgroup that
    /// replaced a target at its path (a restarted container) is never thawed nor waited for.
    dirs: Vec<fs::File>,
    /// Their ids (the directories' inodes), journaled with the paths.
    ids: Vec<u64>,
    /// The indices of the targets whose cgroup.freeze was (or may have been) set to 1.
    asked: Vec<usize>,
    guard: Guard,
    /// When cgroup.freeze was set.
    pub asked_at: Instant,
    /// When the kernel first reported every path frozen (cgroup.events "frozen 1").
    frozen_at: Option<Instant>,
    thawed_at: Option<Instant>,
    /// Processes in the trees when they were seen frozen (or asked to freeze, until then).
    processes: usize,
}

impl Freeze {
    /// Everything before the freeze itself: checks each path, starts the guard, and journals each
    /// path (a thaw of a cgroup that was never frozen is harmless, so `kchaos stop` may act on it
    /// early). Call it on the main thread (the guard's PR_SET_PDEATHSIG fires when the forking thread
    /// ends).
    pub fn prepare(paths: &[PathBuf], journal: &mut Journal) -> Result<Self, FreezeError> {
        let mut dirs = Vec::new();
        let mut ids = Vec::new();
        for p in paths {
            check_freezable(p)?;
            let opened = fs::File::open(p).and_then(|d| Ok((d.metadata()?.ino(), d)));
            let (id, dir) = opened
                .map_err(|e| BadInput::new(format!("{} cannot be opened: {e}", p.display())))?;
            dirs.push(dir);
            ids.push(id);
        }
        let guard = Guard::start(paths, &ids).map_err(FreezeError::Guard)?;
        for (p, id) in paths.iter().zip(&ids) {
            journal
                .add(Residue::FrozenCgroup {
                    path: p.clone(),
                    id: Some(*id),
                })
                .map_err(|source| FreezeError::Journal {
                    path: p.clone(),
                    source,
                })?;
        }
        Ok(Self {
            paths: paths.to_vec(),
            dirs,
            ids,
            asked: Vec::new(),
            guard,
            asked_at: Instant::now(),
            frozen_at: None,
            thawed_at: None,
            processes: 0,
        })
    }

    /// Asks the kernel to freeze every path: one write each, at the planned instant.
    pub fn freeze(&mut self) -> Result<(), FreezeError> {
        self.asked_at = Instant::now();
        for (i, (p, dir)) in self.paths.iter().zip(&self.dirs).enumerate() {
            self.asked.push(i);
            write_at(dir, "cgroup.freeze", "1").map_err(|source| FreezeError::Freeze {
                path: p.clone(),
                source,
            })?;
        }
        // (How many processes froze is counted once the kernel says they did: see poll.)
        Ok(())
    }

    /// The paths, comma-separated.
    pub fn names(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Waits until the kernel reports every path frozen; returns how long that took from the request,
    /// or the first path not frozen after `timeout`.
    pub fn wait_frozen(&mut self, timeout: Duration) -> Result<Duration, PathBuf> {
        let all: Vec<usize> = (0..self.paths.len()).collect();
        let waited = self.wait(&all, true, timeout);
        if waited.is_ok() {
            self.poll();
        }
        waited.map(|_| self.freeze_latency().unwrap_or_default())
    }

    /// Notes the moment the whole tree is first seen frozen; true once it has been.
    pub fn poll(&mut self) -> bool {
        if self.frozen_at.is_none()
            && self.thawed_at.is_none()
            && self.dirs.iter().all(is_frozen_dir)
        {
            self.frozen_at = Some(Instant::now());
            self.processes = process_count(&self.paths);
        }
        self.frozen_at.is_some()
    }

    /// When the kernel first reported every path frozen.
    pub fn frozen_at(&self) -> Option<Instant> {
        self.frozen_at
    }

    /// From the request to the kernel's "frozen 1".
    pub fn freeze_latency(&self) -> Option<Duration> {
        self.frozen_at.map(|f| f - self.asked_at)
    }

    /// From the kernel's "frozen 1" to the thaw (or to now, while frozen).
    pub fn frozen_for(&self) -> Option<Duration> {
        self.frozen_at
            .map(|f| self.thawed_at.unwrap_or_else(Instant::now) - f)
    }

    pub fn processes(&self) -> usize {
        self.processes
    }

    pub fn is_thawed(&self) -> bool {
        self.thawed_at.is_some()
    }

    /// Thaws every path, forgets them in the journal, dismisses the guard, and waits up to `timeout`
    /// for the kernel to report them thawed; returns how long that took. A second call does nothing.
    pub fn thaw(
        &mut self,
        journal: &mut Journal,
        timeout: Duration,
    ) -> Result<Duration, FreezeError> {
        if self.thawed_at.is_some() {
            return Ok(Duration::ZERO);
        }
        if self.asked.is_empty() {
            // Prepared but never frozen: nothing to thaw, only the notes to forget.
            for (p, id) in self.paths.iter().zip(&self.ids) {
                let _ = journal.remove(&Residue::FrozenCgroup {
                    path: p.clone(),
                    id: Some(*id),
                });
            }
            self.guard.dismiss();
            self.thawed_at = Some(Instant::now());
            return Ok(Duration::ZERO);
        }
        self.poll();
        self.thawed_at = Some(Instant::now());
        let mut failed = Vec::new();
        for (p, id) in self.paths.iter().zip(&self.ids) {
            // Thaws that cgroup only: one that replaced it at its path is someone else's.
            let residue = Residue::FrozenCgroup {
                path: p.clone(),
                id: Some(*id),
            };
            match residue.undo() {
                Ok(()) => {
                    let _ = journal.remove(&residue);
                }
                Err(e) => failed.push(format!("{}: {e}", p.display())),
            }
        }
        let asked = self.asked.clone();
        let thawed = self.wait(&asked, false, timeout);
        // The guard is dismissed only once nothing is left for it to do.
        if failed.is_empty() {
            self.guard.dismiss();
        }
        self.asked.clear();
        if !failed.is_empty() {
            return Err(FreezeError::Thaw(failed.join(", ")));
        }
        thawed.map_err(|path| FreezeError::StillFrozen {
            path,
            secs: timeout.as_secs(),
        })
    }
}

impl Freeze {
    /// Waits until the targets `which` report frozen (or thawed); returns how long it took, or the
    /// path of the first that did not get there in time. A target that is gone counts as thawed.
    fn wait(&self, which: &[usize], frozen: bool, timeout: Duration) -> Result<Duration, PathBuf> {
        let start = Instant::now();
        loop {
            match which
                .iter()
                .find(|&&i| is_frozen_dir(&self.dirs[i]) != frozen)
            {
                None => return Ok(start.elapsed()),
                Some(&i) if start.elapsed() > timeout => return Err(self.paths[i].clone()),
                Some(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        for &i in &self.asked {
            let _ = write_at(&self.dirs[i], "cgroup.freeze", "0");
        }
    }
}

/// Refuses what kchaos must not or cannot freeze.
pub fn check_freezable(path: &Path) -> Result<(), BadInput> {
    if holds_this_process(path) {
        // Even with --allow-host: a frozen kchaos could never thaw it.
        return Err(BadInput::new(format!(
            "{} holds kchaos itself: once frozen, nothing would be left to thaw it",
            path.display()
        )));
    }
    match fs::read_to_string(path.join("cgroup.freeze")) {
        Ok(v) if v.trim() == "0" => Ok(()),
        Ok(_) => Err(BadInput::new(format!(
            "{} is already frozen (cgroup.freeze is 1): someone else froze it, and kchaos would thaw \
             it at the end",
            path.display()
        ))),
        Err(e) => Err(BadInput::new(format!(
            "{} has no cgroup.freeze ({e}): the root cgroup cannot be frozen, and kernels before 5.2 \
             have no cgroup v2 freezer",
            path.display()
        ))),
    }
}

/// The kernel's view (cgroup.events "frozen 1"): every process of the tree is frozen.
pub fn is_frozen(path: &Path) -> bool {
    fs::read_to_string(path.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "frozen 1"))
        .unwrap_or(false)
}

/// The same, of an open cgroup directory; false once it is removed.
fn is_frozen_dir(dir: &fs::File) -> bool {
    use std::os::fd::AsRawFd as _;
    is_frozen(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())))
}

fn process_count(paths: &[PathBuf]) -> usize {
    paths
        .iter()
        .map(|p| cgroup::procs_recursive(p).map_or(0, |v| v.len()))
        .sum()
}

/// The thaw guard, seen from the loader.
struct Guard {
    child: Option<Child>,
}

impl Guard {
    /// Starts it and waits until it is ready to act. Call it on the main thread: PR_SET_PDEATHSIG fires
    /// when the thread that forked the child ends.
    fn start(paths: &[PathBuf], ids: &[u64]) -> io::Result<Self> {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("kchaos")
            .args(["pause-guard", "--parent", &std::process::id().to_string()]);
        for (p, id) in paths.iter().zip(ids) {
            cmd.arg("--cgroup").arg(p);
            cmd.arg("--cgroup-id").arg(id.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: between fork and exec only async-signal-safe calls (setpgid, prctl) are made.
        unsafe {
            cmd.pre_exec(|| {
                // Its own process group: a Ctrl-C or a kill of the loader's group does not reach it.
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = cmd.spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout from the guard"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut guard = Self { child: Some(child) };
        match rx.recv_timeout(SETTLE_TIMEOUT) {
            Ok(line) if line.trim() == "ready" => Ok(guard),
            other => {
                guard.dismiss();
                Err(io::Error::other(format!(
                    "the guard did not get ready ({other:?})"
                )))
            }
        }
    }

    /// Ends it without letting it act: the loader has thawed (or never froze) the targets.
    fn dismiss(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.dismiss();
    }
}

/// The guard's side: waits for a signal (the kernel's SIGTERM when the loader dies), then thaws.
pub fn guard(args: &GuardArgs) -> Result<()> {
    // Blocked first, so a signal that comes before sigwait waits for it instead of killing the guard.
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset; the mask applies to this thread,
    // the only one.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    // SAFETY: PR_SET_PDEATHSIG takes a signal number, no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
    // Opened now, while they are the loader's targets: a cgroup that replaces one at its path later
    // (a restarted container) is someone else's, and the thaw below goes to the opened one only.
    let dirs: Vec<Option<fs::File>> = args
        .cgroups
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let dir = fs::File::open(p).ok()?;
            let id = dir.metadata().ok()?.ino();
            args.ids
                .get(i)
                .is_none_or(|&want| want == id)
                .then_some(dir)
        })
        .collect();
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 == args.parent {
        let mut out = io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        let mut sig = 0;
        // SAFETY: set is a valid, initialised signal set; sig a valid place to write the number.
        unsafe { libc::sigwait(&set, &mut sig) };
    }
    // The loader is gone (or it asked): thaw. Its stderr may be gone too, so writes are best effort.
    for (p, dir) in args.cgroups.iter().zip(&dirs) {
        let outcome = match dir.as_ref().map(|d| write_at(d, "cgroup.freeze", "0")) {
            Some(Ok(())) => "thawed".to_owned(),
            None => "gone already (or replaced by another cgroup), left alone:".to_owned(),
            Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
                "gone already, nothing to thaw:".to_owned()
            }
            Some(Err(e)) => format!("could not thaw ({e}); `kchaos stop` retries:"),
        };
        let _ = writeln!(
            io::stderr(),
            "kchaos pause-guard: the loader (pid {}) ended without thawing; {outcome} {}",
            args.parent,
            p.display()
        );
    }
    Ok(())
}
