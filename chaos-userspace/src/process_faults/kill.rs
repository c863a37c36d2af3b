//! `kchaos kill`: signal random processes of the target cgroups (or all of them), never kchaos itself.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use super::{
    holds_this_process, require_root,
    signal::{self, Signal},
};
use crate::{
    error::BadInput,
    procfs,
    targets::{self, Target, TargetArgs},
};

#[derive(Debug, clap::Args)]
pub struct KillCommand {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Signal every process of the targets (with SIGKILL: all at once, through cgroup.kill).
    #[arg(long, conflicts_with = "count")]
    pub all: bool,
    /// Signal N processes picked at random (default 1).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// The signal: a name (KILL, TERM, INT, STOP, USR1, ...) or a number.
    #[arg(long, value_name = "SIG", default_value = "KILL", value_parser = signal::parse_signal)]
    pub signal: Signal,
}

/// A process that may be signalled, with what to print about it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub pid: u32,
    pub cgroup: PathBuf,
    pub comm: String,
    pub cmdline: String,
}

impl Candidate {
    fn describe(&self) -> String {
        let mut text = format!("{} {}", self.pid, self.comm);
        if !self.cmdline.is_empty() {
            text += &format!(" ({})", self.cmdline);
        }
        text + &format!(" in {}", self.cgroup.display())
    }
}

pub fn run(cmd: KillCommand) -> Result<()> {
    if cmd.count == Some(0) {
        return Err(BadInput::new("--count 0 signals nobody: give 1 or more, or --all").into());
    }
    require_root(
        "kchaos kill",
        "it signals processes of other users and containers",
    )?;
    let targets = targets::resolve(&cmd.targets)?;
    let (candidates, skipped) = candidates(&targets)?;
    let where_ = targets
        .iter()
        .map(|t| t.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if skipped > 0 {
        println!("kchaos kill: leaving out {skipped} kchaos process(es) in {where_}");
    }
    if candidates.is_empty() {
        bail!("no process to signal in {where_}: nothing was signalled");
    }
    let total = candidates.len();

    // cgroup.kill ends the whole tree at once, including processes forked while we look; it is only
    // right when everything there is a victim (and kchaos is not).
    let whole_tree = cmd.all
        && cmd.signal == Signal::KILL
        && skipped == 0
        && !targets.iter().any(|t| holds_this_process(&t.path));
    if whole_tree && kill_trees(&targets).is_ok() {
        println!(
            "kchaos kill: SIGKILL to every process of {where_} through cgroup.kill ({total} at the time):"
        );
        for c in &candidates {
            println!("  signalled {}", c.describe());
        }
        return Ok(());
    }

    let victims = if cmd.all {
        candidates
    } else {
        pick(candidates, cmd.count.unwrap_or(1))
    };
    println!(
        "kchaos kill: {} to {} of {total} process(es) in {where_}:",
        cmd.signal,
        victims.len()
    );
    let mut failed = 0;
    for v in &victims {
        // SAFETY: plain kill(2).
        let outcome = if unsafe { libc::kill(v.pid as i32, cmd.signal.number) } == 0 {
            "signalled".to_owned()
        } else {
            match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ESRCH) => "already gone:".to_owned(),
                e => {
                    failed += 1;
                    format!("could not signal ({e}):")
                }
            }
        };
        println!("  {outcome} {}", v.describe());
    }
    if failed > 0 {
        bail!("{failed} process(es) could not be signalled; see above");
    }
    Ok(())
}

/// The processes of the targets' trees, leaving out kchaos itself and its stress workers (processes of
/// this very executable); also returns how many were left out.
pub fn candidates(targets: &[Target]) -> Result<(Vec<Candidate>, usize)> {
    let me = std::process::id();
    let own_exe = fs::metadata("/proc/self/exe")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let mut found = Vec::new();
    for t in targets {
        walk(&t.path, &mut found)
            .map_err(|e| anyhow::anyhow!("listing the processes of {}: {e}", t.path.display()))?;
    }
    found.sort_by_key(|(pid, _)| *pid);
    found.dedup_by_key(|(pid, _)| *pid);
    let mut skipped = 0;
    let mut kept = Vec::new();
    for (pid, cgroup) in found {
        let exe = fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if pid == me || (own_exe.is_some() && exe == own_exe) {
            skipped += 1;
            continue;
        }
        kept.push(Candidate {
            pid,
            cgroup,
            comm: procfs::comm(pid),
            cmdline: procfs::cmdline(pid),
        });
    }
    Ok((kept, skipped))
}

/// Every (pid, cgroup) in `dir` and below.
fn walk(dir: &Path, out: &mut Vec<(u32, PathBuf)>) -> io::Result<()> {
    for pid in crate::cgroup::procs(dir)? {
        out.push((pid, dir.to_owned()));
    }
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            // A child cgroup may vanish while we walk: that is not an error.
            let _ = walk(&entry.path(), out);
        }
    }
    Ok(())
}

/// Writes cgroup.kill of every target (kernel 5.14+).
fn kill_trees(targets: &[Target]) -> io::Result<()> {
    for t in targets {
        fs::write(t.path.join("cgroup.kill"), "1")?;
    }
    Ok(())
}

/// `n` of `all`, picked uniformly at random (all of them when there are no more).
fn pick(mut all: Vec<Candidate>, n: usize) -> Vec<Candidate> {
    let mut rng = XorShift::seeded();
    let n = n.min(all.len());
    // A partial Fisher-Yates shuffle: the first n places get a uniform random sample.
    for i in 0..n {
        let j = i + (rng.next() % (all.len() - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(n);
    all
}

/// Enough randomness to pick victims; not for anything secret.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> Self {
        let mut seed = 0u64;
        // SAFETY: getrandom writes at most 8 bytes into `seed`.
        let got = unsafe { libc::getrandom((&mut seed as *mut u64).cast(), 8, 0) };
        if got != 8 {
            seed = crate::lifecycle::monotonic_ns() ^ u64::from(std::process::id()) << 32;
        }
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pid: u32) -> Candidate {
        Candidate {
            pid,
            cgroup: "/cg".into(),
            comm: "sleep".into(),
            cmdline: String::new(),
        }
    }

    #[test]
    fn picks_distinct_victims_and_never_more_than_there_are() {
        let all: Vec<_> = (1..=10).map(c).collect();
        let mut got: Vec<u32> = pick(all.clone(), 4).iter().map(|c| c.pid).collect();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 4);
        assert_eq!(pick(all, 50).len(), 10);
    }

    #[test]
    fn every_process_can_be_picked() {
        let mut seen = [false; 5];
        for _ in 0..200 {
            seen[pick((0..5).map(c).collect(), 1)[0].pid as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn describes_who() {
        let mut v = c(42);
        v.cmdline = "sleep 100".into();
        assert_eq!(v.describe(), "42 sleep (sleep 100) in /cg");
    }
}
