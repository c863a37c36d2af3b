//! `cargo xtask bench net --vm`, second part: kchaos beside `tc netem` on the same veth in the same
//! boot, fault by fault. Each round runs every fault once with kchaos (the sender in the lab's target
//! cgroup) and once with netem on the host side of the veth (the sender outside any cgroup: netem
//! delays every packet leaving the device), the two alternating which goes first from round to round.
//! The table gives, for each figure, the median over the rounds and its spread (min–max).
//!
//! Needs root, sch_fq (kchaos's delay and rate) and sch_netem: runs in the VM kernel, says SKIP and
//! exits 0 where either is absent.

use std::{
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use chaos_userspace::kinds::net::loss::{LossModel, theory};
use integration_tests::{
    Netem, Running, echo_rtts, kernel_label, lab, mbit, quantile, tag, tcp_sink, traffic,
    udp_echo_report, udp_rate,
};

/// UDP round trips per delay measurement (per tool, per round).
const PROBES: u64 = 2000;
/// Datagrams per loss measurement (per tool, per round): 5 rounds make 40k.
const LOSS_PACKETS: u64 = 8000;
/// Datagrams per duplicate, corrupt and reorder measurement (per tool, per round): 5 rounds make 20k.
const PACKETS: u64 = 4000;
const MS: f64 = 1000.0; // µs per ms

const USAGE: &str =
    "usage: bench-netem [--rounds N] [--only delay|loss|duplicate|corrupt|reorder|rate]";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tool {
    Kchaos,
    Netem,
}

/// What a fault is, and so how it is measured and which figures it yields.
#[derive(Clone, Copy)]
enum Kind {
    /// Added delay of UDP round trips: D and J in ms.
    Delay {
        d: f64,
        j: f64,
    },
    /// Loss of numbered datagrams; the model's theory (loss 0-1, mean burst) when it has bursts.
    Loss {
        loss: f64,
        burst: Option<f64>,
    },
    Duplicate {
        pct: f64,
    },
    Corrupt {
        pct: f64,
    },
    Reorder {
        pct: f64,
    },
    /// TCP bulk goodput: Mbit/s configured.
    Rate {
        mbit: f64,
    },
}

struct Fault {
    group: &'static str,
    label: String,
    kchaos: Vec<String>,
    netem: Vec<String>,
    kind: Kind,
}

/// How a figure is judged.
#[derive(Clone, Copy)]
enum Goal {
    /// An error (0 is perfect): only against netem's (|kchaos| ≤ |netem|).
    Error,
    /// A percentage: within ±0.5 pp of `target`, and no farther from it than netem's.
    Points(f64),
    /// A value within `tol` (fraction) of `target`, and no farther than netem's.
    Relative(f64, f64),
}

struct Row {
    fault: String,
    figure: &'static str,
    configured: String,
    goal: Goal,
    kchaos: Vec<f64>,
    netem: Vec<f64>,
    note: String,
}

fn main() -> Result<()> {
    let (rounds, only) = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-netem needs root");
    }
    if !chaos_userspace::engine::qdisc::kernel_has_fq() {
        println!(
            "SKIP bench-netem [{}]: this kernel has no sch_fq (CONFIG_NET_SCH_FQ); run `cargo xtask \
             bench net --vm`",
            kernel_label()
        );
        return Ok(());
    }
    let lab = lab::Lab::create(&tag("n"))?;
    if Netem::add(&lab.host_if, &["delay", "1ms"]).is_err() {
        println!(
            "SKIP bench-netem [{}]: this kernel has no sch_netem",
            kernel_label()
        );
        return Ok(());
    }
    let to = SocketAddr::from((lab.server_addr, 7000));
    let _server = lab::EchoServer::start(&lab.netns, to)?;

    let faults: Vec<Fault> = faults()
        .into_iter()
        .filter(|f| only.as_deref().is_none_or(|o| o == f.group))
        .collect();
    let mut rows = table_rows(&faults);
    let mut unlimited = Vec::new();
    let needs_rate = faults.iter().any(|f| matches!(f.kind, Kind::Rate { .. }));
    let needs_delay = faults.iter().any(|f| matches!(f.kind, Kind::Delay { .. }));
    let mut csum_errors = Vec::new();
    let mut flipped = Vec::new();
    println!(
        "bench netem [{}]: {rounds} round(s), {} faults, kchaos and netem alternating first",
        kernel_label(),
        faults.len()
    );
    let started = Instant::now();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Tool::Kchaos, Tool::Netem]
        } else {
            [Tool::Netem, Tool::Kchaos]
        };
        // The round trip with no fault, from the target cgroup: what a delay adds is measured from it.
        let base = if needs_delay {
            let b = echo_rtts(Some(&lab.cgroup.path), None, to, PROBES, "400")?;
            quantile(&b, 0.5)
        } else {
            0.0
        };
        if needs_rate {
            unlimited.push(goodput(&lab, None, Duration::from_secs(2))?);
        }
        let mut first = 0;
        for fault in &faults {
            let figures = rows_of(fault);
            for tool in order {
                let (values, csum) = measure(&lab, to, fault, tool, base)?;
                for (k, v) in values.into_iter().enumerate() {
                    let row = &mut rows[first + k];
                    match tool {
                        Tool::Kchaos => row.kchaos.push(v),
                        Tool::Netem => row.netem.push(v),
                    }
                }
                if let Some(c) = csum {
                    match tool {
                        Tool::Netem => csum_errors.push(c),
                        Tool::Kchaos => flipped.push(c),
                    }
                }
            }
            first += figures;
        }
        eprintln!(
            "  round {} of {rounds} done ({:.0} s so far)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }
    print_table(&mut rows, &mut unlimited, &mut csum_errors, &mut flipped);
    Ok(())
}

fn parse_args() -> Result<(usize, Option<String>)> {
    let mut rounds = 5;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n: &usize| n >= 1)
                    .with_context(|| format!("--rounds takes a number from 1 up\n{USAGE}"))?;
            }
            "--only" => {
                let g = args.next().context(USAGE)?;
                if !["delay", "loss", "duplicate", "corrupt", "reorder", "rate"]
                    .contains(&g.as_str())
                {
                    bail!("--only {g}: unknown fault group\n{USAGE}");
                }
                only = Some(g);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    Ok((rounds, only))
}

fn faults() -> Vec<Fault> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut f = Vec::new();
    for d in [10u32, 50, 200] {
        let ms = format!("{d}ms");
        f.push(Fault {
            group: "delay",
            label: format!("delay {ms}"),
            kchaos: s(&["--delay", &ms]),
            netem: s(&["delay", &ms]),
            kind: Kind::Delay {
                d: d as f64,
                j: 0.0,
            },
        });
    }
    f.push(Fault {
        group: "delay",
        label: "delay 50ms ±5ms".into(),
        kchaos: s(&["--delay", "50ms", "--jitter", "5ms"]),
        netem: s(&["delay", "50ms", "5ms"]),
        kind: Kind::Delay { d: 50.0, j: 5.0 },
    });
    f.push(Fault {
        group: "loss",
        label: "loss random 5%".into(),
        kchaos: s(&["--percent", "5"]),
        netem: s(&["loss", "random", "5%"]),
        kind: Kind::Loss {
            loss: 0.05,
            burst: None,
        },
    });
    // Gilbert-Elliott with p = 1% (Good to Bad), r = 30% (Bad to Good), every packet lost in Bad and
    // none in Good: netem's `loss gemodel 1% 30%` means the same (its defaults 1-h = 100%, 1-k = 0%).
    let ge = "gemodel:1,30";
    let th = LossModel::parse(ge)
        .map(|m| theory(&m.chain()))
        .map_err(|e| anyhow::anyhow!("{e}"));
    if let Ok(th) = th {
        f.push(Fault {
            group: "loss",
            label: "loss gemodel 1% 30%".into(),
            kchaos: s(&["--loss-model", ge]),
            netem: s(&["loss", "gemodel", "1%", "30%"]),
            kind: Kind::Loss {
                loss: th.loss,
                burst: Some(th.mean_burst),
            },
        });
    }
    f.push(Fault {
        group: "duplicate",
        label: "duplicate 5%".into(),
        kchaos: s(&["--duplicate", "5"]),
        netem: s(&["duplicate", "5%"]),
        kind: Kind::Duplicate { pct: 5.0 },
    });
    f.push(Fault {
        group: "corrupt",
        label: "corrupt 5%".into(),
        kchaos: s(&["--corrupt", "5"]),
        netem: s(&["corrupt", "5%"]),
        kind: Kind::Corrupt { pct: 5.0 },
    });
    f.push(Fault {
        group: "reorder",
        label: "delay 10ms reorder 25%".into(),
        kchaos: s(&["--delay", "10ms", "--reorder", "25"]),
        netem: s(&["delay", "10ms", "reorder", "25%"]),
        kind: Kind::Reorder { pct: 25.0 },
    });
    for mbit in [1u32, 10, 100] {
        let r = format!("{mbit}mbit");
        f.push(Fault {
            group: "rate",
            label: format!("rate {mbit} Mbit/s"),
            kchaos: s(&["--rate", &r]),
            netem: s(&["rate", &r]),
            kind: Kind::Rate { mbit: mbit as f64 },
        });
    }
    f
}

/// How many figures (table rows) a fault yields.
fn rows_of(f: &Fault) -> usize {
    match f.kind {
        Kind::Delay { .. } => 2,
        Kind::Loss { burst: Some(_), .. } => 2,
        _ => 1,
    }
}

fn table_rows(faults: &[Fault]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut row = |fault: &str, figure, configured: String, goal| {
        rows.push(Row {
            fault: fault.to_owned(),
            figure,
            configured,
            goal,
            kchaos: Vec::new(),
            netem: Vec::new(),
            note: String::new(),
        })
    };
    for f in faults {
        let l = f.label.as_str();
        match f.kind {
            Kind::Delay { j, .. } => {
                row(l, "|p50 - D| ms", "0".into(), Goal::Error);
                let p99 = if j > 0.0 {
                    format!("0 (p99 = D+{:.2})", 0.98 * j)
                } else {
                    "0".into()
                };
                row(l, "p99 - p99_cfg ms", p99, Goal::Error);
            }
            Kind::Loss { loss, burst } => {
                row(
                    l,
                    "loss %",
                    format!("{:.2}", loss * 100.0),
                    Goal::Points(loss * 100.0),
                );
                if let Some(b) = burst {
                    row(l, "mean burst", format!("{b:.2}"), Goal::Relative(b, 0.10));
                }
            }
            Kind::Duplicate { pct } => {
                row(l, "duplicate %", format!("{pct:.2}"), Goal::Points(pct))
            }
            Kind::Corrupt { pct } => row(l, "not intact %", format!("{pct:.2}"), Goal::Points(pct)),
            Kind::Reorder { pct } => row(l, "overtook %", format!("{pct:.2}"), Goal::Points(pct)),
            Kind::Rate { mbit } => row(
                l,
                "goodput err %",
                format!("0 ({mbit} Mbit/s)"),
                Goal::Relative(0.0, 0.02),
            ),
        }
    }
    rows
}

/// One measurement of `fault` under `tool`: its figures (in the order of `table_rows`), and for
/// corrupt the share of datagrams sent (%) that netem's receiver dropped for a bad UDP checksum
/// (InCsumErrors), or that came back to kchaos's sender with a bad check word.
fn measure(
    lab: &lab::Lab,
    to: SocketAddr,
    fault: &Fault,
    tool: Tool,
    base_us: f64,
) -> Result<(Vec<f64>, Option<f64>)> {
    let armed = Armed::new(lab, fault, tool)?;
    let cg = match tool {
        Tool::Kchaos => Some(lab.cgroup.path.as_path()),
        Tool::Netem => None,
    };
    let mut csum = None;
    let figures = match fault.kind {
        Kind::Delay { d, j } => {
            // 200 ms at 400/s would keep 80 datagrams of the one flow waiting; 300/s keeps 60.
            let rate = if d >= 100.0 { "300" } else { "400" };
            let r = echo_rtts(cg, None, to, PROBES, rate)?;
            let added = |p: f64| quantile(&r, p) - base_us;
            vec![
                (added(0.5) - d * MS).abs() / MS,
                (added(0.99) - (d + 0.98 * j) * MS) / MS,
            ]
        }
        Kind::Loss { burst, .. } => {
            let v = udp_echo_report(cg, None, to, LOSS_PACKETS, udp_rate(), &["--wait", "1s"]);
            let (sent, received, bursts) =
                (n(&v, "sent")?, n(&v, "received")?, n(&v, "loss_bursts")?);
            let lost = sent.saturating_sub(received) as f64;
            let mut f = vec![100.0 * lost / sent.max(1) as f64];
            if burst.is_some() {
                f.push(lost / bursts.max(1) as f64);
            }
            f
        }
        Kind::Duplicate { .. } => {
            let v = udp_echo_report(cg, None, to, PACKETS, udp_rate(), &["--wait", "1s"]);
            vec![100.0 * n(&v, "duplicates")? as f64 / n(&v, "sent")?.max(1) as f64]
        }
        Kind::Corrupt { .. } => {
            let before = in_csum_errors(lab)?;
            let v = udp_echo_report(cg, None, to, PACKETS, udp_rate(), &["--wait", "1s"]);
            let sent = n(&v, "sent")?.max(1) as f64;
            csum = Some(match tool {
                Tool::Netem => 100.0 * (in_csum_errors(lab)? - before) as f64 / sent,
                Tool::Kchaos => 100.0 * n(&v, "corrupted")? as f64 / sent,
            });
            // A datagram corrupted on its way to the echo server comes back either with a bad check
            // word (kchaos leaves the checksum, which the veth's offload does not verify) or not at
            // all (netem fixes the checksum up first, so the receiver drops it, or the bit hit a
            // header): either way its sequence number never comes back whole.
            vec![100.0 * (sent - n(&v, "received")? as f64) / sent]
        }
        Kind::Reorder { .. } => {
            let v = udp_echo_report(cg, None, to, PACKETS, "1000", &["--wait", "1s"]);
            vec![100.0 * n(&v, "reordered")? as f64 / n(&v, "sent")?.max(1) as f64]
        }
        Kind::Rate { mbit } => {
            let secs = if mbit >= 100.0 { 2 } else { 3 };
            let got = goodput(lab, cg, Duration::from_secs(secs))?;
            // Each counts its own bytes: kchaos the IP packet (1500 for 1448 of TCP payload with
            // timestamps), netem the frame with its Ethernet header (1514).
            let wire = match tool {
                Tool::Kchaos => 1500.0,
                Tool::Netem => 1514.0,
            };
            let expected = mbit * 1448.0 / wire;
            vec![100.0 * (got - expected) / expected]
        }
    };
    armed.disarm()?;
    Ok((figures, csum))
}

fn n(v: &serde_json::Value, key: &str) -> Result<u64> {
    v[key]
        .as_u64()
        .with_context(|| format!("no '{key}' in {v}"))
}

/// A fault in place: kchaos running, or netem on the device.
enum Armed {
    Kchaos(Running),
    Netem(Netem),
}

impl Armed {
    fn new(lab: &lab::Lab, fault: &Fault, tool: Tool) -> Result<Self> {
        Ok(match tool {
            Tool::Kchaos => {
                let cg = lab.cgroup.path.display().to_string();
                let mut args = vec!["net", "--cgroup", &cg];
                args.extend(fault.kchaos.iter().map(String::as_str));
                args.push("--quiet");
                Armed::Kchaos(Running::start(&args))
            }
            Tool::Netem => {
                let args: Vec<&str> = fault.netem.iter().map(String::as_str).collect();
                Armed::Netem(Netem::add(&lab.host_if, &args)?)
            }
        })
    }

    fn disarm(self) -> Result<()> {
        match self {
            Armed::Kchaos(r) => {
                let (code, out) = r.terminate();
                if code != 143 {
                    bail!("kchaos ended with {code} on SIGTERM: {out:?}");
                }
            }
            // Dropping it removes the qdisc.
            Armed::Netem(n) => drop(n),
        }
        Ok(())
    }
}

/// The Udp InCsumErrors counter of the lab's namespace (the echo server's side).
fn in_csum_errors(lab: &lab::Lab) -> Result<u64> {
    let text = lab
        .netns
        // thread-self: /proc/net is /proc/self/net, the main thread's namespace, not this thread's.
        .spawn(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?
        .join()
        .map_err(|_| anyhow::anyhow!("snmp reader thread"))???;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == "InCsumErrors")
        .and_then(|(_, v)| v.parse().ok())
        .context("no Udp InCsumErrors in /proc/net/snmp")
}

static PORT: AtomicU16 = AtomicU16::new(7100);

/// Mbit/s of TCP payload a receiver in the lab's namespace got from `secs` of bulk sent from `cg`
/// (or outside any target), counted from its first byte to its last.
fn goodput(lab: &lab::Lab, cg: Option<&Path>, secs: Duration) -> Result<f64> {
    let to = SocketAddr::from((lab.server_addr, PORT.fetch_add(1, Ordering::Relaxed)));
    let sink = tcp_sink(&lab.netns, to)?;
    let secs = format!("{}s", secs.as_secs());
    traffic(
        cg,
        None,
        &["tcp-send", "--to", &to.to_string(), "--for", &secs],
    );
    let got = sink
        .join()
        .map_err(|_| anyhow::anyhow!("the TCP sink's thread panicked"))??;
    let rate = mbit(&[got]);
    if rate <= 0.0 {
        bail!("the TCP sink got {} bytes in no time", got.0);
    }
    Ok(rate)
}

/// Median, min and max.
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let m = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (m, v[0], v[v.len() - 1])
}

fn print_table(rows: &mut [Row], unlimited: &mut [f64], csum: &mut [f64], flipped: &mut [f64]) {
    let rounds = rows.first().map_or(0, |r| r.kchaos.len());
    let unl = (!unlimited.is_empty()).then(|| spread(unlimited));
    for r in rows.iter_mut() {
        if let (Some((u, _, _)), Some(mbit)) = (
            unl,
            r.configured
                .strip_prefix("0 (")
                .and_then(|s| s.strip_suffix(" Mbit/s)"))
                .and_then(|s| s.parse::<f64>().ok()),
        ) && u < 2.0 * mbit
        {
            r.note = format!("(VM too slow: unlimited {u:.0} Mbit/s)");
        }
    }
    println!(
        "\nkchaos beside netem, {rounds} round(s): median [min–max] over rounds; kchaos's sender in \
         the target cgroup, netem's outside any (netem on the veth's root)"
    );
    println!(
        "{:<24} {:<17} {:<18} {:<26} {:<26} verdict",
        "fault", "figure", "configured", "kchaos", "netem"
    );
    for r in rows.iter_mut() {
        if r.kchaos.is_empty() || r.netem.is_empty() {
            continue;
        }
        let (k, klo, khi) = spread(&mut r.kchaos);
        let (nm, nlo, nhi) = spread(&mut r.netem);
        let cell = |m: f64, lo: f64, hi: f64| format!("{m:.3} [{lo:.3}–{hi:.3}]");
        let (target, tol) = match r.goal {
            Goal::Error => (0.0, None),
            Goal::Points(t) => (t, Some((0.5, "±0.5 pp"))),
            Goal::Relative(0.0, f) => (0.0, Some((f * 100.0, "±2%"))),
            Goal::Relative(t, f) => (t, Some((f * t, "±10%"))),
        };
        let (ke, ne) = ((k - target).abs(), (nm - target).abs());
        let mut verdict = Vec::new();
        if let Some((tol, label)) = tol {
            verdict.push(if ke <= tol {
                format!("within {label}")
            } else {
                format!("OFF {label}")
            });
        }
        verdict.push(if ke <= ne {
            "no worse than netem".to_owned()
        } else {
            format!("worse than netem by {:.3}", ke - ne)
        });
        if !r.note.is_empty() {
            verdict.push(r.note.clone());
        }
        println!(
            "{:<24} {:<17} {:<18} {:<26} {:<26} {}",
            r.fault,
            r.figure,
            r.configured,
            cell(k, klo, khi),
            cell(nm, nlo, nhi),
            verdict.join("; ")
        );
    }
    if let Some((u, lo, hi)) = unl {
        println!(
            "unlimited TCP bulk (no fault, same veth): {u:.1} Mbit/s [{lo:.1}–{hi:.1}]; goodput error \
             is against each tool's own accounting: kchaos IP bytes (1448 of 1500), netem frame \
             bytes (1448 of 1514)"
        );
    }
    if !csum.is_empty() {
        let (m, lo, hi) = spread(csum);
        println!(
            "corrupt: netem's datagrams the receiver's UDP dropped for a bad checksum (InCsumErrors): \
             {m:.3}% [{lo:.3}–{hi:.3}] of those sent (the rest of its flips hit a header)"
        );
    }
    if !flipped.is_empty() {
        let (m, lo, hi) = spread(flipped);
        println!(
            "corrupt: kchaos leaves the checksum, so its corrupted datagrams come back with a bad \
             check word: {m:.3}% [{lo:.3}–{hi:.3}] of those sent (the rest of \"not intact\" never came \
             back)"
        );
    }
    println!(
        "delay: added = round trip − the round's no-fault median; p99_cfg = D (+0.98 J: uniform \
         jitter). Goals: rates within ±0.5 pp of configured, goodput within ±2%, each no farther \
         from it than netem's."
    );
}
