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
                // Its interrupt's stop (a signal-delivery stop passes its signal on).
                let sig = if sig & 0x80 != 0 { 0 } else { sig };
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
    /// The thread that runs injected syscalls: its registers when it stopped, and whether it has
    /// run since (then it sits in a syscall stop, and goes on with [`resolved`] registers).
    saved: Option<(i32, libc::user_regs_struct, bool)>,
    /// Where the stub is written, and the bytes to put back there when done.
    scratch: Option<(File, u64, Vec<u8>)>,
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
            scratch: None,
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
                // TRACESYSGOOD: a syscall stop reports SIGTRAP|0x80, told apart from a signal.
                let seized = unsafe {
                    libc::ptrace(
                        libc::PTRACE_SEIZE,
                        tid,
                        0usize,
                        libc::PTRACE_O_TRACESYSGOOD as usize,
                    )
                } == 0;
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

    /// Runs syscall `nr` with `args` in the process and returns the kernel's result (a negative
    /// errno on failure), safely at every instant even if kchaos dies meanwhile.
    ///
    /// The call runs from a stub written at `stub_at` (in the vDSO's section header table, bytes no
    /// program executes or needs once loaded; `original` is what is there, put back on drop): the
    /// `syscall` instruction, then the thread's own registers as immediates and a jump to where the
    /// thread was going ([`resolved`]: an interrupted syscall restarted as the kernel would). The
    /// call is stepped with PTRACE_SYSCALL, whose flag the kernel clears when the tracer dies
    /// (single-stepping's trap flag it does not: the thread would die of SIGTRAP). So a kchaos killed
    /// at any point leaves the thread either where it was or running the stub, which makes the call
    /// (a page mapped or unmapped, nothing else) and goes on exactly where it would have.
    pub fn syscall(
        &mut self,
        mem: &File,
        stub_at: u64,
        original: &[u8],
        nr: u64,
        args: [u64; 6],
    ) -> io::Result<i64> {
        let tid = *self
            .threads
            .keys()
            .next()
            .ok_or_else(|| io::Error::other("no stopped thread"))?;
        if self.saved.is_none() {
            self.saved = Some((tid, self.regs(tid)?, false));
        }
        let Some((tid, saved, _)) = self.saved else {
            return Err(io::Error::other("no saved registers"));
        };
        if self.scratch.is_none() {
            self.scratch = Some((mem.try_clone()?, stub_at, original.to_vec()));
        }
        write_at(mem, stub_at, &stub(&saved))?;
        let mut regs = saved;
        regs.rip = stub_at;
        regs.rax = nr;
        // No syscall restart for the injected call (the thread may have stopped inside one): the
        // stub makes the restart itself.
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        self.set_regs(tid, &regs)?;
        let mut syscall_stops = 0;
        for _ in 0..8 {
            // SAFETY: PTRACE_SYSCALL takes a tid and a signal number (0: none).
            if unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0usize, 0usize) } != 0 {
                return Err(last_err());
            }
            self.saved = Some((tid, saved, true));
            let sig = wait_stop(tid, STOP_TIMEOUT)?;
            if sig == libc::SIGTRAP | 0x80 {
                syscall_stops += 1;
                if syscall_stops == 2 {
                    let now = self.regs(tid)?;
                    if now.rip != stub_at + 2 {
                        return Err(io::Error::other("the injected syscall stopped elsewhere"));
                    }
                    return Ok(now.rax as i64);
                }
            } else if sig != 0 {
                // A signal came first: deliver it when the thread is let go.
                self.threads.insert(tid, sig);
            }
        }
        Err(io::Error::other("the injected syscall did not complete"))
    }
}

/// Where a thread stopped at `saved` goes on, as (rip, rax): an interrupted syscall (orig_rax ≥ 0,
/// rax one of the kernel's restart codes) is restarted as the kernel does when no handler runs
/// (rip back over the 2-byte `syscall`, rax the call again, or restart_syscall).
pub fn resolved(saved: &libc::user_regs_struct) -> (u64, u64) {
    const ERESTARTSYS: i64 = 512;
    const ERESTARTNOINTR: i64 = 513;
    const ERESTARTNOHAND: i64 = 514;
    const ERESTART_RESTARTBLOCK: i64 = 516;
    if (saved.orig_rax as i64) < 0 {
        return (saved.rip, saved.rax);
    }
    match (saved.rax as i64).wrapping_neg() {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => (saved.rip - 2, saved.orig_rax),
        ERESTART_RESTARTBLOCK => (saved.rip - 2, libc::SYS_restart_syscall as u64),
        _ => (saved.rip, saved.rax),
    }
}

/// The stub's length at most.
pub const STUB_LEN: usize = 112;

/// The stub for a thread stopped at `saved`: `syscall`, then every register the call or
/// its setup changed back to the thread's own, then a jump to where it goes on. (The flags come back
/// by themselves: `syscall` saves them in r11 and the kernel's return restores them from it.)
pub fn stub(saved: &libc::user_regs_struct) -> Vec<u8> {
    let (rip, rax) = resolved(saved);
    let mut out = vec![0x0f, 0x05];
    for (prefix, op, value) in [
        (0x48u8, 0xb8u8, rax),
        (0x48, 0xb9, saved.rcx),
        (0x48, 0xba, saved.rdx),
        (0x48, 0xbe, saved.rsi),
        (0x48, 0xbf, saved.rdi),
        (0x49, 0xb8, saved.r8),
        (0x49, 0xb9, saved.r9),
        (0x49, 0xba, saved.r10),
        (0x49, 0xbb, saved.r11),
    ] {
        // mov r64, imm64
        out.extend_from_slice(&[prefix, op]);
        out.extend_from_slice(&value.to_le_bytes());
    }
    // jmp qword [rip+0]; the address
    out.extend_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
    out.extend_from_slice(&rip.to_le_bytes());
    out
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some((tid, regs, resumed)) = self.saved.take() {
            let mut regs = regs;
            if resumed {
                // In a syscall stop now, where the kernel restarts nothing: go on as the stub would.
                let (rip, rax) = resolved(&regs);
                regs.rip = rip;
                regs.rax = rax;
                regs.orig_rax = u64::MAX;
            }
            let _ = self.set_regs(tid, &regs);
        }
        // No thread is in the stub any more: the bytes it covered come back.
        if let Some((mem, at, original)) = self.scratch.take() {
            let _ = write_at(&mem, at, &original);
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
