//! `cargo xtask bench stress`: the CPU load `kchaos stress --cpu N --cpu-load PCT` reaches, next to
//! `stress-ng --cpu N --cpu-load PCT`, each run in the same fresh cgroup, interleaved, and measured by
//! the kernel the same way: the cgroup's cpu.stat usage_usec over the middle of each run.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, setup};

/// (workers, percent of one CPU each).
const CASES: [(u32, u32); 4] = [(1, 25), (1, 50), (2, 50), (1, 90)];
const ROUNDS: usize = 3;
/// Each run lasts RUN; the window measured starts after SETTLE and lasts WINDOW.
const RUN: Duration = Duration::from_secs(5);
const SETTLE: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(3);

/// Builds kchaos, installs stress-ng if it is missing, and prints the comparison.
pub fn run() -> Result<()> {
    if fs::metadata("/proc/self")?.uid() != 0 {
        bail!("the stress benchmark needs root (it makes a cgroup): run it with sudo");
    }
    let kchaos = build::build_kchaos()?;
    setup::ensure_debian_packages(&[("stress-ng", "stress-ng")])?;
    compare(&kchaos)
}

/// One measured run.
struct Measured {
    /// CPU per worker, in percent of one CPU.
    per_worker_pct: f64,
    /// CPUs the rest of the host used in the same window.
    others_cpus: f64,
}

/// Runs every case with both tools and prints them side by side.
pub fn compare(kchaos: &Path) -> Result<()> {
    let cg = BenchCgroup::create()?;
    let cg_arg = cg.path.display().to_string();
    setup::step(&format!(
        "bench stress: {} cases x {ROUNDS} rounds x 2 tools, {}s each",
        CASES.len(),
        RUN.as_secs()
    ));
    let mut rows = Vec::new();
    for (workers, pct) in CASES {
        let (n, load) = (workers.to_string(), pct.to_string());
        let secs = format!("{}s", RUN.as_secs());
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut others = Vec::new();
        for _ in 0..ROUNDS {
            let mut kchaos_cmd = Command::new(kchaos);
            kchaos_cmd.args([
                "stress",
                "--cgroup",
                &cg_arg,
                "--cpu",
                &n,
                "--cpu-load",
                &load,
                "--duration",
                &secs,
                "--quiet",
            ]);
            let m = measure(&cg, &mut kchaos_cmd, workers)?;
            ours.push(m.per_worker_pct);
            others.push(m.others_cpus);
            // stress-ng has no cgroup option: a shell joins the cgroup and execs it; its workers,
            // forked after, are born there.
            let mut stress_ng = Command::new("sh");
            stress_ng.args([
                "-c",
                &format!(
                    "echo $$ > '{cg_arg}/cgroup.procs' && exec stress-ng --cpu {n} --cpu-load {load} \
                     --timeout {secs} --quiet"
                ),
            ]);
            let m = measure(&cg, &mut stress_ng, workers)?;
            theirs.push(m.per_worker_pct);
            others.push(m.others_cpus);
        }
        rows.push((workers, pct, ours, theirs, others));
    }

    println!(
        "\nbench stress: CPU per worker, % of one CPU, from the cgroup's cpu.stat over {}s windows; \
         median (min-max) of {ROUNDS} interleaved rounds; {} CPUs online",
        WINDOW.as_secs(),
        online_cpus()
    );
    println!(
        "{:<14} {:>24} {:>28} {:>16}",
        "workers x load", "kchaos stress", "stress-ng --cpu-load", "rest of host"
    );
    for (workers, pct, mut ours, mut theirs, mut others) in rows {
        println!(
            "{:<14} {:>24} {:>28} {:>11.2} CPUs",
            format!("{workers} x {pct}%"),
            spread(&mut ours, f64::from(pct)),
            spread(&mut theirs, f64::from(pct)),
            median(&mut others)
        );
    }
    Ok(())
}

/// "49.9% (49.6-50.1) -0.1" : median, range, and the median's error against the target.
fn spread(v: &mut [f64], target: f64) -> String {
    let m = median(v);
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    format!("{m:.1}% ({lo:.1}-{hi:.1}) {:+.1}", m - target)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Starts `cmd` (which puts its load into the cgroup), measures the middle of its run, waits for it to
/// end and for the cgroup to empty.
fn measure(cg: &BenchCgroup, cmd: &mut Command, workers: u32) -> Result<Measured> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    std::thread::sleep(SETTLE);
    let (t0, used0, busy0) = (Instant::now(), cg.usage_s()?, host_busy_s()?);
    std::thread::sleep(WINDOW);
    let (t1, used1, busy1) = (Instant::now(), cg.usage_s()?, host_busy_s()?);
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    cg.wait_empty()?;
    let wall = t1.duration_since(t0).as_secs_f64();
    Ok(Measured {
        per_worker_pct: 100.0 * (used1 - used0) / wall / f64::from(workers),
        others_cpus: ((busy1 - busy0) - (used1 - used0)) / wall,
    })
}

/// CPU time the whole host spent busy (/proc/stat: all but idle and iowait), in seconds.
fn host_busy_s() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    if ticks.len() < 8 {
        bail!("unexpected first line in /proc/stat");
    }
    // /proc/stat counts in USER_HZ, 100 on every Linux this runs on.
    Ok((ticks.iter().sum::<f64>() - ticks[3] - ticks[4]) / 100.0)
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A cgroup for the benchmark, removed (with anything left in it) on drop.
struct BenchCgroup {
    path: PathBuf,
}

impl BenchCgroup {
    fn create() -> Result<Self> {
        let mounts = fs::read_to_string("/proc/mounts")?;
        let mount = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
            })
            .context("no cgroup2 file system is mounted")?;
        let path = mount.join(format!("kchaos-bench-stress-{}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// usage_usec of cpu.stat (kept by cgroup v2 with or without the cpu controller), in seconds.
    fn usage_s(&self) -> Result<f64> {
        let text = fs::read_to_string(self.path.join("cpu.stat"))?;
        let usec: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .context("no usage_usec in cpu.stat")?
            .trim()
            .parse()?;
        Ok(usec / 1e6)
    }

    fn procs(&self) -> usize {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Waits (up to 5 s) for the last process to leave, then kills what is left.
    fn wait_empty(&self) -> Result<()> {
        let start = Instant::now();
        while self.procs() > 0 {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = fs::write(self.path.join("cgroup.kill"), "1");
                std::thread::sleep(Duration::from_millis(100));
                if self.procs() > 0 {
                    bail!("{} does not empty", self.path.display());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: could not remove {}", self.path.display());
    }
}
