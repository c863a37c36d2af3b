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
