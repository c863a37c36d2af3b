//! `cargo xtask bench syscall`: what a syscall fault costs, on every backend this kernel offers.
//!
//! 1. Per run of the connect hook, from the kernel's bpf_stats: with 1, 100, 1,000 and 10,000 target
//!    cgroups, for a process in a target (0 %: the whole decision, no error) and, for the host-wide
//!    backends, for one outside; beside a no-op program on the same hook (the floor: what any
//!    program run costs, bpf_stats' clock reads included) and with `--percent 50` and `--after/--max`
//!    (the shared atomic). Each figure is the best and the median of many short rounds: a round in
//!    which the task was preempted mid-program counts the time it was off the CPU.
//! 2. A tight syscall loop (connect; open, write and fsync where a host-wide backend covers them;
//!    backends: cgroup, lsm, kprobe, fmod_ret, those this kernel has): nothing attached, a process
//!    outside the targets while kchaos is attached, one in the target at 0 %, and under `strace -e
//!    inject` (the usual userspace way), as ratios of calls per second to nothing attached. Each
//!    backend's kchaos starts once a pass, for all its operations; `--calls N` and `--passes N` size it,
//!    `--loops-only` leaves out the first half.

use std::{collections::HashSet, os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, Lsm, loaded_programs};
use chaos_userspace::kinds::syscall::BackendSupport;
use integration_tests::{Running, attach_type, cgroup_programs, kchaos, lab::LabCgroup, tag};

/// Passes of the loop half, each with every configuration's loops ROUNDS_PER_PASS times.
const PASSES: usize = 3;
const ROUNDS_PER_PASS: usize = 3;
// strace counts injection points to 65535 at most, so the loop stays below it.
const CALLS: u64 = 50_000;
/// Per-run cost: many short rounds, best and median.
const STAT_ROUNDS: usize = 15;
const STAT_CALLS: u64 = 5_000;
const TARGET_COUNTS: [usize; 4] = [1, 100, 1_000, 10_000];

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root");
    }
    let size = BenchOptions::from_args()?;
    split_cpus();
    // 10,000 targets on the cgroup backend are 20,000 links, each an fd of kchaos's: more than the
    // kernel's default hard limit (4,096, what the VM's init has). Root raises it, as a service
    // manager would (systemd gives services 524,288); kchaos inherits it and raises its soft limit.
    let lim = libc::rlimit {
        rlim_cur: 1 << 16,
        rlim_max: 1 << 16,
    };
    // SAFETY: setrlimit reads a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        // A container or a hardened host may forbid it: fewer targets (KCHAOS_BENCH_TARGETS) still
        // run, and kchaos says what it lacks if a row asks for more.
        println!(
            "(RLIMIT_NOFILE stays as it is: raising it to 65,536 for 10,000 targets: {})",
            std::io::Error::last_os_error()
        );
    }
    let support = BackendSupport::probe();
    let backends: Vec<&str> = [
        ("cgroup", &support.cgroup),
        ("lsm", &support.lsm),
        ("kprobe", &support.kprobe),
        ("fmod_ret", &support.fmod_ret),
    ]
    .into_iter()
    .filter_map(|(b, s)| match s {
        Ok(()) => Some(b),
        Err(why) => {
            println!("(no {b} backend here: {why})");
            None
        }
    })
    .collect();
    println!(
        "kernel {}; backends: {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        backends.join(", ")
    );
    if !size.loops_only {
        let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
        let before = std::fs::read_to_string(sysctl)?.trim().to_owned();
        std::fs::write(sysctl, "1")?;
        let result = per_run_costs(&backends);
        std::fs::write(sysctl, before)?;
        result?;
    }

    if std::env::var_os("KCHAOS_BENCH_COSTS_ONLY").is_some() {
        return Ok(());
    }
    let target = LabCgroup::create(&format!("kchaos-bench-{}", tag("t")))?;
    let outside = LabCgroup::create(&format!("kchaos-bench-{}", tag("o")))?;
    let has_strace = Command::new("strace").arg("-V").output().is_ok();
    loop_costs(&backends, &size, &target, &outside, has_strace)?;
    Ok(())
}

/// TARGET_COUNTS, or $KCHAOS_BENCH_TARGETS ("1,100"): e.g. to compare with a kchaos that
/// takes fewer targets.
fn target_counts() -> Vec<usize> {
    std::env::var("KCHAOS_BENCH_TARGETS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| TARGET_COUNTS.to_vec())
}

/// The connect program each backend runs.
fn connect_program(backend: &str) -> &'static str {
    match backend {
        "cgroup" => "sys_connect4",
        "lsm" => "lsm_socket_conn",
        "fmod_ret" => "fm_connect",
        _ => "kp_connect",
    }
}

fn per_run_costs(backends: &[&str]) -> Result<()> {
    println!(
        "\nper run of the connect hook (bpf_stats): best / median of {STAT_ROUNDS} rounds x {STAT_CALLS} calls, in ns"
    );
    println!(
        "{:<8} {:>8} {:<22} {:>16} {:>16}",
        "backend", "targets", "fault", "in a target", "outside"
    );
    let floor_cg = LabCgroup::create(&format!("kchaos-bench-{}", tag("n")))?;
    let (best, median) = noop_floor(&floor_cg.path)?;
    println!(
        "{:<8} {:>8} {:<22} {:>16}",
        "-",
        "-",
        "no-op program (floor)",
        format!("{best:.1} / {median:.1}")
    );
    if backends.contains(&"lsm") {
        // The host-wide floor: a no-op LSM program on socket_connect runs for every process, so the
        // lsm rows' "outside" column minus this is the target check's own cost.
        let floor = NoopLsm::attach()?;
        let ids: Vec<u32> = program_ids("noop_sock_conn").into_iter().collect();
        let (best, median) = per_run(&ids, &floor_cg.path)?;
        drop(floor);
        println!(
            "{:<8} {:>8} {:<22} {:>16} {:>16}",
            "lsm",
            "-",
            "no-op LSM (floor)",
            "-",
            format!("{best:.1} / {median:.1}")
        );
    }
    for &backend in backends {
        for n in target_counts() {
            let fault: &[&str] = &["--percent", "0"];
            cost_row(backend, n, "0%", fault)?;
        }
        cost_row(backend, 1, "50%", &["--percent", "50"])?;
        cost_row(
            backend,
            1,
            "0%, --after 1 --max 1e9",
            &["--percent", "0", "--after", "1", "--max", "1000000000"],
        )?;
    }
    Ok(())
}

/// One row: `n` targets under `backend`, the loop in the last target (and in an untargeted sibling).
fn cost_row(backend: &str, n: usize, label: &str, fault: &[&str]) -> Result<()> {
    let parent = LabCgroup::create(&format!("kchaos-bench-{}", tag("m")))?;
    let targets: Vec<std::path::PathBuf> = (0..n)
        .map(|i| parent.child(&format!("t{i}")))
        .collect::<std::io::Result<_>>()?;
    let outside = parent.child("outside")?;
    let last = targets.last().context("no target")?;
    let mut args: Vec<String> = vec!["syscall".into()];
    for t in &targets {
        args.extend(["--cgroup".into(), t.display().to_string()]);
    }
    args.extend(
        [
            "--syscall",
            "connect",
            "--errno",
            "ECONNREFUSED",
            "--backend",
            backend,
            "--quiet",
        ]
        .map(String::from),
    );
    args.extend(fault.iter().map(|s| s.to_string()));
    let before: HashSet<u32> = program_ids(connect_program(backend));
    let started = std::time::Instant::now();
    // Attaching to 10,000 cgroups takes a while on a busy host: more than Running::start waits.
    let mut running = Running::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    running.wait_for("armed", std::time::Duration::from_secs(600));
    let attach = started.elapsed();
    let ids: Vec<u32> = if backend == "cgroup" {
        cgroup_programs(last, attach_type::INET4_CONNECT)
    } else {
        program_ids(connect_program(backend))
            .difference(&before)
            .copied()
            .collect()
    };
    let inside = per_run(&ids, last)?;
    // A cgroup program never runs for a process outside its cgroups: nothing to measure there.
    let out = (backend != "cgroup")
        .then(|| per_run(&ids, &outside))
        .transpose()?;
    running.terminate();
    println!(
        "{backend:<8} {n:>8} {label:<22} {:>16} {:>16}   (started in {attach:.1?})",
        format!("{:.1} / {:.1}", inside.0, inside.1),
        out.map_or("-".to_owned(), |o| format!("{:.1} / {:.1}", o.0, o.1)),
    );
    Ok(())
}

/// The no-op connect4 program attached to `cgroup`: the floor of a run on this hook.
fn noop_floor(cgroup: &Path) -> Result<(f64, f64)> {
    let mut ebpf = chaos_userspace::engine::ebpf::load()?;
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut("noop_connect4")
        .context("no noop_connect4 program in the object")?
        .try_into()?;
    prog.load()?;
    let file = std::fs::File::open(cgroup)?;
    let link = prog.attach(&file, CgroupAttachMode::Single)?;
    let ids = cgroup_programs(cgroup, attach_type::INET4_CONNECT);
    let result = per_run(&ids, cgroup);
    prog.detach(link)?;
    result
}

/// Ids of the loaded programs named `name` (the kernel keeps 15 characters of a name).
fn program_ids(name: &str) -> HashSet<u32> {
    loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| p.id())
        .collect()
}

/// Summed (run time ns, run count) of the programs `ids`.
fn stats(ids: &[u32]) -> (u64, u64) {
    loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()))
        .fold((0, 0), |(t, c), p| {
            (t + p.run_time().as_nanos() as u64, c + p.run_count())
        })
}

/// Best and median ns per program run over short rounds of connect calls from `cgroup`.
fn per_run(ids: &[u32], cgroup: &Path) -> Result<(f64, f64)> {
    if ids.is_empty() {
        bail!("found none of the fault's programs to measure");
    }
    let mut v = Vec::new();
    for _ in 0..STAT_ROUNDS {
        let (t0, c0) = stats(ids);
        loop_ns("connect", cgroup, false, STAT_CALLS)?;
        let (t1, c1) = stats(ids);
        if c1 > c0 {
            v.push((t1 - t0) as f64 / (c1 - c0) as f64);
        }
    }
    if v.is_empty() {
        bail!("the programs {ids:?} never ran");
    }
    Ok((best(&v), median(&mut v)))
}

/// The command line: loop sizes `--calls N` (default CALLS), `--passes N` (default PASSES), and
/// `--loops-only`. xtask asks for fewer calls in the VM, where strace's two stops per call make a
/// 50,000-call loop take minutes.
struct BenchOptions {
    calls: u64,
    passes: usize,
    /// `--loops-only`: leave out the per-run half.
    loops_only: bool,
}

impl BenchOptions {
    fn from_args() -> Result<Self> {
        let mut size = Self {
            calls: CALLS,
            passes: PASSES,
            loops_only: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--loops-only" => size.loops_only = true,
                "--calls" => size.calls = whole_number(&flag, args.next())?,
                "--passes" => size.passes = whole_number(&flag, args.next())?,
                other => bail!(
                    "unknown argument {other}: allowed are --calls N, --passes N and --loops-only"
                ),
            }
        }
        if size.calls > 65_000 {
            bail!(
                "--calls {}: at most 65,000 (strace counts calls to 65,535)",
                size.calls
            );
        }
        Ok(size)
    }
}

/// The value after `flag`: a whole number from 1 up.
fn whole_number<T: std::str::FromStr + PartialOrd + From<u8>>(
    flag: &str,
    value: Option<String>,
) -> Result<T> {
    let value = value.with_context(|| format!("{flag} needs a number"))?;
    value
        .parse()
        .ok()
        .filter(|n| *n >= T::from(1))
        .with_context(|| format!("{flag} {value}: a whole number from 1 up"))
}

/// One measured loop: an operation, where it runs, and how.
#[derive(Clone, Copy, PartialEq)]
enum Config<'a> {
    /// No program attached anywhere.
    Nothing,
    /// Under `strace -e inject` that injects nothing (its cost of interception).
    Strace,
    /// No-op BPF LSM programs on the operations' hooks: what any BPF LSM program costs every process
    /// (the trampoline), the floor under the lsm backend's "outside" row.
    LsmFloor,
    /// kchaos on `backend` targets the target cgroup; the loop runs in its untargeted sibling.
    Outside(&'a str),
    /// The same kchaos; the loop runs in the target at 0 %.
    Targeted(&'a str),
}

impl Config<'_> {
    fn name(&self) -> String {
        match self {
            Config::Nothing => "nothing attached".into(),
            Config::Strace => "strace -e inject (0 injected)".into(),
            Config::LsmFloor => "no-op BPF LSM program (floor)".into(),
            Config::Outside(b) => format!("{b}: attached, process outside"),
            Config::Targeted(b) => format!("{b}: targeted, 0%"),
        }
    }
}

/// The operations of the loop benchmark and the backends that cover each.
fn loop_ops<'a>(backends: &[&'a str]) -> Vec<(&'static str, Vec<&'a str>)> {
    let covering = |op: &str| -> Vec<&'a str> {
        backends
            .iter()
            .copied()
            .filter(|&b| match op {
                "connect" => true,
                // fsync has no LSM hook; fmod_ret reaches it through the kernel's error-injection
                // list, which the kprobe backend needs too (Debian's kernel has neither); the
                // cgroup hooks cover socket calls only.
                "fsync" => b == "kprobe" || (b == "fmod_ret" && backends.contains(&"kprobe")),
                _ => b != "cgroup",
            })
            .collect()
    };
    ["connect", "open", "write", "fsync"]
        .into_iter()
        .map(|op| (op, covering(op)))
        .filter(|(_, b)| !b.is_empty())
        .collect()
}

/// The tight-loop half. Each pass runs every configuration's loops `ROUNDS_PER_PASS` times,
/// alternating, and starts each backend's kchaos once for all its operations (a start takes seconds
/// under emulation, far longer than a loop); the passes repeat that, so drift over the run lands on
/// every configuration alike.
fn loop_costs(
    backends: &[&str],
    size: &BenchOptions,
    target: &LabCgroup,
    outside: &LabCgroup,
    has_strace: bool,
) -> Result<()> {
    let ops = loop_ops(backends);
    let t = target.path.display().to_string();
    // (op, config) -> ns per call of each loop.
    let mut ns: Vec<((&str, Config), Vec<f64>)> = Vec::new();
    for (op, covering) in &ops {
        ns.push(((op, Config::Nothing), Vec::new()));
        if covering.contains(&"lsm") {
            ns.push(((op, Config::LsmFloor), Vec::new()));
        }
        for &b in covering {
            ns.push(((op, Config::Outside(b)), Vec::new()));
            ns.push(((op, Config::Targeted(b)), Vec::new()));
        }
        if has_strace {
            ns.push(((op, Config::Strace), Vec::new()));
        }
    }
    let mut record = |op: &str, config: Config, v: f64| {
        if let Some((_, samples)) = ns.iter_mut().find(|((o, c), _)| *o == op && *c == config) {
            samples.push(v);
        }
    };
    println!(
        "\nloops: {} passes x {ROUNDS_PER_PASS} rounds x {} calls; ops {}",
        size.passes,
        size.calls,
        ops.iter().map(|(op, _)| *op).collect::<Vec<_>>().join(", ")
    );
    let started = std::time::Instant::now();
    for pass in 1..=size.passes {
        // Nothing attached: the baseline, and strace beside it.
        for _ in 0..ROUNDS_PER_PASS {
            for (op, _) in &ops {
                record(
                    op,
                    Config::Nothing,
                    loop_ns(op, &target.path, false, size.calls)?,
                );
                if has_strace {
                    record(
                        op,
                        Config::Strace,
                        loop_ns(op, &target.path, true, size.calls)?,
                    );
                }
            }
        }
        // The floor of a host-wide hook: no-op LSM programs where the lsm backend hooks.
        if backends.contains(&"lsm") {
            let floor = NoopLsm::attach()?;
            for _ in 0..ROUNDS_PER_PASS {
                for (op, covering) in &ops {
                    if covering.contains(&"lsm") {
                        record(
                            op,
                            Config::LsmFloor,
                            loop_ns(op, &outside.path, false, size.calls)?,
                        );
                    }
                }
            }
            drop(floor);
        }
        // One kchaos per backend, covering every operation it covers; loops outside and inside.
        for &backend in backends {
            let covered: Vec<&str> = ops
                .iter()
                .filter(|(_, c)| c.contains(&backend))
                .map(|(op, _)| *op)
                .collect();
            let syscalls = covered.join(",");
            let running = Running::start(&[
                "syscall",
                "--cgroup",
                &t,
                "--syscall",
                &syscalls,
                "--errno",
                "EIO",
                "--percent",
                "0",
                "--backend",
                backend,
                "--quiet",
            ]);
            for _ in 0..ROUNDS_PER_PASS {
                for op in &covered {
                    record(
                        op,
                        Config::Outside(backend),
                        loop_ns(op, &outside.path, false, size.calls)?,
                    );
                    record(
                        op,
                        Config::Targeted(backend),
                        loop_ns(op, &target.path, false, size.calls)?,
                    );
                }
            }
            running.terminate();
        }
        println!(
            "  pass {pass}/{} done ({:.0?} so far)",
            size.passes,
            started.elapsed()
        );
    }
    for (op, _) in &ops {
        let mut rows: Vec<(Config, Vec<f64>)> = ns
            .iter()
            .filter(|((o, _), _)| o == op)
            .map(|((_, c), v)| (*c, v.clone()))
            .collect();
        let Some((_, base)) = rows.first_mut() else {
            continue;
        };
        // Best of the rounds (noise only ever adds time) and the median, each as a ratio to the
        // baseline's.
        let (base_best, base_median) = (best(base), median(base));
        println!(
            "\nbench syscall {op}: {} rounds x {} calls each, interleaved",
            size.passes * ROUNDS_PER_PASS,
            size.calls
        );
        println!(
            "{:<34} {:>10} {:>12} {:>14}",
            "configuration", "ns/call", "ratio (best)", "ratio (median)"
        );
        for (config, v) in &mut rows {
            let (b, m) = (best(v), median(v));
            println!(
                "{:<34} {b:>10.0} {:>12.3} {:>14.3}",
                config.name(),
                base_best / b,
                base_median / m
            );
        }
    }
    if !has_strace {
        println!("(no strace here: its rows are left out)");
    }
    Ok(())
}

/// The no-op LSM programs, attached host-wide while this lives (their links close with the object).
struct NoopLsm {
    _ebpf: aya::Ebpf,
}

impl NoopLsm {
    fn attach() -> Result<Self> {
        let btf = aya::Btf::from_sys_fs()?;
        let mut ebpf = chaos_userspace::engine::ebpf::load()?;
        for (name, hook) in [
            ("noop_sock_conn", "socket_connect"),
            ("noop_file_open", "file_open"),
            ("noop_file_perm", "file_permission"),
        ] {
            let prog: &mut Lsm = ebpf
                .program_mut(name)
                .with_context(|| format!("no {name} program in the object"))?
                .try_into()?;
            prog.load(hook, &btf)
                .with_context(|| format!("loading {name}"))?;
            prog.attach().with_context(|| format!("attaching {name}"))?;
        }
        Ok(Self { _ebpf: ebpf })
    }
}

/// The CPU the loops run on, when there are two or more: the loops on CPU 0, this process and every
/// kchaos it starts on the last CPU, so kchaos's own ticks never preempt a loop, and the loop is not
/// migrated mid-measurement (under emulation a move costs the vCPU's TLB).
static LOOP_CPU: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of the set; cpu is below the number of CPUs.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

/// Pins this process (and so the kchaos runs it starts) to the last CPU and keeps CPU 0 for loops.
fn split_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loop_cpu = (cpus >= 2).then_some(0);
    if cpus >= 2 {
        let set = cpu_set(cpus - 1);
        // SAFETY: sched_setaffinity reads a valid set for this process.
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0
        {
            println!("(not pinned: {})", std::io::Error::last_os_error());
        } else {
            println!(
                "loops run on CPU 0; this process and kchaos on CPU {}",
                cpus - 1
            );
        }
    }
    let _ = LOOP_CPU.set(loop_cpu);
}

/// ns per call of the helper's loop, run in the target cgroup (under strace when asked).
fn loop_ns(op: &str, cgroup: &Path, strace: bool, calls: u64) -> Result<f64> {
    let kchaos = kchaos();
    let mut cmd = if strace {
        let mut c = Command::new("strace");
        // Inject only from the 65535th call on (after the loop): the cost of strace's interception with 0 injected.
        c.args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            &format!("inject={}:error=EIO:when=65535", syscall_name(op)),
        ])
        .arg(&kchaos);
        c
    } else {
        Command::new(&kchaos)
    };
    if let Some(cpu) = LOOP_CPU.get().copied().flatten() {
        // SAFETY: between fork and exec only sched_setaffinity runs, a plain syscall on a set built
        // here.
        unsafe {
            cmd.pre_exec(move || {
                let set = cpu_set(cpu);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd
        .arg("traffic")
        .arg("--cgroup")
        .arg(cgroup)
        .args(["syscalls", "--op", op, "--count", &calls.to_string()])
        .output()?;
    if !out.status.success() {
        bail!(
            "the {op} loop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or_default()).context("the loop's JSON")?;
    v["ns_per_call"].as_f64().context("ns_per_call")
}

fn syscall_name(op: &str) -> &str {
    match op {
        "open" => "openat",
        "write" => "pwrite64",
        other => other,
    }
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
