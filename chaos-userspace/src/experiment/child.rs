//! The commands of probes and rollbacks, bounded: each runs in a session (and process group) of its
//! own, so the whole group is killed at its timeout, when it is cancelled (the run ends, kchaos got
//! SIGTERM) and when its first process exits (nothing it started in the background outlives it); its
//! output is read with a deadline, never until EOF (a background process may hold the pipe), and kept
//! to [`OUTPUT_CAP`] a stream, the rest counted.

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::{
        fd::AsRawFd as _,
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// The most output kept of each stream (the end of it); the bytes before are counted.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// How long a timed-out or cancelled group has between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(1);

/// How long output is still read after the first process exited or the group was killed: what a
/// process outside the group (one that made its own session) writes later is not waited for.
const DRAIN: Duration = Duration::from_millis(200);

/// How a bounded command ended.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code (128 + N for a signal N), or None if it was killed at its timeout or cancelled.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
    /// stdout then stderr (when captured), each its last [`OUTPUT_CAP`] bytes.
    pub output: String,
    /// How many bytes came before what `output` keeps (both streams).
    pub dropped: u64,
}

/// The last `OUTPUT_CAP` bytes of a stream, and how many came before them.
#[derive(Default)]
struct Tail {
    kept: Vec<u8>,
    dropped: u64,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        if self.kept.len() > 2 * OUTPUT_CAP {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.kept.len() > OUTPUT_CAP {
            let cut = self.kept.len() - OUTPUT_CAP;
            self.dropped += cut as u64;
            self.kept.drain(..cut);
        }
    }

    fn text(mut self) -> (String, u64) {
        self.trim();
        (
            String::from_utf8_lossy(&self.kept).into_owned(),
            self.dropped,
        )
    }
}

/// Sends `signal` to the process group `pgid` (a negative pid to kill(2)).
fn kill_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
        // The group's leader is our child, not yet reaped, so its id is not anyone else's.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// True once the child `pid` has exited, leaving it unreaped (a zombie keeps its id, and so its
/// process group's, from being reused while we kill what is left of the group).
fn exited(pid: i32) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with WNOWAIT only reads its state into `info`.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // An error (no such child) counts as exited.
    // SAFETY: si_pid is set by waitid when a child changed state, and zero otherwise (zeroed above).
    r != 0 || unsafe { info.si_pid() } != 0
}

/// Reads what is available on the non-blocking `pipes` into `tails`, waiting at most `wait` for
/// some; a pipe at EOF or in error is dropped.
fn pump(pipes: &mut Vec<(usize, std::process::ChildStdout)>, tails: &mut [Tail], wait: Duration) {
    if pipes.is_empty() {
        std::thread::sleep(wait);
        return;
    }
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .map(|(_, p)| libc::pollfd {
            fd: p.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: fds is a valid array of pollfd of the length given.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    let mut closed = Vec::new();
    for (k, fd) in fds.iter().enumerate() {
        if fd.revents == 0 {
            continue;
        }
        let (stream, pipe) = &mut pipes[k];
        // Read what is there now (bounded per call, so one chatty stream cannot hold the loop).
        for _ in 0..16 {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    closed.push(k);
                    break;
                }
                Ok(n) => tails[*stream].push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed.push(k);
                    break;
                }
            }
        }
    }
    for k in closed.into_iter().rev() {
        pipes.remove(k);
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL touch only its flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Runs `argv` with `env` added, in a session of its own, for at most `timeout` (then its group gets
/// SIGTERM, and SIGKILL after [`GRACE`]) or until `cancel` is set (the same). With `capture`, stdout
/// and stderr are kept (the end of each, [`OUTPUT_CAP`] bytes); otherwise they go to /dev/null.
/// Whatever the command left running in its group when it ended is killed. Returns an error only if
/// the command could not be started.
pub fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    capture: bool,
    cancel: Option<&AtomicBool>,
) -> Result<Outcome, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let out = || {
        if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out());
    // SAFETY: the closure runs in the child between fork and exec and calls only setsid(2) and
    // prctl(2), which are async-signal-safe and touch no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // Its own session and process group, so the whole group can be killed.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If kchaos dies without killing the group, the command itself goes with it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting {program}: {e}"))?;
    let pid = child.id() as i32;
    let mut pipes = Vec::new();
    if let Some(o) = child.stdout.take() {
        set_nonblocking(o.as_raw_fd());
        pipes.push((0, o));
    }
    if let Some(e) = child.stderr.take() {
        set_nonblocking(e.as_raw_fd());
        // ChildStderr and ChildStdout are both a pipe's read end: read them the same way.
        let fd: std::os::fd::OwnedFd = e.into();
        pipes.push((1, std::process::ChildStdout::from(fd)));
    }
    let mut tails = [Tail::default(), Tail::default()];
    let start = Instant::now();
    let mut timed_out = false;
    let mut cancelled = false;
    let tick = Duration::from_millis(10);
    while !exited(pid) {
        if start.elapsed() >= timeout {
            timed_out = true;
        } else if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            cancelled = true;
        }
        if timed_out || cancelled {
            kill_group(pid, libc::SIGTERM);
            let grace = Instant::now() + GRACE;
            while !exited(pid) && Instant::now() < grace {
                pump(&mut pipes, &mut tails, tick);
            }
            break;
        }
        pump(&mut pipes, &mut tails, tick);
    }
    // Whatever is left in the group (background processes, or all of it after the grace) goes now;
    // the leader is still a zombie, so the group's id cannot have been reused.
    kill_group(pid, libc::SIGKILL);
    let status = child.wait().ok();
    let drain = Instant::now() + DRAIN;
    while !pipes.is_empty() && Instant::now() < drain {
        pump(&mut pipes, &mut tails, tick);
    }
    let code = match status {
        Some(s) if !timed_out && !cancelled => s.code().or_else(|| s.signal().map(|n| 128 + n)),
        _ => None,
    };
    let [out_tail, err_tail] = tails;
    let (mut output, dropped_out) = out_tail.text();
    let (err, dropped_err) = err_tail.text();
    output.push_str(&err);
    Ok(Outcome {
        code,
        timed_out,
        cancelled,
        output,
        dropped: dropped_out + dropped_err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn a_background_process_is_killed_and_does_not_hold_the_run() {
        let marker = format!("kchaos-child-test-{}", std::process::id());
        let start = Instant::now();
        let o = run(
            &sh(&format!("(sleep 1000; : {marker}) & echo x")),
            &BTreeMap::new(),
            Duration::from_secs(5),
            true,
            None,
        )
        .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(o.code, Some(0));
        assert_eq!(o.output, "x\n");
        let left = || {
            let out = Command::new("pgrep")
                .args(["-f", &marker])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !left().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(left(), "", "the background process outlived its command");
    }

    #[test]
    fn output_is_capped_and_the_rest_counted() {
        let o = run(
            &sh("head -c 1000000 /dev/zero | tr '\\0' a"),
            &BTreeMap::new(),
            Duration::from_secs(10),
            true,
            None,
        )
        .unwrap();
        assert_eq!(o.code, Some(0));
        assert_eq!(o.dropped, (1_000_000 - OUTPUT_CAP) as u64);
        assert_eq!(o.output, "a".repeat(OUTPUT_CAP));
    }

    #[test]
    fn a_timeout_kills_the_group_and_a_cancel_too() {
        let start = Instant::now();
        let o = run(
            &sh("trap '' TERM; sleep 1000"),
            &BTreeMap::new(),
            Duration::from_millis(200),
            false,
            None,
        )
        .unwrap();
        assert!(o.timed_out && o.code.is_none());
        assert!(start.elapsed() < GRACE + Duration::from_secs(1));
        let cancel = AtomicBool::new(true);
        let o = run(
            &sh("sleep 1000"),
            &BTreeMap::new(),
            Duration::from_secs(100),
            false,
            Some(&cancel),
        )
        .unwrap();
        assert!(o.cancelled && o.code.is_none());
    }
}
