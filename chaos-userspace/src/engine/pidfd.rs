//! Signalling a process through a pidfd (pidfd_open + pidfd_send_signal, Linux 5.3+), so that a pid
//! checked and then signalled is the process checked: the pidfd is opened first and pins that
//! process, the check runs after it, and a signal through it reaches that process or no one (ESRCH
//! once it has ended), never another process that was given the pid since.
//!
//! Kernels without pidfds (ENOSYS) get kill(2) after the same check, as before.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// A pidfd: a handle on one process, not on its pid.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// A pidfd of `pid` as it is now. ESRCH when there is no such process; ENOSYS on kernels before
    /// 5.3.
    pub fn open(pid: u32) -> io::Result<Self> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd, open and ours alone.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sends `signal` to the process (ESRCH once it has ended).
    pub fn send_signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no siginfo (NULL: as
        // kill(2) would send it) and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `within` for the process to end; true when it has.
    pub fn wait_exit(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: poll on one pollfd that lives on this stack frame.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r > 0 {
                return true;
            }
            if r == 0 || left.is_zero() {
                return false;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return false;
            }
        }
    }
}

/// What [`signal_if`] did.
#[derive(Debug)]
pub enum Signalled {
    /// The process passed the check and was sent the signal.
    Sent,
    /// There was no such process, or it ended before the signal.
    Gone,
    /// The process at that pid failed the check (another process now): not signalled.
    NotIt,
}

/// Sends `signal` to `pid` only when `is_it` (run after the pid is pinned) says it is the process
/// meant. Errors other than the process's end are returned.
pub fn signal_if(pid: u32, signal: i32, is_it: impl FnOnce() -> bool) -> io::Result<Signalled> {
    let gone = |e: &io::Error| e.raw_os_error() == Some(libc::ESRCH);
    match Pidfd::open(pid) {
        Ok(fd) => {
            if !is_it() {
                return Ok(Signalled::NotIt);
            }
            match fd.send_signal(signal) {
                Ok(()) => Ok(Signalled::Sent),
                Err(e) if gone(&e) => Ok(Signalled::Gone),
                Err(e) => Err(e),
            }
        }
        Err(e) if gone(&e) => Ok(Signalled::Gone),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            if !is_it() {
                return Ok(Signalled::NotIt);
            }
            let pid = libc::pid_t::try_from(pid)
                .map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
            // SAFETY: plain kill(2), on a pid checked just above (no pidfds on this kernel).
            if unsafe { libc::kill(pid, signal) } == 0 {
                Ok(Signalled::Sent)
            } else {
                match io::Error::last_os_error() {
                    e if gone(&e) => Ok(Signalled::Gone),
                    e => Err(e),
                }
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_the_process_checked_and_sees_it_end() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let fd = Pidfd::open(pid).unwrap();
        assert!(!fd.wait_exit(Duration::from_millis(50)));
        assert!(matches!(
            signal_if(pid, libc::SIGKILL, || false).unwrap(),
            Signalled::NotIt
        ));
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "signalled though not it"
        );
        assert!(matches!(
            signal_if(pid, libc::SIGKILL, || true).unwrap(),
            Signalled::Sent
        ));
        assert!(fd.wait_exit(Duration::from_secs(5)));
        child.wait().unwrap();
        // Reaped: the pidfd still names that process, and the signal reaches no one.
        assert_eq!(
            fd.send_signal(libc::SIGKILL).unwrap_err().raw_os_error(),
            Some(libc::ESRCH)
        );
    }
}
