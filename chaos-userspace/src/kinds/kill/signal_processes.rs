//! Signalling random processes of the target cgroups (or all of them), never kchaos itself: what the
//! `kill` kind does at its instant.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::signal::Signal;
use crate::{
    engine::cgroup::holds_this_process,
    engine::pidfd::{self, Signalled},
    engine::procfs,
    engine::run_identity,
    engine::targets::Target,
};

/// A process that may be signalled, with what to print about it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub pid: u32,
    /// When it started (/proc/PID/stat), as listed: the signal goes to it only while the pid is still
    /// this process.
    pub start_time: u64,
    pub cgroup: PathBuf,
    pub comm: String,
    pub cmdline: String,
}

impl Candidate {
    pub fn describe(&self) -> String {
        let mut text = format!("{} {}", self.pid, self.comm);
        if !self.cmdline.is_empty() {
            text += &format!(" ({})", self.cmdline);
        }
        text + &format!(" in {}", self.cgroup.display())
    }
}

/// Who gets the signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Victims {
    /// Every process of the targets.
    All,
    /// This many, picked at random (all of them when there are no more).
    Count(usize),
}

/// What happened to one victim.
#[derive(Debug)]
pub enum Sent {
    Signalled,
    /// It ended between listing and signalling.
    AlreadyGone,
    Failed(io::Error),
}

/// The outcome of [`signal_prepared`].
#[derive(Debug)]
pub struct KillReport {
    pub signal: Signal,
    /// The targets, comma-separated.
    pub where_: String,
    /// kchaos processes left out.
    pub skipped: usize,
    /// Processes named like kchaos left out because their executable did not answer in time.
    pub unanswered: usize,
    /// Processes that could have been picked.
    pub candidates: usize,
    /// Whether SIGKILL went through cgroup.kill (every process of the trees, at once).
    pub whole_tree: bool,
    /// How many `--count` asked for (None for `--all`).
    pub asked: Option<usize>,
    pub victims: Vec<(Candidate, Sent)>,
}

impl KillReport {
    pub fn signalled(&self) -> usize {
        self.count(|s| matches!(s, Sent::Signalled))
    }

    pub fn already_gone(&self) -> usize {
        self.count(|s| matches!(s, Sent::AlreadyGone))
    }

    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, Sent::Failed(_)))
    }

    fn count(&self, what: impl Fn(&Sent) -> bool) -> usize {
        self.victims.iter().filter(|(_, s)| what(s)).count()
    }

    /// Who was left out, and why.
    pub fn left_out(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.skipped > 0 {
            out.push(format!(
                "leaving out {} kchaos process(es) in {}",
                self.skipped, self.where_
            ));
        }
        if self.unanswered > 0 {
            out.push(format!(
                "leaving out {} process(es) named like kchaos in {} whose executable did not answer \
                 within {}s (on a stalled mount?): they may be kchaos",
                self.unanswered,
                self.where_,
                run_identity::LOOKUP_LIMIT.as_secs_f64()
            ));
        }
        out
    }

    /// What was done, then one line per victim.
    pub fn lines(&self) -> Vec<String> {
        let mut out = self.left_out();
        if let Some(asked) = self.asked
            && asked > self.candidates
        {
            // Never more than asked, and never silently fewer.
            out.push(format!(
                "--count {asked} asked for more processes than {} has ({}): signalling those {}",
                self.where_, self.candidates, self.candidates
            ));
        }
        out.push(if self.whole_tree {
            format!(
                "SIGKILL to every process of {} through cgroup.kill ({} at the time):",
                self.where_, self.candidates
            )
        } else {
            format!(
                "{} to {} of {} process(es) in {}:",
                self.signal,
                self.victims.len(),
                self.candidates,
                self.where_
            )
        });
        for (c, sent) in &self.victims {
            let outcome = match sent {
                Sent::Signalled => "signalled".to_owned(),
                Sent::AlreadyGone => "already gone:".to_owned(),
                Sent::Failed(e) => format!("could not signal ({e}):"),
            };
            out.push(format!("  {outcome} {}", c.describe()));
        }
        out
    }
}

/// Listing the processes of a target failed.
#[derive(Debug, thiserror::Error)]
#[error("listing the processes of {}: {source}", path.display())]
pub struct ListError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// What can be known about the targets before the instant of a kill, so the instant itself only
/// lists pids and signals them.
#[derive(Clone, Debug)]
pub struct Prepared {
    targets: Vec<Target>,
    /// This executable's (device, inode): processes running it are kchaos and are left out.
    own_exe: Option<(u64, u64)>,
    /// Whether a target holds kchaos itself (then cgroup.kill would hit it).
    holds_kchaos: bool,
}

impl Prepared {
    pub fn new(targets: &[Target]) -> Self {
        Self {
            targets: targets.to_vec(),
            own_exe: fs::metadata("/proc/self/exe")
                .ok()
                .map(|m| (m.dev(), m.ino())),
            holds_kchaos: targets.iter().any(|t| holds_this_process(&t.path)),
        }
    }
}

/// Sends `signal` to the chosen processes of the targets' trees, never to kchaos itself; the
/// victims' names are read after the signals. No candidate is not an error: the report says so (no
/// victims).
pub fn signal_prepared(
    prepared: &Prepared,
    victims: Victims,
    signal: Signal,
) -> Result<KillReport, ListError> {
    let targets = &prepared.targets;
    let Listed {
        mut candidates,
        skipped,
        unanswered,
    } = list(targets, prepared.own_exe)?;
    let where_ = targets
        .iter()
        .map(|t| t.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let total = candidates.len();
    let mut report = KillReport {
        signal,
        where_,
        skipped,
        unanswered,
        candidates: total,
        whole_tree: false,
        asked: match victims {
            Victims::All => None,
            Victims::Count(n) => Some(n),
        },
        victims: Vec::new(),
    };
    if candidates.is_empty() {
        return Ok(report);
    }

    // cgroup.kill ends the whole tree at once, including processes forked while we look; it is only
    // right when everything there is a victim (and kchaos, or what may be kchaos, is not).
    let whole_tree = victims == Victims::All
        && signal == Signal::KILL
        && skipped == 0
        && unanswered == 0
        && !prepared.holds_kchaos;
    if whole_tree && kill_trees(targets).is_ok() {
        report.whole_tree = true;
        name(&mut candidates);
        report.victims = candidates
            .into_iter()
            .map(|c| (c, Sent::Signalled))
            .collect();
        return Ok(report);
    }

    let chosen = match victims {
        Victims::All => candidates,
        Victims::Count(n) => pick(candidates, n),
    };
    for v in chosen {
        // Through a pidfd opened before the check that the pid is still the process listed: a victim
        // that ended meanwhile is gone, never another process that got its pid.
        let is_it = || {
            run_identity::started_and_live(v.pid)
                .is_ok_and(|(start, live)| live && start == v.start_time)
        };
        let sent = match pidfd::signal_if(v.pid, signal.number, is_it) {
            Ok(Signalled::Sent) => Sent::Signalled,
            Ok(Signalled::Gone | Signalled::NotIt) => Sent::AlreadyGone,
            Err(e) => Sent::Failed(e),
        };
        report.victims.push((v, sent));
    }
    for (v, _) in &mut report.victims {
        name(std::slice::from_mut(v));
    }
    Ok(report)
}

/// Fills in what to print about each candidate (after the signals: it is only for the report).
fn name(candidates: &mut [Candidate]) {
    for c in candidates {
        c.comm = procfs::comm(c.pid);
        c.cmdline = procfs::cmdline(c.pid);
    }
}

/// The processes of the targets' trees, leaving out kchaos itself and its stress workers (processes of
/// this very executable); also returns how many were left out.
pub fn candidates(targets: &[Target]) -> Result<(Vec<Candidate>, usize), ListError> {
    let own_exe = fs::metadata("/proc/self/exe")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let Listed {
        candidates: mut found,
        skipped,
        ..
    } = list(targets, own_exe)?;
    name(&mut found);
    Ok((found, skipped))
}

/// What [`list`] found: the candidates (unnamed yet), how many kchaos processes were left out, and
/// how many processes named like kchaos were left out because their executable did not answer.
struct Listed {
    candidates: Vec<Candidate>,
    skipped: usize,
    unanswered: usize,
}

/// The processes of the targets' trees without kchaos's own.
///
/// Only /proc/PID/stat is read of a process not named like kchaos (it never blocks); the executable
/// of one named like kchaos is looked at on a worker within [`run_identity::LOOKUP_LIMIT`] (all of
/// them within one deadline), since its file system may never answer (a stalled FUSE mount). One
/// that does not answer is left out: it may be kchaos.
fn list(targets: &[Target], own_exe: Option<(u64, u64)>) -> Result<Listed, ListError> {
    let me = std::process::id();
    let own_name = procfs::stat_comm(me).ok();
    let mut found = Vec::new();
    for t in targets {
        walk(&t.path, &mut found).map_err(|source| ListError {
            path: t.path.clone(),
            source,
        })?;
    }
    found.sort_by_key(|(pid, _)| *pid);
    found.dedup_by_key(|(pid, _)| *pid);
    let mut skipped = 0;
    let mut kept = Vec::new();
    let mut named_like_kchaos = Vec::new();
    for (pid, cgroup) in found {
        if pid == me {
            skipped += 1;
            continue;
        }
        // Gone already (or a zombie): nothing to signal.
        let Ok((start_time, true)) = run_identity::started_and_live(pid) else {
            continue;
        };
        if procfs::stat_comm(pid)
            .is_ok_and(|name| run_identity::named_like_kchaos(&name, own_name.as_deref()))
        {
            named_like_kchaos.push(pid);
        }
        kept.push(Candidate {
            pid,
            start_time,
            cgroup,
            comm: String::new(),
            cmdline: String::new(),
        });
    }
    let mut unanswered = 0;
    if let Some(own_exe) = own_exe
        && !named_like_kchaos.is_empty()
    {
        let (answers, silent) =
            procfs::within_each(&named_like_kchaos, run_identity::LOOKUP_LIMIT, |pid| {
                fs::metadata(format!("/proc/{pid}/exe"))
                    .ok()
                    .map(|m| (m.dev(), m.ino()))
            });
        let ours: Vec<u32> = answers
            .iter()
            .filter(|(_, exe)| *exe == Some(own_exe))
            .map(|(pid, _)| *pid)
            .collect();
        // Named like kchaos with no executable to read: exited since it was listed (a stress
        // worker ending), or not provably anyone else's: never a victim (picking it would signal
        // nothing, or kchaos).
        let unreadable: Vec<u32> = answers
            .iter()
            .filter(|(_, exe)| exe.is_none())
            .map(|(pid, _)| *pid)
            .collect();
        kept.retain(|c| {
            if ours.contains(&c.pid) {
                skipped += 1;
                false
            } else if unreadable.contains(&c.pid) {
                false
            } else if silent.contains(&c.pid) {
                unanswered += 1;
                false
            } else {
                true
            }
        });
    }
    Ok(Listed {
        candidates: kept,
        skipped,
        unanswered,
    })
}

/// Every (pid, cgroup) in `dir` and below.
fn walk(dir: &Path, out: &mut Vec<(u32, PathBuf)>) -> io::Result<()> {
    for pid in crate::engine::cgroup::procs(dir)? {
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
        Self(crate::engine::lifecycle::random_u64() | 1)
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
            start_time: 0,
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
