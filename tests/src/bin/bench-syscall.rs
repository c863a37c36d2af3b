//! `cargo xtask bench syscall`: what a syscall fault costs, on every backend this kernel offers.
//!
//! 1. Per run of the connect hook, from the kernel's bpf_stats: with 1, 100, 1,000 and 10,000 target
//!    cgroups, for a process in a target (0 %: the whole decision, no error) and, for the host-wide
//!    backends, for one outside; beside a no-op program on the same hook (the floor: what any
//!    program run costs, bpf_stats' clock reads included) and with `--percent 50` and `--after/--max`
//!    (the shared atomic). Each figure is the best and the median of many short rounds: a round in
//!    which the task was preempted mid-program counts the time it was off the CPU.
//! 2. A tight syscall loop (connect; open, write and fsync where a host-wide backend covers them;
//!    backends: cgroup, lsm, kprobe, fmod_ret, those this kernel has):
//!    nothing attached, attached elsewhere (a process outside the targets), targeted at 0 %, and
//!    under `strace -e inject` (the usual userspace way), as ratios of calls per second to the first,
//!    interleaved in one run.

use std::{collections::HashSet, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, loaded_programs};
use chaos_userspace::kinds::syscall::BackendSupport;
use integration_tests::{Running, attach_type, cgroup_programs, kchaos, lab::LabCgroup, tag};

const ROUNDS: usize = 9;
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
    // 10,000 targets on the cgroup backend are 20,000 links, each an fd of kchaos's: more than the
    // kernel's default hard limit (4,096, what the VM's init has). Root raises it, as a service
    // manager would (systemd gives services 524,288); kchaos inherits it and raises its soft limit.
    let lim = libc::rlimit {
        rlim_cur: 1 << 16,
        rlim_max: 1 << 16,
    };
    // SAFETY: setrlimit reads a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!(
            "raising RLIMIT_NOFILE to 65,536 for 10,000 targets: {}",
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
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl)?.trim().to_owned();
    std::fs::write(sysctl, "1")?;
    let result = per_run_costs(&backends);
    std::fs::write(sysctl, before)?;
    result?;

    if std::env::var_os("KCHAOS_BENCH_COSTS_ONLY").is_some() {
        return Ok(());
    }
    let target = LabCgroup::create(&format!("kchaos-bench-{}", tag("t")))?;
    let other = LabCgroup::create(&format!("kchaos-bench-{}", tag("o")))?;
    let has_strace = Command::new("strace").arg("-V").output().is_ok();
    let host_wide: Vec<&str> = backends
        .iter()
        .copied()
        .filter(|&b| b != "cgroup")
        .collect();
    bench_op(
        "connect",
        "ECONNREFUSED",
        &backends,
        &target,
        &other,
        has_strace,
    )?;
    if !host_wide.is_empty() {
        for op in ["open", "write"] {
            bench_op(op, "EIO", &host_wide, &target, &other, has_strace)?;
        }
    }
    if host_wide.contains(&"kprobe") {
        let fsync: Vec<&str> = host_wide.iter().copied().filter(|&b| b != "lsm").collect();
        bench_op("fsync", "EIO", &fsync, &target, &other, has_strace)?;
    }
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

/// (name, the backend and cgroup kchaos attaches to, under strace).
type LoopConfig<'a> = (String, Option<(&'a str, &'a str)>, bool);

fn bench_op(
    op: &str,
    errno: &str,
    backends: &[&str],
    target: &LabCgroup,
    other: &LabCgroup,
    has_strace: bool,
) -> Result<()> {
    let (t, o) = (
        target.path.display().to_string(),
        other.path.display().to_string(),
    );
    let mut configs: Vec<LoopConfig> = vec![("nothing attached".into(), None, false)];
    for &b in backends {
        if b == "cgroup" && op != "connect" {
            continue;
        }
        configs.push((format!("{b}: attached, not targeted"), Some((b, &o)), false));
        configs.push((format!("{b}: targeted, 0%"), Some((b, &t)), false));
    }
    if has_strace {
        configs.push(("strace -e inject (0 injected)".into(), None, true));
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for _ in 0..ROUNDS {
        for (i, (_, attach, strace)) in configs.iter().enumerate() {
            let running = attach.map(|(backend, cg)| {
                Running::start(&[
                    "syscall",
                    "--cgroup",
                    cg,
                    "--syscall",
                    op,
                    "--errno",
                    errno,
                    "--percent",
                    "0",
                    "--backend",
                    backend,
                    "--quiet",
                ])
            });
            ns[i].push(loop_ns(op, &target.path, *strace, CALLS)?);
            if let Some(r) = running {
                r.terminate();
            }
        }
    }
    // Best of the rounds (noise only ever adds time) and the median, each as a ratio to its baseline.
    let (base_best, base_median) = (best(&ns[0]), median(&mut ns[0]));
    println!("\nbench syscall {op}: {ROUNDS} rounds x {CALLS} calls, interleaved");
    println!(
        "{:<34} {:>10} {:>12} {:>14}",
        "configuration", "ns/call", "ratio (best)", "ratio (median)"
    );
    if !has_strace {
        println!("(no strace here)");
    }
    for ((name, _, _), v) in configs.iter().zip(ns.iter_mut()) {
        let (b, m) = (best(v), median(v));
        println!(
            "{name:<34} {b:>10.0} {:>12.3} {:>14.3}",
            base_best / b,
            base_median / m
        );
    }
    Ok(())
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
