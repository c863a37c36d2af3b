//! How a run ends (its duration, Ctrl-C, SIGTERM, SIGHUP, or an abort), the signals that end it, and
//! the kernel deadline (the lease) that ends every fault even when the loader cannot.

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Why an experiment ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum EndReason {
    /// `--duration` elapsed.
    Duration,
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// SIGTERM (e.g. `kchaos stop`).
    Terminated,
    /// SIGHUP (the terminal went away).
    HungUp,
    /// The caller aborted (a failed probe, a budget): the text says why.
    Aborted(String),
}

impl EndReason {
    /// The signal that ended the run, as an error for the CLI's exit code; None for the other ends.
    pub fn as_signal(&self) -> Option<crate::error::EndedBySignal> {
        let (signo, name) = match self {
            EndReason::Interrupted => (libc::SIGINT, "SIGINT (Ctrl-C)"),
            EndReason::Terminated => (libc::SIGTERM, "SIGTERM"),
            EndReason::HungUp => (libc::SIGHUP, "SIGHUP"),
            EndReason::Duration | EndReason::Aborted(_) => return None,
        };
        Some(crate::error::EndedBySignal { signo, name })
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Duration => write!(f, "duration elapsed"),
            EndReason::Interrupted => write!(f, "interrupted (Ctrl-C)"),
            EndReason::Terminated => write!(f, "terminated (SIGTERM)"),
            EndReason::HungUp => write!(f, "hung up (SIGHUP)"),
            EndReason::Aborted(why) => write!(f, "aborted: {why}"),
        }
    }
}

/// Set by the signal handler itself when Ctrl-C, SIGTERM or SIGHUP arrives (see [`Signals`]).
static END_REQUESTED: AtomicBool = AtomicBool::new(false);

/// True once Ctrl-C, SIGTERM or SIGHUP arrived, even before the runtime has polled [`Signals`]: a
/// run held (SIGSTOP) and told to end by `kchaos stop` resumes with the signal pending and would
/// otherwise arm its next fault (a `kill` would signal its victims) before its loop saw the end.
pub fn end_requested() -> bool {
    END_REQUESTED.load(Ordering::SeqCst)
}

/// Ctrl-C, SIGTERM and SIGHUP, caught from the moment this exists. A command installs it first thing,
/// before it attaches anything, so a signal during setup (a `kchaos stop` right after "armed") ends
/// the run through its cleanup instead of killing the loader with the default action.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Call inside the runtime.
    pub fn install() -> std::io::Result<Self> {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the action only stores to an atomic, which is async-signal-safe; the
            // registry chains it with tokio's own handler for the same signal.
            unsafe {
                signal_hook_registry::register(sig, || END_REQUESTED.store(true, Ordering::SeqCst))
            }?;
        }
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal, as the reason it ends a run.
    pub async fn recv(&mut self) -> EndReason {
        tokio::select! {
            _ = self.interrupt.recv() => EndReason::Interrupted,
            _ = self.terminate.recv() => EndReason::Terminated,
            _ = self.hangup.recv() => EndReason::HungUp,
        }
    }
}

/// The calling thread at real-time priority (SCHED_FIFO, the lowest RT level) while it lives: the
/// runner's loop holds it while faults are on their timeline, so a fault is armed at its instant
/// instead of waiting behind the target's busy processes for a CPU (milliseconds on a loaded host,
/// tens under emulation). The loop only sleeps between instants, so it takes no CPU from anyone;
/// processes it starts (stress workers) do not inherit it (SCHED_RESET_ON_FORK). Best effort: without
/// the privilege it changes nothing.
pub struct Realtime {
    raised: bool,
}

impl Realtime {
    pub fn enter() -> Self {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: sched_setscheduler on the calling thread (0) with a valid, initialised sched_param.
        let raised = unsafe {
            libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
        } == 0;
        if !raised {
            tracing::debug!(
                "real-time priority refused ({}): arming waits for a CPU like any process",
                std::io::Error::last_os_error()
            );
        }
        Self { raised }
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        if self.raised {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in enter; back to the default policy.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Clock `id` now, in ns (negative for a realtime clock set before 1970).
pub fn clock_ns(id: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// 64 random bits from getrandom, or (where it fails) from the pid and the clock: enough to pick
/// victims or tag a run's pages, not for anything secret.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if got == 8 {
        u64::from_le_bytes(b)
    } else {
        monotonic_ns() ^ u64::from(std::process::id()) << 32
    }
}

/// How far ahead the loader arms the kernel's deadline. A loader that stops ticking (SIGSTOP, a hang)
/// stops the faults within this time even where an attachment outlives it.
pub const LEASE: Duration = Duration::from_secs(3);

/// The deadline to write now: the lease, but never past the experiment's own end.
pub fn lease_deadline_ns(now_ns: u64, end_ns: Option<u64>) -> u64 {
    let lease = now_ns + LEASE.as_nanos() as u64;
    end_ns.map_or(lease, |end| end.min(lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_never_passes_the_end() {
        assert_eq!(lease_deadline_ns(10, None), 10 + LEASE.as_nanos() as u64);
        assert_eq!(lease_deadline_ns(10, Some(20)), 20);
        assert_eq!(
            lease_deadline_ns(10, Some(u64::MAX)),
            10 + LEASE.as_nanos() as u64
        );
    }
}
