//! `cargo xtask bench syscall`: a syscall loop (connect; and openat, write where the BPF LSM backend
//! exists) with nothing attached, with kchaos attached to another cgroup (not targeted), targeted at
//! 0 %, and under `strace -e inject` (the usual userspace way), as ratios of calls per second to the
//! first, interleaved in one run. Then ns per program run from the kernel's bpf_stats.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use chaos_userspace::kinds::syscall::BackendSupport;
use integration_tests::{Running, kchaos, lab::LabCgroup, tag};

const ROUNDS: usize = 9;
// strace counts injection points to 65535 at most, so the loop stays below it.
const CALLS: &str = "50000";

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root");
    }
    let target = LabCgroup::create(&format!("kchaos-bench-{}", tag("t")))?;
    let other = LabCgroup::create(&format!("kchaos-bench-{}", tag("o")))?;
    let support = BackendSupport::probe();
    let mut ops = vec![("connect", "ECONNREFUSED")];
    if support.lsm.is_ok() {
        ops.extend([("open", "EIO"), ("write", "EIO")]);
    } else {
        println!(
            "(openat and write need the BPF LSM backend, absent here: {:?})",
            support.lsm
        );
    }
    let has_strace = Command::new("strace").arg("-V").output().is_ok();
    for (op, errno) in ops {
        bench_op(op, errno, &target.path, &other.path, has_strace)?;
    }
    Ok(())
}

fn bench_op(op: &str, errno: &str, target: &Path, other: &Path, has_strace: bool) -> Result<()> {
    let (t, o) = (target.display().to_string(), other.display().to_string());
    let names = [
        "nothing attached",
        "attached, not targeted",
        "targeted, 0%",
        "strace -e inject (0 injected)",
    ];
    let mut ns: [Vec<f64>; 4] = Default::default();
    for _ in 0..ROUNDS {
        for (i, attach) in [None, Some(&o), Some(&t), None].into_iter().enumerate() {
            if i == 3 && !has_strace {
                continue;
            }
            let running = attach.map(|cg| {
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
                    "--quiet",
                ])
            });
            ns[i].push(loop_ns(op, target, i == 3)?);
            if let Some(r) = running {
                r.terminate();
            }
        }
    }
    // Best of the rounds (noise only ever adds time) and the median, each as a ratio to its baseline.
    let (base_best, base_median) = (best(&ns[0]), median(&mut ns[0]));
    println!("\nbench syscall {op}: {ROUNDS} rounds x {CALLS} calls, interleaved");
    println!(
        "{:<32} {:>10} {:>12} {:>14}",
        "configuration", "ns/call", "ratio (best)", "ratio (median)"
    );
    for (name, v) in names.iter().zip(ns.iter_mut()) {
        if v.is_empty() {
            println!("{name:<32} {:>10}", "n/a (no strace)");
            continue;
        }
        let (b, m) = (best(v), median(v));
        println!(
            "{name:<32} {b:>10.0} {:>12.3} {:>14.3}",
            base_best / b,
            base_median / m
        );
    }
    per_run_cost(op, errno, &t, target)
}

/// ns per call of the helper's loop, run in the target cgroup (under strace when asked).
fn loop_ns(op: &str, cgroup: &Path, strace: bool) -> Result<f64> {
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
        .args(["syscalls", "--op", op, "--count", CALLS])
        .output()?;
    if !out.status.success() {
        bail!(
            "the {op} loop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("the loop's JSON")?;
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

fn per_run_cost(op: &str, errno: &str, target: &str, cgroup: &Path) -> Result<()> {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl)?.trim().to_owned();
    std::fs::write(sysctl, "1")?;
    let result = (|| -> Result<()> {
        let running = Running::start(&[
            "syscall",
            "--cgroup",
            target,
            "--syscall",
            op,
            "--errno",
            errno,
            "--percent",
            "0",
            "--quiet",
        ]);
        loop_ns(op, cgroup, false)?;
        for p in aya::programs::loaded_programs().flatten() {
            let name = p.name_as_str().unwrap_or_default().to_owned();
            if (name.starts_with("sys_") || name.starts_with("lsm_")) && p.run_count() > 0 {
                println!(
                    "  {name:<20} {} runs, {:.1} ns per run (bpf_stats)",
                    p.run_count(),
                    p.run_time().as_nanos() as f64 / p.run_count() as f64
                );
            }
        }
        running.terminate();
        Ok(())
    })();
    std::fs::write(sysctl, before)?;
    result
}
