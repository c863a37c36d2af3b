//! One stress worker: the hidden `kchaos stress-worker`, a child of the loader re-executed from
//! /proc/self/exe. It joins the target cgroup before anything else, dies with the loader, and reports
//! what it holds as JSON lines on stdout (`WorkerStatus`) until SIGTERM ends it.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::FileExt as _,
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    limits::IO_FILE_WRAP,
    ramp::{self, Ramp},
};
use crate::{engine::cgroup, engine::fds, engine::lifecycle};

/// `kchaos stress-worker`: filled in by the loader, never by users.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The cgroup to join before doing anything else.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// Cgroup v1 directories to join too, right after the v2 one (hybrid hosts keep the container's
    /// limits there).
    #[arg(long = "v1-cgroup")]
    pub v1_cgroups: Vec<PathBuf>,
    /// The loader's pid: a worker whose parent is already someone else exits at once.
    #[arg(long)]
    pub parent: u32,
    /// The loader's start, CLOCK_MONOTONIC ns: the ramp counts from it, in every worker alike.
    #[arg(long)]
    pub start_ns: u64,
    /// Length of the ramp in ns (0: none).
    #[arg(long, default_value_t = 0)]
    pub ramp_ns: u64,
    #[command(subcommand)]
    pub kind: WorkerKind,
}

/// What one worker does.
#[derive(Clone, Debug, PartialEq, clap::Subcommand, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerKind {
    /// Keep one CPU busy for `load` percent of the time.
    Cpu {
        #[arg(long)]
        load: f64,
    },
    /// Allocate, touch and hold `bytes`.
    Memory {
        #[arg(long)]
        bytes: u64,
    },
    /// Write and fsync `rate` bytes per second into a file in `dir`.
    Io {
        #[arg(long)]
        rate: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Open and hold `count` file descriptors.
    Fds {
        #[arg(long)]
        count: u64,
    },
}

impl WorkerKind {
    /// The command-line words that make this kind again.
    pub fn to_args(&self) -> Vec<OsString> {
        let words: Vec<OsString> = match self {
            WorkerKind::Cpu { load } => {
                vec!["cpu".into(), "--load".into(), load.to_string().into()]
            }
            WorkerKind::Memory { bytes } => {
                vec!["memory".into(), "--bytes".into(), bytes.to_string().into()]
            }
            WorkerKind::Io { rate, dir } => vec![
                "io".into(),
                "--rate".into(),
                rate.to_string().into(),
                "--dir".into(),
                dir.clone().into(),
            ],
            WorkerKind::Fds { count } => {
                vec!["fds".into(), "--count".into(), count.to_string().into()]
            }
        };
        words
    }

    pub fn name(&self) -> &'static str {
        match self {
            WorkerKind::Cpu { .. } => "cpu",
            WorkerKind::Memory { .. } => "memory",
            WorkerKind::Io { .. } => "io",
            WorkerKind::Fds { .. } => "fds",
        }
    }
}

/// What a worker tells the loader, one JSON line at a time (the newest line is what counts).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerStatus {
    /// In the cgroup, bound to the loader, about to start the load.
    pub ready: bool,
    /// Memory worker: bytes allocated and touched so far.
    pub memory_touched: u64,
    /// Io worker: bytes written and fsynced (counted when fsync returned).
    pub bytes_written: u64,
    pub fsyncs: u64,
    /// Fds worker: descriptors it holds open, and the RLIMIT_NOFILE it runs under.
    pub fds_open: u64,
    pub fd_limit: u64,
    /// Why the worker holds less than asked (an open or allocation failed), if it does.
    pub stopped_short: Option<String>,
    /// The last line: the worker is exiting.
    pub done: bool,
}

/// The loader ends a worker with SIGTERM; the worker finishes its step and reports a last time.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// How often the status goes to the loader (its live line is once a second).
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// Sends statuses to the loader; a failed write means the loader is gone, and so should the worker be.
struct Reporter {
    last: Option<Instant>,
}

impl Reporter {
    fn send(&mut self, status: &WorkerStatus) -> io::Result<()> {
        let mut line = serde_json::to_string(status)?;
        line.push('\n');
        let mut out = io::stdout().lock();
        out.write_all(line.as_bytes())?;
        out.flush()?;
        self.last = Some(Instant::now());
        Ok(())
    }

    fn maybe(&mut self, status: &WorkerStatus) -> io::Result<()> {
        if self.last.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            self.send(status)?;
        }
        Ok(())
    }
}

/// The ramp as seen from this worker: shared start, shared steps.
struct RampClock {
    start_ns: u64,
    ramp: Option<Ramp>,
}

impl RampClock {
    fn fraction(&self) -> f64 {
        let elapsed = lifecycle::monotonic_ns().saturating_sub(self.start_ns);
        ramp::fraction(self.ramp, Duration::from_nanos(elapsed))
    }
}

/// Runs the worker until SIGTERM (or the loader's death, which kills it).
pub fn run(args: &WorkerArgs) -> Result<()> {
    // First of all, so that everything this worker allocates and burns is the cgroup's.
    cgroup::add_process(&args.cgroup, std::process::id())
        .with_context(|| format!("stress worker: joining {}", args.cgroup.display()))?;
    for dir in &args.v1_cgroups {
        cgroup::add_process(dir, std::process::id())
            .with_context(|| format!("stress worker: joining {}", dir.display()))?;
    }
    die_with_loader(args.parent).context("stress worker")?;
    name_self(&args.kind);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let clock = RampClock {
        start_ns: args.start_ns,
        ramp: Ramp::new(Some(Duration::from_nanos(args.ramp_ns))),
    };
    let mut reporter = Reporter { last: None };
    let mut status = WorkerStatus {
        ready: true,
        ..WorkerStatus::default()
    };
    reporter.send(&status)?;
    let result = match &args.kind {
        WorkerKind::Cpu { load } => {
            let load = std::sync::Arc::new(AtomicU64::new(load.to_bits()));
            follow_load_changes(load.clone());
            cpu(&load, &clock);
            Ok(())
        }
        WorkerKind::Memory { bytes } => memory(*bytes, &clock, &mut status, &mut reporter),
        WorkerKind::Io { rate, dir } => io_write(*rate, dir, &clock, &mut status, &mut reporter),
        WorkerKind::Fds { count } => fds(*count, &clock, &mut status, &mut reporter),
    };
    status.done = true;
    // The loader may be gone already; the last line is best effort.
    let _ = reporter.send(&status);
    result
}

/// Makes the kernel SIGKILL this worker when the loader dies, however it dies.
fn die_with_loader(parent: u32) -> io::Result<()> {
    // The loader set this between fork and exec too; setting it here keeps the worker correct when
    // started some other way.
    // SAFETY: PR_SET_PDEATHSIG takes a signal number, no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // A loader that died before the line above left no one to send the signal: check by hand.
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    if ppid as u32 != parent {
        return Err(io::Error::other(format!(
            "the loader (pid {parent}) is gone; not starting"
        )));
    }
    Ok(())
}

/// "kchaos-cpu" etc. in top and ps, instead of "exe" (the worker runs as /proc/self/exe).
fn name_self(kind: &WorkerKind) {
    let name = match kind {
        WorkerKind::Cpu { .. } => c"kchaos-cpu",
        WorkerKind::Memory { .. } => c"kchaos-memory",
        WorkerKind::Io { .. } => c"kchaos-io",
        WorkerKind::Fds { .. } => c"kchaos-fds",
    };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes; these are.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong) };
}

/// The word before a new load on a CPU worker's stdin: "load 42.5".
pub const CONTROL_LOAD: &str = "load";

/// Reads new loads from stdin on a thread (the loader's pipe; EOF when it has nothing more to say).
fn follow_load_changes(load: std::sync::Arc<AtomicU64>) {
    std::thread::spawn(move || {
        for line in io::stdin().lines().map_while(Result::ok) {
            let mut words = line.split_whitespace();
            if words.next() == Some(CONTROL_LOAD)
                && let Some(Ok(pct)) = words.next().map(str::parse::<f64>)
                && (0.0..=100.0).contains(&pct)
            {
                load.store(pct.to_bits(), Ordering::Relaxed);
            }
        }
    });
}

/// The length of one busy/sleep cycle.
const CPU_PERIOD: Duration = Duration::from_millis(50);

/// CPU time this process has used, in seconds (the kernel's count, the same /proc/PID/stat shows).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Busy for `load` percent (it may change while running) of each period, measured in CPU time the kernel gave this process (not
/// wall time), so a worker that is preempted makes up for it; what it could not make up within a period
/// carries over, bounded to one period so a long starvation does not end in a long burst.
fn cpu(load: &AtomicU64, clock: &RampClock) {
    let period = CPU_PERIOD.as_secs_f64();
    let mut carry = 0.0;
    while !stopping() {
        let start = Instant::now();
        let used_before = cpu_seconds();
        let load_pct = f64::from_bits(load.load(Ordering::Relaxed));
        let due = load_pct / 100.0 * clock.fraction() * period + carry;
        let budget = due.clamp(0.0, period);
        while cpu_seconds() - used_before < budget && start.elapsed() < CPU_PERIOD {
            spin();
        }
        carry = (due - (cpu_seconds() - used_before)).clamp(-period, period);
        if let Some(rest) = CPU_PERIOD.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// A few microseconds of arithmetic between two looks at the clock.
fn spin() {
    let mut x = std::hint::black_box(0x9e37_79b9_7f4a_7c15_u64);
    for _ in 0..256 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Writes one byte into each page of [from, to): the kernel backs a page only once it is written.
    fn touch(&mut self, from: usize, to: usize, page: usize) {
        for offset in (from..to.min(self.len)).step_by(page) {
            // SAFETY: offset < len, inside the mapping, which is readable and writable.
            unsafe { std::ptr::write_volatile(self.ptr.add(offset), 0xa5) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 { page as usize } else { 4096 }
}

/// Touches (at most) this much between two looks at the stop flag and the status.
const TOUCH_STEP: usize = 64 << 20;

fn memory(
    bytes: u64,
    clock: &RampClock,
    status: &mut WorkerStatus,
    reporter: &mut Reporter,
) -> Result<()> {
    let page = page_size();
    let len = usize::try_from(bytes)
        .context("memory size does not fit the address space")?
        .div_ceil(page)
        * page;
    let mut mapping =
        Mapping::new(len).with_context(|| format!("allocating {}", super::format_size(bytes)))?;
    let mut touched = 0usize;
    while !stopping() {
        let want = ((len as f64 * clock.fraction()) as usize).min(len) / page * page;
        while touched < want && !stopping() {
            let to = (touched + TOUCH_STEP).min(want);
            mapping.touch(touched, to, page);
            touched = to;
            status.memory_touched = touched as u64;
            reporter.maybe(status)?;
        }
        reporter.maybe(status)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The write size for a rate: about 1/20 s of it, a power of two from 512 B to 1 MiB (so writes tile
/// the wrapping file exactly).
fn io_chunk(rate: u64) -> u64 {
    let about = (rate / 20).clamp(512, 1 << 20);
    1 << (63 - about.leading_zeros())
}

/// Bytes that do not compress or dedupe, so the file system writes all of them.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(std::process::id());
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn io_write(
    rate: u64,
    dir: &std::path::Path,
    clock: &RampClock,
    status: &mut WorkerStatus,
    reporter: &mut Reporter,
) -> Result<()> {
    let path = dir.join(format!("write-{}.dat", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let chunk = io_chunk(rate);
    let buf = noise(chunk as usize);
    let mut due = 0.0f64;
    let mut last = Instant::now();
    while !stopping() {
        let now = Instant::now();
        let rate_now = rate as f64 * clock.fraction();
        due += rate_now * now.duration_since(last).as_secs_f64();
        last = now;
        // A disk slower than the rate makes the run fall short, not burst later: bank at most a
        // second (or one write, for rates below a write a second).
        due = due.min(status.bytes_written as f64 + rate_now.max(chunk as f64));
        if status.bytes_written as f64 + chunk as f64 <= due {
            file.write_all_at(&buf, status.bytes_written % IO_FILE_WRAP)
                .with_context(|| format!("writing {}", path.display()))?;
            file.sync_all()
                .with_context(|| format!("fsync of {}", path.display()))?;
            status.bytes_written += chunk;
            status.fsyncs += 1;
        } else {
            let short = status.bytes_written as f64 + chunk as f64 - due;
            let wait = if rate_now > 0.0 {
                short / rate_now
            } else {
                0.05
            };
            std::thread::sleep(Duration::from_secs_f64(wait.clamp(0.001, 0.05)));
        }
        reporter.maybe(status)?;
    }
    Ok(())
}

/// What the held descriptors are open on; the loader counts them in /proc/PID/fd by this name.
pub const FDS_FILE: &str = "/dev/zero";

/// Descriptors the worker keeps free for itself (stdio, the status pipe).
const FD_RESERVE: u64 = 16;

fn fds(
    count: u64,
    clock: &RampClock,
    status: &mut WorkerStatus,
    reporter: &mut Reporter,
) -> Result<()> {
    let (soft, _) = fds::nofile_limit()?;
    status.fd_limit = fds::raise_nofile(count.saturating_add(FD_RESERVE)).unwrap_or(soft);
    let mut held: Vec<File> = Vec::new();
    while !stopping() {
        let want = ((count as f64 * clock.fraction()).ceil() as u64).min(count);
        while (held.len() as u64) < want && status.stopped_short.is_none() {
            match File::open(FDS_FILE) {
                Ok(f) => held.push(f),
                Err(e) => {
                    status.stopped_short = Some(format!(
                        "{e} after {} (RLIMIT_NOFILE {})",
                        held.len(),
                        status.fd_limit
                    ))
                }
            }
        }
        status.fds_open = held.len() as u64;
        reporter.maybe(status)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_chunks_tile_the_file() {
        for rate in [1, 1000, 4 << 20, 10_000_000, 1 << 30] {
            let c = io_chunk(rate);
            assert!(
                c.is_power_of_two() && (512..=1 << 20).contains(&c),
                "{rate}: {c}"
            );
            assert_eq!(IO_FILE_WRAP % c, 0);
            assert!(c <= (rate / 20).max(512), "{rate}: {c}");
        }
        assert_eq!(io_chunk(4 << 20), 128 << 10);
    }

    #[test]
    fn kinds_round_trip_through_the_command_line() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            kind: WorkerKind,
        }
        for kind in [
            WorkerKind::Cpu { load: 37.5 },
            WorkerKind::Memory { bytes: 1 << 20 },
            WorkerKind::Io {
                rate: 1000,
                dir: "/tmp/x y".into(),
            },
            WorkerKind::Fds { count: 9 },
        ] {
            let mut argv: Vec<OsString> = vec!["w".into()];
            argv.extend(kind.to_args());
            assert_eq!(Cli::parse_from(argv).kind, kind);
        }
    }
}
