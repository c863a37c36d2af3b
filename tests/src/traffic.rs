//! `kchaos traffic`: test traffic made by a real process (in a cgroup or namespace), and reading what
//! it saw.

use std::{
    io::{self, Read as _},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::Command,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use chaos_userspace::lab::Netns;

/// Runs `kchaos traffic [--cgroup CG] [--netns NS] MODE...` and parses its last JSON line.
pub fn traffic(cgroup: Option<&Path>, netns: Option<&Path>, mode: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(crate::kchaos());
    cmd.arg("traffic");
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    if let Some(ns) = netns {
        cmd.arg("--netns").arg(ns);
    }
    let out = cmd.args(mode).output().expect("running kchaos traffic");
    assert!(
        out.status.success(),
        "kchaos traffic {mode:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad traffic output {text:?}: {e}"))
}

/// How many calls failed with `errno` in a `kchaos traffic ... syscalls` result.
pub fn errno_count(v: &serde_json::Value, errno: i32) -> u64 {
    v["errnos"][errno.to_string()].as_u64().unwrap_or(0)
}

/// One TCP connect to `to` from inside `cgroup` (`kchaos traffic tcp-connect`, 1 s timeout): its JSON
/// result, `{"connected": true|false, "errno": ...}`.
pub fn tcp_connect_from(cgroup: &Path, to: std::net::SocketAddr) -> serde_json::Value {
    traffic(
        Some(cgroup),
        None,
        &["tcp-connect", "--to", &to.to_string(), "--timeout", "1s"],
    )
}

/// A UDP echo server on loopback, on a free port.
pub fn loopback_echo_server() -> (crate::lab::EchoServer, std::net::SocketAddr) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    (
        crate::lab::EchoServer::start_in(None, addr).expect("echo server"),
        addr,
    )
}

/// `count` numbered UDP datagrams to an echo server at `to` from inside `cgroup` and/or `netns`, at
/// the rate the kernel under test keeps up with: (sent, echoes received).
pub fn udp_echo(
    cgroup: Option<&Path>,
    netns: Option<&Path>,
    to: std::net::SocketAddr,
    count: u64,
) -> (u64, u64) {
    let v = udp_echo_report(cgroup, netns, to, count, crate::udp_rate(), &[]);
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no '{k}' in {v}"));
    (n("sent"), n("received"))
}

/// `kchaos traffic udp-echo` of `count` datagrams at `rate` a second to `to`, from inside `cgroup`
/// and/or `netns`, with `extra` arguments (`--rtt`, `--wait 1s`): its whole JSON result (sent,
/// received, duplicates, corrupted, reordered, rtt_us ...).
pub fn udp_echo_report(
    cgroup: Option<&Path>,
    netns: Option<&Path>,
    to: std::net::SocketAddr,
    count: u64,
    rate: &str,
    extra: &[&str],
) -> serde_json::Value {
    let (to, count) = (to.to_string(), count.to_string());
    let mut mode = vec!["udp-echo", "--to", &to, "--count", &count, "--rate", rate];
    mode.extend_from_slice(extra);
    traffic(cgroup, netns, &mode)
}

/// Sorted round-trip times in µs of `count` UDP echoes at `rate` a second to `to`, from inside
/// `cgroup` and/or `netns`; an error if one was lost (the quantiles would not be those of a delay).
pub fn echo_rtts(
    cgroup: Option<&Path>,
    netns: Option<&Path>,
    to: SocketAddr,
    count: u64,
    rate: &str,
) -> anyhow::Result<Vec<f64>> {
    let v = udp_echo_report(cgroup, netns, to, count, rate, &["--rtt", "--wait", "1s"]);
    if v["received"] != v["sent"] {
        anyhow::bail!("round-trip probes were lost: {v}");
    }
    let mut r = v["rtt_us"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no rtt_us in {v}"))?
        .iter()
        .map(|x| {
            x.as_f64()
                .ok_or_else(|| anyhow::anyhow!("a round trip that is not a number: {x}"))
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    if r.is_empty() {
        anyhow::bail!("no round trips");
    }
    r.sort_by(f64::total_cmp);
    Ok(r)
}

/// The `p` quantile (0-1) of sorted values: the nearest rank.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What a TCP sink received: bytes, and the instants of its first and last byte.
pub type Received = (u64, Instant, Instant);

/// Receives one TCP connection on `to` inside `netns`, reading until the sender closes; returns
/// once it listens.
pub fn tcp_sink(netns: &Netns, to: SocketAddr) -> io::Result<JoinHandle<io::Result<Received>>> {
    let log = tcp_sink_log(netns, to)?;
    Ok(std::thread::spawn(move || {
        let log = log
            .join()
            .map_err(|_| io::Error::other("the TCP sink's thread panicked"))??;
        let now = Instant::now();
        let first = log.first().map_or(now, |a| a.0);
        Ok(log
            .last()
            .map_or((0, now, now), |&(last, bytes)| (bytes, first, last)))
    }))
}

/// When a TCP sink read, and how many bytes it had then: the receiver's own clock of a transfer.
pub type Arrivals = Vec<(Instant, u64)>;

/// As `tcp_sink`, keeping the instant and running total of every read.
pub fn tcp_sink_log(netns: &Netns, to: SocketAddr) -> io::Result<JoinHandle<io::Result<Arrivals>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = netns.spawn(move || -> io::Result<Arrivals> {
        let listener = TcpListener::bind(to)?;
        let _ = ready_tx.send(());
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 << 10];
        let (mut bytes, mut log) = (0u64, Vec::new());
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            log.push((Instant::now(), bytes));
        }
        Ok(log)
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| io::Error::other(format!("the TCP sink on {to} did not start")))?;
    Ok(std::thread::spawn(move || {
        handle
            .join()
            .map_err(|_| io::Error::other("the TCP sink's thread panicked"))?
            .and_then(|r| r)
    }))
}

/// Mbit/s a sink received from `from` to `to`: the least-squares slope of its running total over
/// the reads in that span. A paced sender's GSO packet leaves whole at its departure time and lands
/// as one burst (at 1 Mbit/s TCP's 16 KB bursts come 130 ms apart), so bytes counted between two
/// instants would be off by up to a burst at each edge; the slope through the bursts is not.
pub fn rate_between(log: &Arrivals, from: Instant, to: Instant) -> f64 {
    let points: Vec<(f64, f64)> = log
        .iter()
        .filter(|a| a.0 >= from && a.0 <= to)
        .map(|&(t, bytes)| ((t - from).as_secs_f64(), bytes as f64))
        .collect();
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mt, mb) = points
        .iter()
        .fold((0.0, 0.0), |(t, b), p| (t + p.0 / n, b + p.1 / n));
    let (cov, var) = points.iter().fold((0.0, 0.0), |(c, v), p| {
        (c + (p.0 - mt) * (p.1 - mb), v + (p.0 - mt) * (p.0 - mt))
    });
    if var <= 0.0 {
        return 0.0;
    }
    cov / var * 8.0 / 1e6
}

/// Mbit/s of payload `sinks` got together, over the span from the first byte any got to the last.
pub fn mbit(sinks: &[Received]) -> f64 {
    let bytes: u64 = sinks.iter().map(|r| r.0).sum();
    let (Some(first), Some(last)) = (
        sinks.iter().map(|r| r.1).min(),
        sinks.iter().map(|r| r.2).max(),
    ) else {
        return 0.0;
    };
    let secs = last.duration_since(first).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 * 8.0 / secs / 1e6
}
