//! `cargo xtask bench net`: TCP throughput over a veth pair with nothing attached, with kchaos attached
//! to another cgroup (the traffic not targeted), and targeted at 0 % drop; ratios to the first, from one
//! run with the configurations interleaved. Then the kernel's own ns per program run (bpf_stats).

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use integration_tests::{Running, kchaos, lab, tag};

const ROUNDS: usize = 5;
const SECONDS: &str = "2s";

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root");
    }
    let lab = lab::Lab::create(&tag("b"))?;
    let other = lab::LabCgroup::create(&format!("kchaos-bench-other-{}", tag("o")))?;
    let to = SocketAddr::from((lab.server_addr, 5201));
    let listener = lab
        .netns
        .spawn(move || TcpListener::bind(to))?
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread"))???;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 256 << 10];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let target = lab.cgroup.path.display().to_string();
    let untargeted = other.path.display().to_string();
    println!(
        "bench net: TCP over veth, {ROUNDS} rounds x 3 configurations x {SECONDS}, interleaved"
    );

    let mut results: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        for (i, attach_to) in [None, Some(&untargeted), Some(&target)]
            .into_iter()
            .enumerate()
        {
            let running = attach_to
                .map(|cg| Running::start(&["net", "--cgroup", cg, "--drop", "0", "--quiet"]));
            let gbit = send(&lab.cgroup.path, to)?;
            if let Some(r) = running {
                r.terminate();
            }
            results[i].push(gbit);
        }
        eprintln!("  round {} of {ROUNDS} done", round + 1);
    }
    let base = median(&mut results[0]);
    let names = [
        "nothing attached",
        "attached, traffic not targeted",
        "targeted, 0% drop",
    ];
    println!(
        "\n{:<34} {:>12} {:>8}",
        "configuration", "Gbit/s (med)", "ratio"
    );
    for (name, r) in names.iter().zip(results.iter_mut()) {
        let m = median(r);
        println!("{name:<34} {m:>12.2} {:>8.3}", m / base);
    }
    per_run_cost(&target, &untargeted, &lab.cgroup.path, to)
}

fn send(cgroup: &Path, to: SocketAddr) -> Result<f64> {
    let out = Command::new(kchaos())
        .args(["traffic", "--cgroup"])
        .arg(cgroup)
        .args(["tcp-send", "--to", &to.to_string(), "--for", SECONDS])
        .output()?;
    if !out.status.success() {
        bail!("tcp-send failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["gbit_per_s"].as_f64().context("gbit_per_s")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Sends `count` small UDP datagrams from the cgroup as fast as the kernel takes them.
fn udp_flood(cgroup: &Path, to: SocketAddr, count: u64) -> Result<()> {
    let out = Command::new(kchaos())
        .args(["traffic", "--cgroup"])
        .arg(cgroup)
        .args([
            "udp-send",
            "--to",
            &to.to_string(),
            "--count",
            &count.to_string(),
            "--rate",
            "10000000",
        ])
        .output()?;
    if !out.status.success() {
        bail!("udp-send failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// (runs, total ns) so far of the egress programs attached to `cg` (only this run's: other kchaos runs
/// on the machine load programs of the same name).
fn egress_stats(cg: &str) -> (u64, u128) {
    let ids = integration_tests::cgroup_programs(
        Path::new(cg),
        integration_tests::attach_type::INET_EGRESS,
    );
    let (mut ns, mut runs) = (0u128, 0u64);
    for p in aya::programs::loaded_programs().flatten() {
        if ids.contains(&p.id()) {
            ns += p.run_time().as_nanos();
            runs += p.run_count();
        }
    }
    (runs, ns)
}

/// The kernel's run-time statistics of our programs while traffic flows (kernel.bpf_stats_enabled):
/// TCP bulk (few, large GSO packets) and a flood of small UDP datagrams (many runs, warm caches), for
/// the common path (`--drop 0`) and for each kind of loss decision.
fn per_run_cost(target: &str, untargeted: &str, cgroup: &Path, to: SocketAddr) -> Result<()> {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl)?.trim().to_owned();
    std::fs::write(sysctl, "1")?;
    let udp_to = SocketAddr::from((to.ip(), 9));
    let result = (|| -> Result<()> {
        println!("\nper program run (kernel.bpf_stats_enabled), median of {ROUNDS}:");
        let configs: [(&str, &str, &[&str]); 6] = [
            ("TCP, targeted, --drop 0", target, &["--drop", "0"]),
            ("TCP, not targeted", untargeted, &["--drop", "0"]),
            ("UDP, --drop 0", target, &["--drop", "0"]),
            ("UDP, --drop 1", target, &["--drop", "1"]),
            (
                "UDP, --drop 1 --drop-correlation 25",
                target,
                &["--drop", "1", "--drop-correlation", "25"],
            ),
            (
                "UDP, --loss-model gemodel:1,30",
                target,
                &["--loss-model", "gemodel:1,30"],
            ),
        ];
        for (label, cg, extra) in configs {
            let mut per_run = Vec::new();
            let mut total_runs = 0;
            for _ in 0..ROUNDS {
                let mut args = vec!["net", "--cgroup", cg];
                args.extend_from_slice(extra);
                args.push("--quiet");
                let running = Running::start(&args);
                if label.starts_with("TCP") {
                    send(cgroup, to)?;
                } else {
                    udp_flood(cgroup, udp_to, 100_000)?;
                }
                let (runs, ns) = egress_stats(cg);
                running.terminate();
                total_runs += runs;
                if runs > 0 {
                    per_run.push(ns as f64 / runs as f64);
                }
            }
            if per_run.is_empty() {
                println!(
                    "  {label:<38} 0 runs: the program never ran for this traffic (0 ns per packet)"
                );
            } else {
                let lo = per_run.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = per_run.iter().copied().fold(0.0, f64::max);
                println!(
                    "  {label:<38} {total_runs} runs, {:.1} ns per run (range {lo:.1}-{hi:.1})",
                    median(&mut per_run)
                );
            }
        }
        Ok(())
    })();
    std::fs::write(sysctl, before)?;
    std::thread::sleep(Duration::from_millis(10));
    result
}
