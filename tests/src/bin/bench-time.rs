//! `cargo xtask bench time`: a `clock_gettime(CLOCK_REALTIME)` loop in the target cgroup untouched,
//! with `kchaos time --offset +1h` armed on it, and under libfaketime (`faketime +1h`, LD_PRELOAD), as
//! ratios of calls per second to the first, interleaved in one run. Each shifted loop also reports
//! the shift it saw, so a run that did not shift shows.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use integration_tests::{Running, TempDir, lab::LabCgroup, tag};

const ROUNDS: usize = 7;
const CALLS: &str = "2000000";
/// Time the fault takes to hook the freshly exec'd loop (a tick) before it starts counting.
const SETTLE_MS: &str = "200";

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root");
    }
    let dir = TempDir::new("bench-time");
    let src = dir.0.join("clk.c");
    std::fs::write(&src, include_str!("../time_helper.c"))?;
    let bin = dir.0.join("clk");
    let built = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .context("running cc (the benchmark builds a C clock loop)")?;
    if !built.success() {
        bail!("cc could not build the clock loop");
    }
    let target = LabCgroup::create(&format!("kchaos-bench-{}", tag("t")))?;
    let t = target.path.display().to_string();
    let has_faketime = Command::new("faketime").arg("--version").output().is_ok();
    let names = [
        "untouched",
        "kchaos time --offset +1h",
        "faketime -f +1h (libfaketime)",
    ];
    let mut ns: [Vec<f64>; 3] = Default::default();
    let mut shift: [f64; 3] = [0.0; 3];
    for _ in 0..ROUNDS {
        for i in 0..3 {
            if i == 2 && !has_faketime {
                continue;
            }
            let running = (i == 1)
                .then(|| Running::start(&["time", "--cgroup", &t, "--offset", "+1h", "--quiet"]));
            let (n, s) = loop_ns(&bin, &target.path, i == 2)?;
            ns[i].push(n);
            shift[i] = s;
            if let Some(r) = running {
                r.terminate();
            }
        }
    }
    let base = median(&mut ns[0]);
    println!(
        "\nbench time: {ROUNDS} rounds x {CALLS} clock_gettime(CLOCK_REALTIME) calls, interleaved"
    );
    println!(
        "{:<30} {:>9} {:>16} {:>12}",
        "configuration", "ns/call", "ratio (median)", "shift seen"
    );
    for (i, name) in names.iter().enumerate() {
        if ns[i].is_empty() {
            println!(
                "{name:<30} {:>9}",
                "n/a (no faketime: apt-get install faketime)"
            );
            continue;
        }
        let m = median(&mut ns[i]);
        println!(
            "{name:<30} {m:>9.2} {:>16.3} {:>11.0}s",
            base / m,
            shift[i] / 1e9
        );
    }
    Ok(())
}

/// ns per call of the loop run in `cgroup` (under faketime when asked), and the shift it saw (ns).
fn loop_ns(bin: &Path, cgroup: &Path, faketime: bool) -> Result<(f64, f64)> {
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
        cgroup.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script, "sh"]);
    if faketime {
        cmd.args(["faketime", "-f", "+1h"]);
    }
    let out = cmd.arg(bin).args(["bench", CALLS, SETTLE_MS]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let ns = it.next().and_then(|v| v.parse().ok());
    let shift = it.next().and_then(|v| v.parse().ok());
    match (ns, shift) {
        (Some(n), Some(s)) => Ok((n, s)),
        _ => bail!("the clock loop printed {text:?}"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
