//! `cargo xtask bench net`: TCP throughput over a veth pair with nothing attached, with kchaos attached
//! to another cgroup (the traffic not targeted), and targeted at 0 % drop; the same for the tcx
//! program of --duplicate/--corrupt, which runs for every packet on the device; ratios to the first,
//! from one run with the configurations interleaved. Then the kernel's own ns per program run
//! (bpf_stats).

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
        "bench net: TCP over veth, {ROUNDS} rounds x 5 configurations x {SECONDS}, interleaved"
    );

    let configs: [(&str, Option<(&str, &str)>); 5] = [
        ("nothing attached", None),
        (
            "cgroup_skb, traffic not targeted",
            Some((&untargeted, "--drop")),
        ),
        ("cgroup_skb, targeted, 0% drop", Some((&target, "--drop"))),
        // The other cgroup holds no process, so kchaos puts the program on the devices of its own
        // namespace: the veth this traffic crosses.
        (
            "tcx, traffic not targeted",
            Some((&untargeted, "--duplicate")),
        ),
        (
            "tcx, targeted, 0% duplicate",
            Some((&target, "--duplicate")),
        ),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..ROUNDS {
        for (i, (_, attach)) in configs.iter().enumerate() {
            let running = attach
                .map(|(cg, fault)| Running::start(&["net", "--cgroup", cg, fault, "0", "--quiet"]));
            let gbit = send(&lab.cgroup.path, to)?;
            if let Some(r) = running {
                r.terminate();
            }
            results[i].push(gbit);
        }
        eprintln!("  round {} of {ROUNDS} done", round + 1);
    }
    let base = median(&mut results[0]);
    println!(
        "\n{:<34} {:>12} {:>8}",
        "configuration", "Gbit/s (med)", "ratio"
    );
    for ((name, _), r) in configs.iter().zip(results.iter_mut()) {
        let m = median(r);
        println!("{name:<34} {m:>12.2} {:>8.3}", m / base);
    }
    per_run_cost(&target, &untargeted, &lab.cgroup.path, to, &lab.host_if)
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
    program_stats(&integration_tests::cgroup_programs(
        Path::new(cg),
        integration_tests::attach_type::INET_EGRESS,
    ))
}

/// (runs, total ns) so far of the programs `ids`.
fn program_stats(ids: &[u32]) -> (u64, u128) {
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
fn per_run_cost(
    target: &str,
    untargeted: &str,
    cgroup: &Path,
    to: SocketAddr,
    device: &str,
) -> Result<()> {
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(sysctl)?.trim().to_owned();
    std::fs::write(sysctl, "1")?;
    let udp_to = SocketAddr::from((to.ip(), 9));
    let result = (|| -> Result<()> {
        println!("\nper program run (kernel.bpf_stats_enabled), median of {ROUNDS}:");
        let configs: [(&str, &str, &[&str]); 9] = [
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
            // The tcx program runs for every packet on the device; a packet of another cgroup costs
            // it one ancestor-id helper and one hash lookup.
            ("tcx: UDP, not targeted", untargeted, &["--duplicate", "0"]),
            ("tcx: UDP, --duplicate 0", target, &["--duplicate", "0"]),
            (
                "tcx: UDP, --duplicate 1 --corrupt 1",
                target,
                &["--duplicate", "1", "--corrupt", "1"],
            ),
        ];
        for (label, floor) in [
            ("floor: no-op cgroup_skb, UDP", Floor::CgroupSkb(cgroup)),
            ("floor: no-op tcx, UDP", Floor::Tcx(device)),
        ] {
            let mut per_run = Vec::new();
            for _ in 0..ROUNDS {
                let (runs, ns) = floor.measure(|| udp_flood(cgroup, udp_to, 100_000))?;
                per_run.push(ns as f64 / runs.max(1) as f64);
            }
            print_per_run(label, ROUNDS as u64 * 100_000, &mut per_run);
        }
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
                let (runs, ns) = if label.starts_with("tcx") {
                    program_stats(&integration_tests::tcx_egress_programs(device))
                } else {
                    egress_stats(cg)
                };
                running.terminate();
                total_runs += runs;
                if runs > 0 {
                    per_run.push(ns as f64 / runs as f64);
                }
            }
            print_per_run(label, total_runs, &mut per_run);
        }
        Ok(())
    })();
    std::fs::write(sysctl, before)?;
    std::thread::sleep(Duration::from_millis(10));
    result
}

fn print_per_run(label: &str, total_runs: u64, per_run: &mut [f64]) {
    if per_run.is_empty() {
        println!("  {label:<38} 0 runs: the program never ran for this traffic (0 ns per packet)");
    } else {
        let lo = per_run.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per_run.iter().copied().fold(0.0, f64::max);
        println!(
            "  {label:<38} {total_runs} runs, {:.1} ns per run (range {lo:.1}-{hi:.1})",
            median(per_run)
        );
    }
}

/// A program that does nothing, where the fault's would run: what any program there costs a
/// packet, bpf_stats' own two clock reads included.
enum Floor<'a> {
    /// `noop_skb_egress` on the cgroup.
    CgroupSkb(&'a Path),
    /// `noop_tc` linked by tcx to the device's egress.
    Tcx(&'a str),
}

impl Floor<'_> {
    /// Attaches the no-op program, runs `traffic`, detaches: the program's (runs, total ns).
    fn measure(&self, traffic: impl FnOnce() -> Result<()>) -> Result<(u64, u128)> {
        use aya::programs::{
            CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, LinkOrder, SchedClassifier,
            TcAttachType, tc::TcAttachOptions,
        };
        let mut ebpf = chaos_userspace::engine::ebpf::load()?;
        let ids = match self {
            Floor::CgroupSkb(cg) => {
                let prog: &mut CgroupSkb = ebpf
                    .program_mut("noop_skb_egress")
                    .context("no noop_skb_egress program in the object")?
                    .try_into()?;
                prog.load()?;
                let dir = std::fs::File::open(cg)?;
                prog.attach(&dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)?;
                integration_tests::cgroup_programs(cg, integration_tests::attach_type::INET_EGRESS)
            }
            Floor::Tcx(dev) => {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut("noop_tc")
                    .context("no noop_tc program in the object")?
                    .try_into()?;
                prog.load()?;
                prog.attach_with_options(
                    dev,
                    TcAttachType::Egress,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )?;
                integration_tests::tcx_egress_programs(dev)
            }
        };
        traffic()?;
        // Dropping `ebpf` detaches the program.
        Ok(program_stats(&ids))
    }
}
