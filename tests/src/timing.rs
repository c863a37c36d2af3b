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

/// A plain CPU spinner beside a stress worker, on the worker's own algorithm: busy for `load`
/// percent of each 50 ms period, counted in CPU time the kernel gave this thread, a shortfall carried
/// over up to one period. It meets the contention the workers meet at the same moment (other
/// processes, a vCPU the host takes away, a timer that wakes it late), so the share of its demand it
/// got is what this machine let a duty-cycled spinner have in those seconds: the reference a
/// worker's shortfall is judged against.
pub struct DutySpinner {
    stop: Arc<AtomicBool>,
    load: Arc<std::sync::atomic::AtomicU64>,
    thread: JoinHandle<(f64, f64)>,
}

/// CPU time the calling thread has used, in seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

impl DutySpinner {
    /// Starts spinning at `load_pct` percent of a CPU.
    pub fn start(load_pct: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let load = Arc::new(std::sync::atomic::AtomicU64::new(load_pct.to_bits()));
        let (flag, share) = (Arc::clone(&stop), Arc::clone(&load));
        let thread = std::thread::spawn(move || {
            const PERIOD: Duration = Duration::from_millis(50);
            let period = PERIOD.as_secs_f64();
            let (mut demanded, mut carry) = (0.0, 0.0);
            let cpu0 = thread_cpu_s();
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                let used_before = thread_cpu_s();
                let pct = f64::from_bits(share.load(Ordering::Relaxed));
                let due = pct / 100.0 * period + carry;
                let budget = due.clamp(0.0, period);
                while thread_cpu_s() - used_before < budget && start.elapsed() < PERIOD {
                    let mut x = std::hint::black_box(0x9e37_79b9_7f4a_7c15_u64);
                    for _ in 0..256 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                    }
                    std::hint::black_box(x);
                }
                carry = (due - (thread_cpu_s() - used_before)).clamp(-period, period);
                if let Some(rest) = PERIOD.checked_sub(start.elapsed()) {
                    std::thread::sleep(rest);
                }
                // The demand is the load times the wall time the period took: a late wake-up
                // stretches it, as it does a worker's.
                demanded += pct / 100.0 * start.elapsed().as_secs_f64();
            }
            (demanded, thread_cpu_s() - cpu0)
        });
        Self { stop, load, thread }
    }

    /// Changes the load (a ramp's step).
    pub fn set(&self, load_pct: f64) {
        self.load.store(load_pct.to_bits(), Ordering::Relaxed);
    }

    /// Stops; the share of its demand (CPU seconds its load asked for over the wall time it ran) the
    /// kernel gave it: 1 where it got all, less where the machine could not.
    pub fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let (demanded, got) = self.thread.join().unwrap_or((1.0, 1.0));
        if demanded > 0.0 { got / demanded } else { 1.0 }
    }
}
