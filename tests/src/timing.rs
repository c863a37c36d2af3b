//! The environment's own lateness, measured beside kchaos in the same rounds.
//!
//! Under emulation (the VM suite, TCG) the guest's timers fire when qemu gets a host CPU: a busy
//! host makes every timer late, fq's and netem's alike, by an amount no fixed number of
//! milliseconds covers. A timing test therefore runs a plain timer next to its measurement and
//! judges kchaos's error against that timer's lateness in the same interval (plus a margin derived
//! in the test), not against a constant.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// A thread that sleeps `period` again and again until finished, recording by how much each
/// wake-up came after the time it asked for (µs): the lateness of a plain timer (an hrtimer, as
/// fq's watchdog and netem's are, plus the wake-up of a thread, as every echo's is).
pub struct TimerLateness {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<f64>>,
}

impl TimerLateness {
    pub fn start(period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut late = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                std::thread::sleep(period);
                late.push(t.elapsed().saturating_sub(period).as_secs_f64() * 1e6);
            }
            late
        });
        Self { stop, thread }
    }

    /// The latenesses (µs), sorted.
    pub fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut late = self.thread.join().unwrap_or_default();
        late.sort_by(f64::total_cmp);
        late
    }
}

/// Runs `measure` with a [`TimerLateness`] of period 2 ms beside it: its result and the sorted
/// latenesses (µs) of the timer over the same interval.
pub fn with_timer_lateness<T>(measure: impl FnOnce() -> T) -> (T, Vec<f64>) {
    let timer = TimerLateness::start(Duration::from_millis(2));
    let out = measure();
    (out, timer.finish())
}

/// The time (ms) at least one task in cgroup `cg` waited for `resource` ("cpu", "io", "memory"):
/// its `RESOURCE.pressure` "some" total, the kernel's own count of the time the machine did not have
/// what the cgroup's tasks were ready to use. None where the kernel keeps no pressure (CONFIG_PSI
/// off, or psi=0).
pub fn pressure_ms(cg: &std::path::Path, resource: &str) -> Option<f64> {
    let text = std::fs::read_to_string(cg.join(format!("{resource}.pressure"))).ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    let total = some
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total="))?;
    Some(total.parse::<f64>().ok()? / 1e3)
}

/// Time (ms) the hypervisor ran something else on this machine's vCPUs while they had work (steal
/// in /proc/stat, all CPUs): time that counts as neither a task's CPU time nor its waiting.
pub fn stolen_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let steal = stat
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    steal / hz * 1e3
}

/// The bound for a span of kchaos's own short work (a detach, a step's turn), judged on a machine
/// that may be busy: `goal_ms`, what it takes on an idle machine, plus the longest a plain timer's
/// wake-up beside it waited in the same seconds (`late`, sorted, µs, from [`TimerLateness`]).
/// Not statistical: the work is one wake-up followed by less than a scheduler's slice of system
/// calls, so it waits for a CPU once, and no longer than a wake-up on this machine then waited.
pub fn goal_plus_lateness(goal_ms: f64, late: &[f64]) -> f64 {
    goal_ms + late.last().copied().unwrap_or(0.0) / 1e3
}
