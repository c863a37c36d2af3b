//! The loader's side of the stress workers: starting them, reading what they report, measuring them
//! from the kernel (/proc, cpu.stat), and ending and reaping them, also when the loader fails midway.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::worker::{FDS_FILE, WorkerKind, WorkerStatus};
use crate::engine::procfs;

/// How long workers get to finish their step and report a last time before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("starting the {kind} stress worker (/proc/self/exe stress-worker): {source}")]
    Spawn {
        kind: &'static str,
        source: io::Error,
    },
    #[error("the {kind} stress worker (pid {pid}) {exit} before it was ready (its error is above)")]
    DiedEarly {
        kind: &'static str,
        pid: u32,
        exit: String,
    },
    #[error("the {kind} stress worker (pid {pid}) did not report ready within {secs} s")]
    NotReady {
        kind: &'static str,
        pid: u32,
        secs: u64,
    },
}

/// One worker process.
pub struct Worker {
    pub kind: WorkerKind,
    pub pid: u32,
    child: Child,
    /// CPU workers read their load from here while they run (see `worker::CONTROL_LOAD`).
    control: Option<ChildStdin>,
    status: Arc<Mutex<WorkerStatus>>,
    reader: Option<JoinHandle<()>>,
    /// How it ended, once it has.
    pub exit: Option<String>,
    /// Its CPU time at the last look, kept once it is gone.
    last_cpu: Duration,
    ended_by_loader: bool,
}

impl Worker {
    /// Its newest status line.
    pub fn status(&self) -> WorkerStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn note_exit(&mut self, status: ExitStatus) -> String {
        let how = describe_exit(status, self.ended_by_loader);
        self.exit = Some(how.clone());
        format!("the {} worker (pid {}) {how}", self.kind.name(), self.pid)
    }
}

fn describe_exit(status: ExitStatus, ended_by_loader: bool) -> String {
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited".into(),
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(libc::SIGKILL)) if !ended_by_loader => {
            "was killed by SIGKILL (the OOM killer, or someone else)".into()
        }
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended".into(),
    }
}

/// What the workers hold and have done, as the kernel counts it where it can.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Measurement {
    /// CPU time of the CPU workers together (/proc/PID/stat utime + stime).
    pub cpu_s: f64,
    /// The workers' cgroup's usage_usec (cpu.stat), all of its processes: the target's own too.
    pub cgroup_cpu_s: Option<f64>,
    /// What the memory worker holds for the fault: its RssAnon, the memory it allocated and touched
    /// (VmRSS also counts the pages of its executable and libraries).
    pub memory_held_bytes: u64,
    /// Its VmRSS: what top and ps show.
    pub memory_rss_bytes: u64,
    /// VmRSS of every worker together.
    pub workers_rss_bytes: u64,
    /// CPU time of every worker together since it started (its exec included): what the target
    /// cgroup's accounting is charged for them.
    pub workers_cpu_s: f64,
    /// Written and fsynced by the io worker (its own count: a write counts once fsync returned).
    pub bytes_written: u64,
    pub fsyncs: u64,
    /// Descriptors the fds worker holds (/proc/PID/fd), and its RLIMIT_NOFILE.
    pub fds_open: u64,
    pub fd_limit: u64,
    /// What stopped a worker short of its target.
    pub stopped_short: Vec<String>,
}

/// The workers of one run. Dropping it ends and reaps them.
pub struct Workers {
    pub cgroup: PathBuf,
    pub list: Vec<Worker>,
}

impl Workers {
    /// Starts one worker process per kind in `cgroup` (and in `v1_cgroups`, on hybrid hosts).
    ///
    /// Call it on the thread that lives as long as the run (the main thread): PR_SET_PDEATHSIG fires
    /// when the thread that forked a child ends, not the process.
    pub fn spawn(
        cgroup: &Path,
        v1_cgroups: &[PathBuf],
        kinds: Vec<WorkerKind>,
        start_ns: u64,
        ramp: Option<Duration>,
    ) -> Result<Self, WorkerError> {
        let mut workers = Self {
            cgroup: cgroup.to_owned(),
            list: Vec::new(),
        };
        let parent = std::process::id();
        for kind in kinds {
            let mut cmd = Command::new("/proc/self/exe");
            cmd.arg0("kchaos")
                .arg("stress-worker")
                .arg("--cgroup")
                .arg(cgroup)
                .args(
                    v1_cgroups
                        .iter()
                        .flat_map(|d| ["--v1-cgroup".as_ref(), d.as_os_str()]),
                )
                .args(["--parent", &parent.to_string()])
                .args(["--start-ns", &start_ns.to_string()])
                .args([
                    "--ramp-ns",
                    &ramp.map_or(0, |r| r.as_nanos() as u64).to_string(),
                ])
                .args(kind.to_args())
                // A CPU worker's load can change while it runs (experiment ramps): a pipe to say so.
                .stdin(if matches!(kind, WorkerKind::Cpu { .. }) {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            // SAFETY: between fork and exec only async-signal-safe calls (prctl, signal) are made.
            unsafe {
                cmd.pre_exec(|| {
                    // From the first instruction of the worker on, the loader's death kills it.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // Ctrl-C and a lost terminal reach the whole process group; the loader handles
                    // them and ends the workers itself, after their last report.
                    libc::signal(libc::SIGINT, libc::SIG_IGN);
                    libc::signal(libc::SIGHUP, libc::SIG_IGN);
                    Ok(())
                })
            };
            let mut child = cmd.spawn().map_err(|source| WorkerError::Spawn {
                kind: kind.name(),
                source,
            })?;
            let control = child.stdin.take();
            let status = Arc::new(Mutex::new(WorkerStatus::default()));
            let reader = child.stdout.take().map(|out| {
                let status = status.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        match serde_json::from_str::<WorkerStatus>(&line) {
                            Ok(s) => *status.lock().unwrap_or_else(PoisonError::into_inner) = s,
                            Err(e) => tracing::warn!("stress worker said {line:?}: {e}"),
                        }
                    }
                })
            });
            workers.list.push(Worker {
                pid: child.id(),
                kind,
                child,
                control,
                status,
                reader,
                exit: None,
                last_cpu: Duration::ZERO,
                ended_by_loader: false,
            });
        }
        Ok(workers)
    }

    /// Waits until every worker is in the cgroup and bound to the loader.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), WorkerError> {
        let start = Instant::now();
        loop {
            let mut all_ready = true;
            for w in &mut self.list {
                if w.status().ready {
                    continue;
                }
                all_ready = false;
                if let Ok(Some(status)) = w.child.try_wait() {
                    w.note_exit(status);
                    return Err(WorkerError::DiedEarly {
                        kind: w.kind.name(),
                        pid: w.pid,
                        exit: describe_exit(status, false),
                    });
                }
                if start.elapsed() > timeout {
                    return Err(WorkerError::NotReady {
                        kind: w.kind.name(),
                        pid: w.pid,
                        secs: timeout.as_secs(),
                    });
                }
            }
            if all_ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reaps workers that ended on their own; says who and how.
    pub fn reap_exited(&mut self) -> Vec<String> {
        let mut news = Vec::new();
        for w in self.list.iter_mut().filter(|w| w.exit.is_none()) {
            if let Ok(Some(status)) = w.child.try_wait() {
                news.push(w.note_exit(status));
            }
        }
        news
    }

    pub fn alive(&self) -> usize {
        self.list.iter().filter(|w| w.exit.is_none()).count()
    }

    /// Reads the workers' numbers now.
    pub fn measure(&mut self) -> Measurement {
        let mut m = Measurement {
            cgroup_cpu_s: cgroup_cpu_usage(&self.cgroup).map(|d| d.as_secs_f64()),
            ..Measurement::default()
        };
        for w in &mut self.list {
            let alive = w.exit.is_none();
            if alive && let Ok(cpu) = procfs::cpu_time(w.pid) {
                w.last_cpu = cpu;
            }
            let rss = if alive {
                procfs::rss_bytes(w.pid).unwrap_or(0)
            } else {
                0
            };
            m.workers_rss_bytes += rss;
            m.workers_cpu_s += w.last_cpu.as_secs_f64();
            let status = w.status();
            match w.kind {
                WorkerKind::Cpu { .. } => m.cpu_s += w.last_cpu.as_secs_f64(),
                WorkerKind::Memory { .. } => {
                    m.memory_rss_bytes += rss;
                    if alive {
                        m.memory_held_bytes += procfs::rss_anon_bytes(w.pid).unwrap_or(0);
                    }
                }
                WorkerKind::Io { .. } => {
                    m.bytes_written += status.bytes_written;
                    m.fsyncs += status.fsyncs;
                }
                WorkerKind::Fds { .. } => {
                    // The kernel's count of what the worker holds open for the fault.
                    m.fds_open += if alive {
                        procfs::fds_on(w.pid, FDS_FILE).unwrap_or(status.fds_open)
                    } else {
                        status.fds_open
                    };
                    m.fd_limit = status.fd_limit;
                }
            }
            if let Some(why) = status.stopped_short {
                m.stopped_short
                    .push(format!("{} worker: {why}", w.kind.name()));
            }
        }
        m
    }

    /// Tells every running CPU worker to aim at `pct` percent of one CPU from now on.
    pub fn set_cpu_load(&mut self, pct: f64) -> io::Result<()> {
        for w in self.list.iter_mut().filter(|w| w.exit.is_none()) {
            if let Some(control) = w.control.as_mut() {
                writeln!(control, "{} {pct}", super::worker::CONTROL_LOAD)?;
                control.flush()?;
            }
        }
        Ok(())
    }

    /// Ends every worker: SIGTERM, up to `grace` to report a last time, then SIGKILL; reaps them all.
    pub fn stop(&mut self, grace: Duration) {
        for w in self.list.iter_mut().filter(|w| w.exit.is_none()) {
            w.ended_by_loader = true;
            // SAFETY: plain kill(2) on our own unreaped child, so the pid is still ours.
            unsafe { libc::kill(w.pid as i32, libc::SIGTERM) };
        }
        let start = Instant::now();
        while self.alive() > 0 && start.elapsed() < grace {
            self.reap_exited();
            std::thread::sleep(Duration::from_millis(5));
        }
        for w in self.list.iter_mut().filter(|w| w.exit.is_none()) {
            let _ = w.child.kill();
            match w.child.wait() {
                Ok(status) => {
                    w.note_exit(status);
                }
                Err(e) => w.exit = Some(format!("could not be reaped: {e}")),
            }
        }
        for w in &mut self.list {
            if let Some(reader) = w.reader.take() {
                let _ = reader.join();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// usage_usec of a cgroup's cpu.stat. Cgroup v2 keeps it for every cgroup, with or without the cpu
/// controller (the base statistics are always there).
pub fn cgroup_cpu_usage(cgroup: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(cgroup.join("cpu.stat")).ok()?;
    let usec = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_micros(usec))
}
