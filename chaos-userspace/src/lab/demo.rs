//! `kchaos demo` (what `cargo xtask run` runs): a lab, two clients (one inside the target cgroup, one
//! outside), a 30 % drop and then a partition, and a table of what each client saw beside the kernel's
//! counters. Everything is removed at the end, also on Ctrl-C.

use std::{
    io::{self, BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::lab::{EchoServer, Lab};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the lab is being removed");
    }
    Ok(())
}

/// A client: its label, the cgroup it runs in (None: outside), where it sends.
type Client<'a> = (&'static str, Option<&'a Path>, SocketAddr);

/// A demo phase: its name, the `kchaos net` fault arguments (none: baseline), its clients.
type Phase<'a> = (&'static str, Vec<String>, Vec<Client<'a>>);

/// A row of the results table.
struct Row {
    phase: &'static str,
    client: String,
    sent: u64,
    received: u64,
    kernel: String,
}

pub fn run() -> Result<()> {
    crate::require_root("kchaos demo", crate::ROOT_BECAUSE)?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let exe = std::env::current_exe().context("finding the kchaos binary")?;
    let tag = format!("d{}", std::process::id() % 100_000);
    let lab = Lab::create(&tag).context("building the demo lab (netns, veth, cgroup)")?;
    let s7000 = EchoServer::start(&lab.netns, SocketAddr::from((lab.server_addr, 7000)))?;
    let _s7001 = EchoServer::start(&lab.netns, SocketAddr::from((lab.server_addr, 7001)))?;
    println!("kchaos demo lab:");
    println!(
        "  netns {} with UDP echo servers on {}:7000 and :7001",
        lab.netns.name, lab.server_addr
    );
    println!("  veth {} ({}) <-> the netns", lab.host_if, lab.host_addr);
    println!("  target cgroup {}", lab.cgroup.path.display());
    println!(
        "  client A runs inside the target cgroup, client B outside it; both talk to the netns\n"
    );

    let inside = Some(lab.cgroup.path.as_path());
    let to7000 = SocketAddr::from((lab.server_addr, 7000));
    let to7001 = SocketAddr::from((lab.server_addr, 7001));
    let mut rows = Vec::new();
    let phases: [Phase; 3] = [
        (
            "no fault",
            vec![],
            vec![
                ("A (target) -> :7000", inside, to7000),
                ("B (outside) -> :7000", None, to7000),
            ],
        ),
        (
            "drop 30% (egress)",
            vec!["--percent".into(), "30".into()],
            vec![
                ("A (target) -> :7000", inside, to7000),
                ("B (outside) -> :7000", None, to7000),
            ],
        ),
        (
            "partition :7000",
            vec!["--partition".into(), format!("{}:7000", lab.server_addr)],
            vec![
                ("A (target) -> :7000", inside, to7000),
                ("A (target) -> :7001", inside, to7001),
                ("B (outside) -> :7000", None, to7000),
            ],
        ),
    ];
    for (phase, fault_args, clients) in phases {
        check_interrupt()?;
        println!("== {phase}");
        let report_path = std::env::temp_dir().join(format!(
            "kchaos-demo-{}-{}.json",
            std::process::id(),
            rows.len()
        ));
        let injector = if fault_args.is_empty() {
            None
        } else {
            Some(Injector::start(
                &exe,
                &lab.cgroup.path,
                &fault_args,
                &report_path,
            )?)
        };
        let before = s7000.received.load(Ordering::Relaxed);
        let results = run_clients(&exe, &clients)?;
        let kernel = match injector {
            Some(inj) => inj.finish()?,
            None => "-".into(),
        };
        for (i, ((name, _, _), (sent, received))) in clients.iter().zip(results).enumerate() {
            // The counters are the fault's, not a client's: show them once per phase.
            let kernel = if i == 0 {
                kernel.clone()
            } else {
                String::new()
            };
            rows.push(Row {
                phase,
                client: name.to_string(),
                sent,
                received,
                kernel,
            });
        }
        tracing::debug!(
            "server :7000 received {}",
            s7000.received.load(Ordering::Relaxed) - before
        );
    }
    print_table(&rows);
    println!(
        "\nThe lab is removed now: netns, veth, cgroup; kchaos net detached itself after each phase."
    );
    Ok(())
}

/// A `kchaos net` child injecting into the lab's cgroup.
struct Injector {
    child: Child,
    report: PathBuf,
    cgroup: PathBuf,
}

impl Injector {
    fn start(exe: &Path, cgroup: &Path, fault: &[String], report: &Path) -> Result<Self> {
        let mut child = Command::new(exe)
            .arg("net")
            .arg("--cgroup")
            .arg(cgroup)
            .args(fault)
            .args(["--duration", "60s", "--quiet", "--json"])
            .arg(report)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting kchaos net")?;
        let stdout = child.stdout.take().context("kchaos net's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut injector = Self {
            child,
            report: report.to_path_buf(),
            cgroup: cgroup.to_path_buf(),
        };
        // Wait until it says it is armed; echo what it attached.
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    println!("   | {line}");
                    if line.trim_start().starts_with("armed") {
                        break;
                    }
                }
                _ => {
                    let status = injector.child.wait()?;
                    bail!("kchaos net ended before arming ({status})");
                }
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Ok(injector)
    }

    /// Ends the injection with SIGTERM (as `kchaos stop` would) and reads the kernel's counters.
    fn finish(mut self) -> Result<String> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        // 128 + SIGTERM is how kchaos says it ended by the SIGTERM sent just above: what the
        // demo asked for, not a failure.
        let report = crate::report::Report::read_json(&self.report);
        // Removed whatever happened, also when kchaos failed.
        let _ = std::fs::remove_file(&self.report);
        if !status.success() && status.code() != Some(128 + libc::SIGTERM) {
            bail!("kchaos net failed ({status})");
        }
        // The next phase's figures are only the next fault's if this one's programs are gone: the
        // table's claim ("detached itself after each phase") is checked, not assumed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = attached_skb_programs(&self.cgroup)?;
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{left} cgroup_skb program(s) still attached to {} 5 s after kchaos net ended",
                    self.cgroup.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let report = report?;
        let counters = report
            .faults
            .first()
            .map(|f| f.counters.clone())
            .unwrap_or_default();
        // Both directions together.
        let both = |what: &str| {
            ["egress", "ingress"]
                .iter()
                .map(|dir| counters.get(&format!("{dir}.{what}")).copied().unwrap_or(0))
                .sum::<u64>()
        };
        Ok(format!(
            "seen {} dropped {} partitioned {}",
            both("seen"),
            both("dropped"),
            both("partitioned")
        ))
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How many cgroup_skb programs (ingress and egress) are attached to `cgroup` itself: the kernel's
/// own answer (BPF_PROG_QUERY), which aya 0.14 has no public call for.
fn attached_skb_programs(cgroup: &Path) -> Result<u32> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_CGROUP_INET_INGRESS: u32 = 0;
    const BPF_CGROUP_INET_EGRESS: u32 = 1;
    let dir = std::fs::File::open(cgroup)
        .with_context(|| format!("opening the cgroup {}", cgroup.display()))?;
    let mut total = 0;
    for attach_type in [BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS] {
        // `union bpf_attr`'s query part: target_fd, attach_type, query_flags, attach_flags (u32
        // each), prog_ids (u64: null, so the kernel only counts), prog_cnt (u32); the rest zero.
        let mut attr = [0u32; 16];
        attr[0] = std::os::fd::AsRawFd::as_raw_fd(&dir) as u32;
        attr[1] = attach_type;
        // SAFETY: `attr` is a zeroed, large enough `union bpf_attr` that outlives the call; with
        // a null prog_ids the kernel writes only prog_cnt (and attach_flags) inside it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!(
                    "asking the kernel which programs run for {}",
                    cgroup.display()
                )
            });
        }
        total += attr[6];
    }
    Ok(total)
}

/// Runs the clients at the same time; returns (sent, received) of each.
fn run_clients(
    exe: &Path,
    clients: &[(&str, Option<&Path>, SocketAddr)],
) -> Result<Vec<(u64, u64)>> {
    let mut children = Vec::new();
    for (_, cgroup, to) in clients {
        let mut cmd = Command::new(exe);
        cmd.arg("traffic");
        if let Some(cg) = cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        cmd.args([
            "udp-echo",
            "--to",
            &to.to_string(),
            "--count",
            "5000",
            "--rate",
            "5000",
        ]);
        children.push(
            cmd.stdout(Stdio::piped())
                .spawn()
                .context("starting a client")?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut results = Vec::new();
    for child in children {
        let out = child.wait_with_output()?;
        if Instant::now() > deadline || !out.status.success() {
            bail!("a client failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("reading a client's result")?;
        results.push((
            v["sent"].as_u64().unwrap_or(0),
            v["received"].as_u64().unwrap_or(0),
        ));
    }
    Ok(results)
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<20} {:<22} {:>6} {:>9} {:>7}   kernel counters (kchaos net)",
        "phase", "client", "sent", "received", "loss"
    );
    for r in rows {
        let loss = if r.sent == 0 {
            0.0
        } else {
            100.0 * (r.sent - r.received.min(r.sent)) as f64 / r.sent as f64
        };
        println!(
            "{:<20} {:<22} {:>6} {:>9} {:>6.1}%   {}",
            r.phase, r.client, r.sent, r.received, loss, r.kernel
        );
    }
}
