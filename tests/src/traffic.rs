//! `kchaos traffic`: test traffic made by a real process (in a cgroup or namespace), and reading what
//! it saw.

use std::{path::Path, process::Command};

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
