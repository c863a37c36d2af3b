//! Stopping every thread of a process with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT), running a
//! syscall inside it, and letting it go with its registers as they were; and reading and writing its
//! memory through /proc/PID/mem (which may write read-only and code pages, as a debugger does).
//!
//! Every ptrace request must come from the thread that attached: a [`Stopped`] is made, used and
//! dropped by one call on one thread.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::FileExt as _,
    time::{Duration, Instant},
};

/// How long a thread may take to stop before the process is given up (a frozen cgroup's threads do
/// not stop until thawed).
const STOP_TIMEOUT: Duration = Duration::from_millis(500);

/// The /proc directory of a live thread of `pid`: /proc/PID, or, when its main thread has exited (a
/// zombie leader: its own mem, maps and auxv read empty while the other threads run on),
/// /proc/PID/task/TID of one that runs. None when no thread of it runs code any more.
pub fn live_dir(pid: u32) -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let runs = |d: &std::path::Path| {
        fs::read_to_string(d.join("stat")).is_ok_and(|s| {
            !matches!(
                crate::engine::run_identity::state_in(&s),
                Some('Z' | 'X' | 'x') | None
            )
        })
    };
    if runs(&dir) {
        return Some(dir);
    }
    tids(pid)
        .ok()?
        .into_iter()
        .map(|t| dir.join("task").join(t.to_string()))
        .find(|d| runs(d))
}

/// [`live_dir`], or /proc/PID when none (what is read there then fails or reads empty).
pub fn proc_dir(pid: u32) -> std::path::PathBuf {
    live_dir(pid).unwrap_or_else(|| format!("/proc/{pid}").into())
}

/// Reads `buf.len()` bytes at `addr` of `pid`.
pub fn read_mem(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let f = File::open(proc_dir(pid).join("mem"))?;
    read_at(&f, addr, buf)
}

/// Reads through an open /proc/PID/mem.
pub fn read_at(f: &File, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    f.read_exact_at(buf, addr)
}

/// Opens /proc/PID/mem for reading and writing.
pub fn open_mem(pid: u32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(proc_dir(pid).join("mem"))
}

/// Writes `bytes` at `addr` (also into read-only or code pages: the kernel copies the page for this
/// process first).
pub fn write_at(f: &File, addr: u64, bytes: &[u8]) -> io::Result<()> {
    f.write_all_at(bytes, addr)
}

/// The thread ids of `pid`.
fn tids(pid: u32) -> io::Result<Vec<i32>> {
    let mut out: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// Why the threads of a process could not be stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// Every thread exited (or is a zombie: it runs no code any more).
    #[error("it exited")]
    Gone,
    /// Another tracer (a debugger, strace) holds a thread: ptrace allows one tracer.
    #[error("it is traced by {0} (one tracer at a time: kchaos cannot attach)")]
    Traced(String),
    /// A thread did not stop in time (a killable wait such as a vfork, a freezing cgroup); it is
    /// detached as soon as it stops (see [`release_lingering`]).
    #[error("thread {tid} did not stop within {ms} ms (in a vfork or an uninterruptible wait?)")]
    TimedOut { tid: i32, ms: u128 },
    /// A thread whose earlier stop timed out is still seized by this kchaos (it is let go when it
    /// stops).
    #[error("thread {0} is still held by this kchaos (an earlier stop of it timed out)")]
    Held(i32),
    /// Refused for another reason (a security module).
    #[error("ptrace(SEIZE) of thread {tid}: {err} (not traced, not exiting: a security module?)")]
    Refused { tid: i32, err: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Threads seized but not stopped when their stop timed out: a ptrace request (PTRACE_DETACH too)
/// needs a stopped tracee, so each is detached when its pending interrupt stops it. Only the thread
/// that seized them may wait for and detach them: kchaos's ptrace work runs on one thread.
static LINGERING: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Detaches every lingering thread that has stopped since (or is gone); waits up to `wait` for the
/// others. Returns how many are still attached.
pub fn release_lingering(wait: Duration) -> usize {
    let Ok(mut lingering) = LINGERING.lock() else {
        return 0;
    };
    let start = Instant::now();
    loop {
        lingering.retain(|&tid| match wait_stop(tid, Duration::ZERO) {
            Ok(sig) => {
                // SAFETY: PTRACE_DETACH takes a tid and a signal number to deliver.
                unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, sig as usize) };
                false
            }
            Err(e) => e.kind() == io::ErrorKind::TimedOut,
        });
        if lingering.is_empty() || start.elapsed() >= wait {
            return lingering.len();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The tracer of thread `tid` of `pid` (TracerPid in its status), if any.
pub fn tracer_of(pid: u32, tid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&t| t != 0)
}

/// "pid 123 (strace)", or "this kchaos".
pub fn describe_pid(pid: u32) -> String {
    if pid == std::process::id() {
        return "this kchaos".into();
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("pid {pid} ({})", comm.trim())
}

/// Whether thread `tid` of `pid` runs no code any more (gone, a zombie or dead).
fn thread_dead(pid: u32, tid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).map_or(true, |s| {
        matches!(
            crate::engine::run_identity::state_in(&s),
            Some('Z' | 'X' | 'x') | None
        )
    })
}

/// Every thread of one process, stopped under ptrace. Dropping it lets them go (with the registers
/// of the thread that ran syscalls put back).
pub struct Stopped {
    pub pid: u32,
    /// Each stopped thread, with a signal it stopped for that must be delivered on detach.
    threads: BTreeMap<i32, i32>,
    saved: Option<(i32, libc::user_regs_struct)>,
}

impl Stopped {
    /// Seizes and stops every live thread (threads started meanwhile too). A zombie thread (a main
    /// thread that called pthread_exit, a process exiting) runs no code and is left alone.
    pub fn stop(pid: u32) -> Result<Self, StopError> {
        release_lingering(Duration::ZERO);
        let mut s = Self {
            pid,
            threads: BTreeMap::new(),
            saved: None,
        };
        let mut dead = std::collections::BTreeSet::new();
        loop {
            let new: Vec<i32> = tids(pid)
                .map_err(|_| StopError::Gone)?
                .into_iter()
                .filter(|t| !s.threads.contains_key(t) && !dead.contains(t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                // SAFETY: PTRACE_SEIZE and PTRACE_INTERRUPT take a tid and no memory.
                let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, 0usize) } == 0;
                if !seized {
                    let e = last_err();
                    // ESRCH: the thread ended. EPERM for a thread with an exit state: it is a
                    // zombie (ptrace attaches to no exiting task).
                    if e.raw_os_error() == Some(libc::ESRCH) || thread_dead(pid, tid) {
                        dead.insert(tid);
                        continue;
                    }
                    if let Some(tracer) = tracer_of(pid, tid) {
                        if tracer == std::process::id() {
                            return Err(StopError::Held(tid));
                        }
                        return Err(StopError::Traced(describe_pid(tracer)));
                    }
                    // Seized and exited between the two looks.
                    if thread_dead(pid, tid) {
                        dead.insert(tid);
                        continue;
                    }
                    return Err(StopError::Refused { tid, err: e });
                }
                s.threads.insert(tid, 0);
                // SAFETY: as above.
                unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) };
                match wait_stop(tid, STOP_TIMEOUT) {
                    Ok(sig) => {
                        s.threads.insert(tid, sig);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                        s.threads.remove(&tid);
                        dead.insert(tid);
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        // Still running: it cannot be detached now; it is once its interrupt
                        // stops it (the others are let go by the drop).
                        s.threads.remove(&tid);
                        if let Ok(mut l) = LINGERING.lock() {
                            l.push(tid);
                        }
                        return Err(StopError::TimedOut {
                            tid,
                            ms: STOP_TIMEOUT.as_millis(),
                        });
                    }
                    Err(e) => return Err(StopError::Io(e)),
                }
            }
        }
        if s.threads.is_empty() {
            return Err(StopError::Gone);
        }
        Ok(s)
    }

    /// The stopped threads.
    pub fn tids(&self) -> Vec<i32> {
        self.threads.keys().copied().collect()
    }

    /// A thread's registers.
    pub fn regs(&self, tid: i32) -> io::Result<libc::user_regs_struct> {
        // SAFETY: user_regs_struct is plain data; all-zero is a valid value.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: PTRACE_GETREGS writes one user_regs_struct to the pointer, which is valid.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGS,
                tid,
                0usize,
                &mut regs as *mut libc::user_regs_struct,
            )
        };
        if r != 0 {
            return Err(last_err());
        }
        Ok(regs)
    }

    fn set_regs(&self, tid: i32, regs: &libc::user_regs_struct) -> io::Result<()> {
        // SAFETY: PTRACE_SETREGS reads one user_regs_struct from the pointer, which is valid.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGS,
                tid,
                0usize,
                regs as *const libc::user_regs_struct,
            )
        };
        if r != 0 {
            return Err(last_err());
        }
        Ok(())
    }

    /// Runs syscall `nr` with `args` in the process, at the `syscall` instruction `insn` of its
    /// memory; returns the kernel's result (a negative errno on failure).
    pub fn syscall(&mut self, insn: u64, nr: u64, args: [u64; 6]) -> io::Result<i64> {
        let tid = *self
            .threads
            .keys()
            .next()
            .ok_or_else(|| io::Error::other("no stopped thread"))?;
        if self.saved.is_none() {
            self.saved = Some((tid, self.regs(tid)?));
        }
        let Some((tid, saved)) = self.saved else {
            return Err(io::Error::other("no saved registers"));
        };
        let mut regs = saved;
        regs.rip = insn;
        regs.rax = nr;
        // No syscall restart for the injected call (the thread may have stopped inside one).
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        self.set_regs(tid, &regs)?;
        for _ in 0..8 {
            // SAFETY: PTRACE_SINGLESTEP takes a tid and a signal number (0: none).
            if unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, tid, 0usize, 0usize) } != 0 {
                return Err(last_err());
            }
            let sig = wait_stop(tid, STOP_TIMEOUT)?;
            let now = self.regs(tid)?;
            if now.rip == insn + 2 {
                return Ok(now.rax as i64);
            }
            if sig != 0 && sig != libc::SIGTRAP {
                // A signal came first: deliver it when the thread is let go.
                self.threads.insert(tid, sig);
            }
        }
        Err(io::Error::other("the injected syscall did not complete"))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some((tid, regs)) = self.saved.take() {
            let _ = self.set_regs(tid, &regs);
        }
        for (&tid, &sig) in &self.threads {
            // SAFETY: PTRACE_DETACH takes a tid and a signal number to deliver.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, sig as usize) };
        }
    }
}

/// Waits for `tid` to enter a ptrace stop; returns the signal of a signal-delivery stop (0 for an
/// interrupt or trap stop). ECHILD when the thread is gone.
fn wait_stop(tid: i32, timeout: Duration) -> io::Result<i32> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status to a valid int.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r < 0 {
            return Err(last_err());
        }
        if r == tid {
            if libc::WIFSTOPPED(status) {
                let sig = libc::WSTOPSIG(status);
                // An event stop (PTRACE_EVENT_STOP after INTERRUPT, or a group stop) carries no
                // signal to deliver; a SIGTRAP is ours (single step).
                let event = status >> 16;
                return Ok(if event != 0 || sig == libc::SIGTRAP {
                    0
                } else {
                    sig
                });
            }
            return Err(io::Error::from_raw_os_error(libc::ECHILD));
        }
        if start.elapsed() > timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "thread {tid} did not stop within {} ms (frozen or stopped?)",
                    timeout.as_millis()
                ),
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
