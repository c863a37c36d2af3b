//! `--detach`: a run in the background that its caller can wait on until it is armed.
//!
//! The caller re-executes kchaos with the same arguments plus `--ready-fd 3` (a pipe), in a session
//! of its own, stdin/stdout/stderr on /dev/null, before anything is checked or attached. The child
//! is then an ordinary run (its record, its lease, its cleanup on a signal); it says on the pipe
//! "ready" once its faults are armed, or "error" with why, and the caller returns with exit 0 or 2.
//! Once its record exists (and with it its name is known to be free) the child sends its output to
//! `<record dir>/<name>.log`, which it removes at the end unless the run failed.
//!
//! The pipe's end is the child's only link to the caller: a child that dies before writing closes
//! it, and the caller reports that with the log's path.

use std::{
    ffi::OsString,
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    },
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
};

use anyhow::{Context as _, Result};

use crate::{engine::lifecycle::Signals, error::BadInput};

/// The descriptor the child finds its pipe on.
const CHILD_FD: i32 = 3;

/// The child's end of the pipe and its log, once it has them.
struct Child {
    pipe: Option<fs::File>,
    log: Option<PathBuf>,
    /// Where its metrics are served (the port `--metrics ADDR:0` got), for the caller to print.
    metrics: Option<std::net::SocketAddr>,
}

static CHILD: Mutex<Child> = Mutex::new(Child {
    pipe: None,
    log: None,
    metrics: None,
});

fn child() -> std::sync::MutexGuard<'static, Child> {
    CHILD.lock().unwrap_or_else(|e| e.into_inner())
}

/// In the caller: starts this command again in the background and waits until it is armed (Ok) or
/// has failed (bad input carrying the child's reason: exit 2).
/// `extra` are more arguments for the child (a monkey's seed, so it draws what this one printed). A
/// Ctrl-C or SIGTERM while waiting ends the background run too (SIGTERM: its cleanup).
pub async fn launch(extra: &[String], signals: &mut Signals) -> Result<()> {
    let exe = std::env::current_exe().context("finding the kchaos executable")?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Right after the subcommand: `kchaos net --ready-fd 3 ...`, clear of any trailing value.
    let at = 1.min(args.len());
    args.splice(
        at..at,
        std::iter::once(format!("--ready-fd={CHILD_FD}"))
            .chain(extra.iter().cloned())
            .map(OsString::from),
    );
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("making the readiness pipe");
    }
    // SAFETY: both descriptors were just returned by pipe2 and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_fd = write.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (setsid, dup2, fcntl) on
    // descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if write_fd == CHILD_FD {
                // dup2 onto itself changes nothing: clear close-on-exec by hand.
                if libc::fcntl(CHILD_FD, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(write_fd, CHILD_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut spawned = cmd
        .spawn()
        .with_context(|| format!("starting {} in the background", exe.display()))?;
    // Only the child holds the writing end now: its end (exit, crash) is the pipe's end.
    drop(write);
    let reader = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(fs::File::from(read))
            .read_line(&mut line)
            .map(|_| line)
    });
    let line = tokio::select! {
        read = reader => read
            .context("waiting for the background run")?
            .context("reading from the background run")?,
        reason = signals.recv() => {
            // SAFETY: kill(2) on our own child, not yet reaped (so its pid is still its own).
            unsafe { libc::kill(spawned.id() as i32, libc::SIGTERM) };
            let _ = spawned.wait();
            let ended = anyhow::anyhow!(
                "{reason} while waiting for the background run to arm: it was ended"
            );
            return Err(match reason.as_signal() {
                Some(signal) => ended.context(signal),
                None => ended,
            });
        }
    };
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("ready ") {
        println!("{rest}");
        // The child goes on alone; it is reaped by init once this process exits.
        return Ok(());
    }
    if let Some(why) = line.strip_prefix("error ") {
        let _ = spawned.wait();
        return Err(BadInput::new(why.replace("\\n", "\n")).into());
    }
    let status = spawned.wait().context("waiting for the background run")?;
    Err(BadInput::new(format!(
        "the background run ended before its faults were armed ({status}), without saying why; \
         run the same command without --detach to see its output"
    ))
    .into())
}

/// In the detached child: takes the pipe the caller handed over. Call first thing, before anything
/// is started (the descriptor is made close-on-exec here, so no process the run starts holds it).
pub fn adopt(ready_fd: Option<i32>) -> Result<(), BadInput> {
    let Some(fd) = ready_fd else {
        return Ok(());
    };
    // SAFETY: fstat writes into the zeroed struct it is given; an invalid fd is an error return.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if fd < 0
        || unsafe { libc::fstat(fd, &mut st) } != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFIFO
    {
        return Err(BadInput::new(format!(
            "--ready-fd {fd}: not a pipe (--ready-fd is set by --detach, not by hand)"
        )));
    }
    // SAFETY: fcntl on a descriptor fstat just found open.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open (checked above) and this process's alone from here on: the
    // caller handed it over for this purpose and nothing else here uses it.
    child().pipe = Some(unsafe { fs::File::from_raw_fd(fd) });
    Ok(())
}

/// True in a detached run.
pub fn is_detached() -> bool {
    let c = child();
    c.pipe.is_some() || c.log.is_some()
}

/// In the detached child, once its record exists (its name is its own): stdout and stderr go to
/// `<dir>/<name>.log` (0600) from here on.
pub fn redirect_output(dir: &std::path::Path, name: &str) -> Result<()> {
    let mut c = child();
    if c.pipe.is_none() {
        return Ok(());
    }
    let path = dir.join(format!("{name}.log"));
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening the log {}", path.display()))?;
    let _ = io::stdout().flush();
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 of an open file onto the standard descriptors.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error()).context("sending output to the log");
        }
    }
    c.log = Some(path);
    Ok(())
}

/// In the detached child: where its metrics are served, for the line the caller prints.
pub fn note_metrics(addr: std::net::SocketAddr) {
    child().metrics = Some(addr);
}

/// In the detached child, when every fault is armed: tells the caller, which prints `line` and
/// returns. Does nothing in a foreground run or when said already.
pub fn announce_ready(name: &str) {
    let mut c = child();
    let mut log = c
        .metrics
        .map(|a| format!("; metrics: http://{a}/metrics"))
        .unwrap_or_default();
    if let Some(p) = &c.log {
        log += &format!("; output: {}", p.display());
    }
    if let Some(mut pipe) = c.pipe.take() {
        let _ = writeln!(
            pipe,
            "ready kchaos: '{name}' (pid {}) armed, running in the background; `kchaos status` \
             shows it, `kchaos stop --name {name}` ends it{log}",
            std::process::id()
        );
    }
}

/// In the detached child, as it exits: tells a caller still waiting why it failed; removes the log
/// of a run that ended well (to its end, or ended by a signal: `kchaos stop`).
pub fn finish(result: &Result<()>) {
    let mut c = child();
    if let (Some(mut pipe), Err(e)) = (c.pipe.take(), result) {
        let why = format!("{e:#}").replace('\n', "\\n");
        let _ = writeln!(pipe, "error {why}");
    }
    let failed = result
        .as_ref()
        .is_err_and(|e| crate::error::signal_exit_code(e).is_none());
    if !failed && let Some(log) = c.log.take() {
        let _ = fs::remove_file(log);
        crate::engine::journal::remove_default_run_dir_if_empty();
    }
}
