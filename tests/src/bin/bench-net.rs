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

/// The kernel's run-time statistics of our programs while traffic flows (kernel.bpf_stats_enabled).
fn per_run_cost(target: &str, untargeted: &str, cgroup: &Path, to: SocketAddr) -> Result<()> {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl)?.trim().to_owned();
    std::fs::write(sysctl, "1")?;
    let result = (|| -> Result<()> {
        println!("\nper program run (kernel.bpf_stats_enabled):");
        for (label, cg) in [("targeted, 0% drop", target), ("not targeted", untargeted)] {
            let running = Running::start(&["net", "--cgroup", cg, "--drop", "0", "--quiet"]);
            send(cgroup, to)?;
            let (mut ns, mut runs) = (0u128, 0u64);
            for p in aya::programs::loaded_programs().flatten() {
                if p.name_as_str() == Some("net_egress") {
                    ns += p.run_time().as_nanos();
                    runs += p.run_count();
                }
            }
            running.terminate();
            if runs == 0 {
                println!(
                    "  {label:<20} 0 runs: the program never ran for this traffic (0 ns per packet)"
                );
            } else {
                println!(
                    "  {label:<20} {runs} runs, {:.1} ns per run",
                    ns as f64 / runs as f64
                );
            }
        }
        Ok(())
    })();
    std::fs::write(sysctl, before)?;
    std::thread::sleep(Duration::from_millis(10));
    result
}
