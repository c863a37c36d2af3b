//! `kchaos stop`: ends every running kchaos and undoes what a killed one left behind; `kchaos stop
//! --name NAME` does the same for the runs of that name alone (a run still starting is found by the
//! `--name` on its command line).
//!
//! Nothing a record says is taken on trust (see `journal`): the record directory must be root's, a
//! pid is signalled only while it is still the recorded kchaos process, and each entry is undone only
//! when it names something kchaos makes. A record that fails a check is left alone and said so; stop
//! then exits non-zero.
//!
//! A run between exec and its record is found too. Stop scans /proc for kchaos processes running a
//! command that writes a record (every fault kind of the registry, run, monkey) with the same record
//! directory, waits for their records, and ends any still without one. This was chosen over a "stop
//! requested" marker the starting run would check: a marker needs every run to look at it at the
//! right moment and stop to know when to remove it, and a run that checked just before the marker
//! appeared would still go on; the scan needs nothing from the run and misses no process that exists
//! when stop looks.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    bounded_read,
    engine::journal::{self, Liveness, Record, RecordOwner, Residue, Verdict},
    engine::pidfd::{self, Pidfd, Signalled},
    engine::run_identity::{self, ProcessIdentity},
    error::BadInput,
};

/// How long a run gets to end after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How long stop waits for a starting run to write its record.
const START_WAIT: Duration = Duration::from_secs(2);
/// The commands besides the fault kinds that write a record (the hidden helpers, `probe`, `status`
/// ... write none).
const RECORDED_SCENARIO_COMMANDS: &[&str] = &["run", "monkey"];
/// /proc/PID/cmdline and environ: bounded, as anything kchaos reads.
const PROC_TEXT_LIMIT: u64 = 4 << 20;

/// What stop could not finish.
#[derive(Default)]
struct Tally {
    refused: usize,
    failed: usize,
    acted: bool,
}

/// `kchaos stop [--name NAME]`. Exit 2 when it may not act (not root, a record directory it can't
/// trust, no run of that name), 1 when an entry was refused or could not be undone.
pub fn run(name: Option<&str>) -> anyhow::Result<()> {
    crate::require_root(
        "kchaos stop",
        "it signals kchaos runs of root and undoes what they left behind",
    )?;
    match name {
        Some(name) => stop_one(name),
        None => stop_all(),
    }
}

/// `kchaos stop --name NAME`: ends the run of that name (the verified kchaos process, SIGTERM, a
/// grace period, then SIGKILL) and undoes what it left behind, as [`stop_all`] does for every run.
fn stop_one(name: &str) -> anyhow::Result<()> {
    let dir = journal::run_dir();
    let not_found = |running: Vec<String>| {
        BadInput::new(format!(
            "no kchaos run is named '{name}' ({}); `kchaos status` lists the runs",
            if running.is_empty() {
                "none is running".to_owned()
            } else {
                format!("running: {}", running.join(", "))
            }
        ))
    };
    if !dir.exists() {
        return Err(not_found(Vec::new()).into());
    }
    let checked = journal::check_run_dir(&dir)?;
    // A run of that name still starting (no record yet) is found by its command line.
    let starting: Vec<Starting> = kchaos_runs(&checked)
        .into_iter()
        .filter(|s| s.name.as_deref() == Some(name) && !s.has_record(&checked))
        .collect();
    let start = Instant::now();
    while starting
        .iter()
        .any(|s| s.still_running() && !s.has_record(&checked))
        && start.elapsed() < START_WAIT
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let files = journal::records_in(&checked);
    let mut running = Vec::new();
    let mut tally = Tally::default();
    let mut handled = BTreeSet::new();
    for file in files {
        let Ok(record) = &file.record else { continue };
        if record.name.as_deref() != Some(name) {
            if matches!(journal::liveness(record), Liveness::Running)
                && let Some(n) = &record.name
            {
                running.push(n.clone());
            }
            continue;
        }
        handled.insert(record.pid);
        handle_record(&file.path, file.record, &mut tally);
    }
    end_starting(&starting, &handled, &format!(" '{name}'"), &mut tally);
    if !tally.acted {
        return Err(not_found(running).into());
    }
    // The records it cleared may have been the last: leave no empty /run/kchaos behind.
    journal::remove_default_run_dir_if_empty();
    tally.result()
}

/// Bare `kchaos stop`: every run of the record directory, and whatever killed runs left behind.
fn stop_all() -> anyhow::Result<()> {
    let dir = journal::run_dir();
    let mut checked = if dir.exists() {
        Some(journal::check_run_dir(&dir)?)
    } else {
        None
    };
    let mut tally = Tally::default();
    let starting = wait_for_starting(&dir);
    if checked.is_none() && dir.exists() {
        checked = Some(journal::check_run_dir(&dir)?);
    }
    let mut handled = BTreeSet::new();
    if let Some(dir) = &checked {
        for file in journal::records_in(dir) {
            if let Ok(r) = &file.record {
                handled.insert(r.pid);
            }
            handle_record(&file.path, file.record, &mut tally);
        }
    }
    end_starting(&starting, &handled, "", &mut tally);
    if let Some(dir) = &checked {
        remove_leftover_tmps(dir, &mut tally);
    }
    if !tally.acted {
        println!("kchaos stop: nothing running, nothing left behind");
    }
    // The records it cleared may have been the last: leave no empty /run/kchaos behind.
    journal::remove_default_run_dir_if_empty();
    tally.result()
}

impl Tally {
    fn result(&self) -> anyhow::Result<()> {
        match (self.refused, self.failed) {
            (0, 0) => Ok(()),
            (refused, failed) => Err(anyhow::anyhow!(
                "{refused} record entr{} refused, {failed} thing(s) not undone or ended; see above",
                if refused == 1 { "y" } else { "ies" }
            )),
        }
    }
}

/// Ends the record's process if it is still that run, then undoes the checked residue; the run's
/// status file goes with its record.
fn handle_record(path: &Path, record: Result<Record, String>, tally: &mut Tally) {
    handle_record_inner(path, record, tally);
    if fs::symlink_metadata(path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
        remove_plain_file(&journal::status_path(path));
    }
}

/// Removes `path` if it is a plain file (a link is left alone).
fn remove_plain_file(path: &Path) {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file()) {
        let _ = fs::remove_file(path);
    }
}

fn handle_record_inner(path: &Path, record: Result<Record, String>, tally: &mut Tally) {
    tally.acted = true;
    let record = match record {
        Ok(r) => r,
        Err(why) => return refuse_record(path, &why, tally),
    };
    let name = format!("kchaos {} (pid {})", record.command, record.pid);
    match journal::liveness(&record) {
        Liveness::Running => {
            println!("kchaos stop: ending {name} with SIGTERM");
            let Some(identity) = &record.identity else {
                return;
            };
            if !end_process(record.pid, identity, &record.command) {
                tally.failed += 1;
                return;
            }
        }
        Liveness::Gone => {}
        Liveness::NotThatRun(why) => println!(
            "kchaos stop: not signalling pid {}: {why}; treating {name} as dead",
            record.pid
        ),
        Liveness::Unknown(e) => {
            eprintln!(
                "kchaos stop: cannot tell whether {name} still runs ({e}); left its record {} alone",
                path.display()
            );
            tally.failed += 1;
            return;
        }
    }
    // A loader that ended cleanly removed its file; whatever is still listed is residue.
    if fs::symlink_metadata(path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
        println!("kchaos stop: {name} cleaned up after itself");
        return;
    }
    let record = match journal::read_record(path) {
        Ok(r) => r,
        Err(why) => return refuse_record(path, &why, tally),
    };
    undo_residue(path, record, &name, tally);
}

/// A record that cannot be read or trusted: said, counted, left alone.
fn refuse_record(path: &Path, why: &str, tally: &mut Tally) {
    eprintln!(
        "kchaos stop: refusing record {}: {why}; left alone",
        path.display()
    );
    tally.refused += 1;
}

/// Checks every entry first, then undoes the accepted ones newest first; keeps the rest in the record.
fn undo_residue(path: &Path, mut record: Record, name: &str, tally: &mut Tally) {
    let mount = crate::engine::cgroup::v2_mount().ok();
    let owner = RecordOwner {
        pid: record.pid,
        start_time: record.identity.as_ref().map(|i| i.start_time),
        uid: journal::owner_uid(),
        cgroup_mount: mount.as_deref(),
    };
    let checked: Vec<(Residue, Result<Verdict, String>)> = record
        .residue
        .iter()
        .map(|r| (r.clone(), r.check(&owner)))
        .collect();
    let mut left = Vec::new();
    let mut undone = 0;
    for (r, verdict) in checked.into_iter().rev() {
        match verdict {
            Err(why) => {
                eprintln!(
                    "kchaos stop: refusing record entry {} of {name} in {}: not made by kchaos \
                     ({why}); left alone",
                    describe(&r),
                    path.display()
                );
                tally.refused += 1;
                left.push(r);
            }
            Ok(Verdict::Gone) => println!(
                "kchaos stop: {} is gone already (or another took its place): nothing to undo",
                describe(&r)
            ),
            Ok(v) => match r.apply(v) {
                Ok(()) => {
                    undone += 1;
                    let thawed = if matches!(r, Residue::FrozenCgroup { .. }) {
                        " (thawed)"
                    } else {
                        ""
                    };
                    println!("kchaos stop: undone {}{thawed}", describe(&r));
                }
                Err(e) => {
                    eprintln!("kchaos stop: could not undo {}: {e}", describe(&r));
                    tally.failed += 1;
                    left.push(r);
                }
            },
        }
    }
    if left.is_empty() {
        let _ = fs::remove_file(path);
        if undone == 0 {
            println!("kchaos stop: {name} is gone and left nothing to undo; record removed");
        } else {
            println!("kchaos stop: {name} is gone; its record is removed");
        }
    } else {
        left.reverse();
        record.residue = left;
        if let Err(e) = journal::write_record(path, &record) {
            eprintln!("kchaos stop: could not rewrite {}: {e}", path.display());
            tally.failed += 1;
        }
    }
}

/// SIGTERM, a grace period, then SIGKILL, through a pidfd opened before the pid is checked to still be
/// `identity`: the signals reach that process or no one, never one that got its pid since. True when
/// the process has ended.
fn end_process(pid: u32, identity: &ProcessIdentity, command: &str) -> bool {
    let ended = || {
        println!("kchaos stop: kchaos {command} (pid {pid}) ended");
        true
    };
    let fd = match Pidfd::open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return ended(),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            return end_process_without_pidfd(pid, identity, command);
        }
        Err(e) => {
            eprintln!("kchaos stop: opening a pidfd of pid {pid}: {e}");
            return false;
        }
    };
    // Checked once, after the pidfd pins the process: what it names stays this process.
    match ProcessIdentity::of_within(pid, run_identity::LOOKUP_LIMIT) {
        Ok(live) if live.same_process(identity) => {}
        Ok(_) => return ended(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ended(),
        Err(e) => {
            eprintln!("kchaos stop: cannot tell whether pid {pid} is kchaos {command}: {e}");
            return false;
        }
    }
    for (signal, wait) in [
        (libc::SIGTERM, TERM_GRACE),
        (libc::SIGKILL, Duration::from_secs(2)),
    ] {
        if signal == libc::SIGKILL {
            println!(
                "kchaos stop: kchaos {command} (pid {pid}) did not end in {}s; SIGKILL",
                TERM_GRACE.as_secs()
            );
        }
        match fd.send_signal(signal) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return ended(),
            Err(e) => {
                eprintln!("kchaos stop: signalling pid {pid}: {e}");
                return false;
            }
        }
        if fd.wait_exit(wait) {
            return ended();
        }
    }
    eprintln!("kchaos stop: kchaos {command} (pid {pid}) is still running");
    false
}

/// [`end_process`] on a kernel without pidfds (before 5.3): each kill(2) right after the pid is
/// checked again.
fn end_process_without_pidfd(pid: u32, identity: &ProcessIdentity, command: &str) -> bool {
    let is_it = || still_that_process(pid, identity);
    for (signal, wait) in [
        (libc::SIGTERM, TERM_GRACE),
        (libc::SIGKILL, Duration::from_secs(2)),
    ] {
        match pidfd::signal_if(pid, signal, is_it) {
            Ok(Signalled::Sent) => {}
            Ok(Signalled::Gone | Signalled::NotIt) => break,
            Err(e) => {
                eprintln!("kchaos stop: signalling pid {pid}: {e}");
                return false;
            }
        }
        let start = Instant::now();
        while is_it() && start.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if is_it() {
        eprintln!("kchaos stop: kchaos {command} (pid {pid}) is still running");
        return false;
    }
    println!("kchaos stop: kchaos {command} (pid {pid}) ended");
    true
}

/// True while `pid` is the process `identity` names, alive: its start time (from /proc/PID/stat, which
/// never blocks) is the one recorded. Only for a process whose identity was checked in full before.
fn still_that_process(pid: u32, identity: &ProcessIdentity) -> bool {
    run_identity::started_and_live(pid)
        .is_ok_and(|(start, live)| live && start == identity.start_time)
}

/// A kchaos process running a recorded command with this record directory.
/// Ends the runs still starting (no record yet) that no record handled: SIGTERM to each verified
/// kchaos process. `label` follows the command in the line (a run's name, or nothing).
fn end_starting(starting: &[Starting], handled: &BTreeSet<u32>, label: &str, tally: &mut Tally) {
    for run in starting
        .iter()
        .filter(|s| !handled.contains(&s.pid) && s.still_running())
    {
        tally.acted = true;
        println!(
            "kchaos stop: ending kchaos {}{label} (pid {}), which was still starting (no record \
             yet), with SIGTERM",
            run.command, run.pid
        );
        if !end_process(run.pid, &run.identity, &run.command) {
            tally.failed += 1;
        }
    }
}

struct Starting {
    pid: u32,
    identity: ProcessIdentity,
    command: String,
    /// Its `--name`, from its command line.
    name: Option<String>,
}

impl Starting {
    fn still_running(&self) -> bool {
        still_that_process(self.pid, &self.identity)
    }

    fn has_record(&self, dir: &Path) -> bool {
        fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                journal::parse_record_name(&e.file_name().to_string_lossy()).is_some_and(
                    |(pid, start, ext)| {
                        ext == "json" && pid == self.pid && start == Some(self.identity.start_time)
                    },
                )
            })
        })
    }
}

/// The kchaos runs of this record directory that exist now, after waiting (up to [`START_WAIT`]) for
/// those without a record yet to write one.
fn wait_for_starting(dir: &Path) -> Vec<Starting> {
    let runs = kchaos_runs(dir);
    for r in runs.iter().filter(|r| !r.has_record(dir)) {
        println!(
            "kchaos stop: kchaos {} (pid {}) is starting; waiting up to {}s for its record",
            r.command,
            r.pid,
            START_WAIT.as_secs()
        );
    }
    let start = Instant::now();
    while runs.iter().any(|r| r.still_running() && !r.has_record(dir))
        && start.elapsed() < START_WAIT
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    runs
}

/// How long after a first look at /proc the second one is made (see [`kchaos_runs`]): an execve
/// takes well under this from releasing its parent to naming the new image.
const EXEC_NAME_WINDOW: Duration = Duration::from_millis(50);

/// Every other process that is a kchaos binary running a recorded command and keeping its records
/// in `dir`. Its helpers (pause-guard, stress-worker, probe-agent, traffic) run other commands and are
/// left out by their argv.
///
/// Only the name in /proc/PID/stat is read of every process (it never blocks); a process is looked at
/// further (its executable, command line, environment and working directory, which can block on a
/// stalled mount or a held memory map) only when it is named like kchaos, and each such look is given
/// up after [`run_identity::LOOKUP_LIMIT`], so the scan ends whatever else runs.
fn kchaos_runs(dir: &Path) -> Vec<Starting> {
    let own = std::process::id();
    let ours = same_dir_key(dir, None);
    let own_name = crate::engine::procfs::stat_comm(own).ok();
    let mut named = BTreeMap::new();
    // Twice, a moment apart: a process in the middle of its execve has let its parent go on (the
    // shell or program that started it) before the kernel gives it its new name, so a run started
    // just before `kchaos stop` can still carry its parent's name in the first pass.
    for pass in 0..2 {
        if pass > 0 {
            std::thread::sleep(EXEC_NAME_WINDOW);
        }
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == own || named.contains_key(&pid) {
                continue;
            }
            if let Ok(name) = crate::engine::procfs::stat_comm(pid)
                && named_like_kchaos(&name, own_name.as_deref())
            {
                named.insert(pid, name);
            }
        }
    }
    let named: Vec<(u32, String)> = named.into_iter().collect();
    look_within(&named, &ours, run_identity::LOOKUP_LIMIT, kchaos_run)
}

/// `lookup` of each of `named` on a worker of its own, all within one deadline: however many do not
/// answer, this takes `limit` at most. Those that did not answer are said and passed over.
fn look_within(
    named: &[(u32, String)],
    ours: &Path,
    limit: Duration,
    lookup: fn(u32, &Path) -> Option<Starting>,
) -> Vec<Starting> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut asked = 0;
    for &(pid, _) in named {
        let (tx, ours) = (tx.clone(), ours.to_owned());
        let spawned = std::thread::Builder::new()
            .name("kchaos-lookup".into())
            .spawn(move || {
                let _ = tx.send((pid, lookup(pid, &ours)));
            });
        asked += usize::from(spawned.is_ok());
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut runs = Vec::new();
    let mut answered = BTreeSet::new();
    while answered.len() < asked {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((pid, run)) = rx.recv_timeout(left) else {
            break;
        };
        answered.insert(pid);
        runs.extend(run);
    }
    for (pid, name) in named.iter().filter(|(p, _)| !answered.contains(p)) {
        eprintln!(
            "kchaos stop: pid {pid} ({name}) did not answer within {}s (its files on a stalled \
             mount?); passed over",
            limit.as_secs_f64()
        );
    }
    runs.sort_by_key(|r| r.pid);
    runs
}

/// True when a process's name (/proc/PID/stat) may be a kchaos run: `kchaos`, or the name this stop
/// runs under (a kchaos installed under another name runs its runs under it too).
fn named_like_kchaos(name: &str, own_name: Option<&str>) -> bool {
    name == "kchaos" || own_name == Some(name)
}

/// `pid` as a kchaos run of the record directory `ours`, if it is one (the looks that can block).
fn kchaos_run(pid: u32, ours: &Path) -> Option<Starting> {
    let identity = ProcessIdentity::of(pid).ok()?;
    if !identity.is_kchaos_binary() {
        return None;
    }
    let argv = proc_strings(pid, "cmdline");
    let command = argv.get(1).filter(|c| writes_a_record(c))?.clone();
    if same_dir_key(&run_dir_of(pid), Some(pid)) != ours {
        return None;
    }
    Some(Starting {
        pid,
        identity,
        command,
        name: name_in(&argv),
    })
}

/// True when `command` (argv[1]) writes a record: every fault kind of the registry (so a new kind
/// cannot be missed), `run` and `monkey`.
fn writes_a_record(command: &str) -> bool {
    crate::kind::KINDS.contains(&command) || RECORDED_SCENARIO_COMMANDS.contains(&command)
}

/// The value of `--name` in a command line.
fn name_in(argv: &[String]) -> Option<String> {
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == "--name" {
            argv.get(i + 1).cloned()
        } else {
            a.strip_prefix("--name=").map(str::to_owned)
        }
    })
}

/// The NUL-separated strings of /proc/PID/<file> (cmdline, environ).
fn proc_strings(pid: u32, file: &str) -> Vec<String> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    bounded_read::read(&path, PROC_TEXT_LIMIT, "process text")
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The record directory process `pid` uses: its KCHAOS_RUN_DIR, else the default.
fn run_dir_of(pid: u32) -> PathBuf {
    proc_strings(pid, "environ")
        .iter()
        .find_map(|kv| kv.strip_prefix("KCHAOS_RUN_DIR="))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/kchaos"))
}

/// A directory as compared across processes: resolved when it exists, a relative one taken from the
/// process's working directory.
fn same_dir_key(dir: &Path, pid: Option<u32>) -> PathBuf {
    let absolute = if dir.is_absolute() {
        dir.to_owned()
    } else {
        let cwd = match pid {
            Some(pid) => fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default(),
            None => std::env::current_dir().unwrap_or_default(),
        };
        cwd.join(dir)
    };
    fs::canonicalize(&absolute).unwrap_or(absolute)
}

/// Removes `<pid>[-<start>].tmp` files no live kchaos run is writing: a run killed while it wrote its
/// record leaves one, with nothing attached yet (the record comes first). Likewise the status files
/// of runs that are gone, and the logs of detached runs no running kchaos has.
fn remove_leftover_tmps(dir: &Path, tally: &mut Tally) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let live_names: BTreeSet<String> = journal::records_in(dir)
        .into_iter()
        .filter_map(|f| f.record.ok())
        .filter(|r| matches!(journal::liveness(r), Liveness::Running))
        .filter_map(|r| r.name)
        .collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(run) = name.strip_suffix(".log")
            && !live_names.contains(run)
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            tally.acted = true;
            if fs::remove_file(entry.path()).is_ok() {
                println!(
                    "kchaos stop: removed {}, the log of a detached run that has ended",
                    entry.path().display()
                );
            }
            continue;
        }
        let Some((pid, start, ext)) = journal::parse_record_name(&name) else {
            continue;
        };
        if ext == journal::STATUS_EXT || ext == journal::STATUS_TMP_EXT {
            let record = entry.path().with_extension("json");
            let running =
                ProcessIdentity::of_within(pid, run_identity::LOOKUP_LIMIT).is_ok_and(|live| {
                    live.is_kchaos_binary() && start.is_none_or(|s| s == live.start_time)
                });
            if !running && !record.exists() {
                remove_plain_file(&entry.path());
            }
            continue;
        }
        if ext != "tmp" {
            continue;
        }
        let writing =
            ProcessIdentity::of_within(pid, run_identity::LOOKUP_LIMIT).is_ok_and(|live| {
                live.is_kchaos_binary() && start.is_none_or(|s| s == live.start_time)
            });
        if writing {
            continue;
        }
        tally.acted = true;
        match fs::remove_file(entry.path()) {
            Ok(()) => println!(
                "kchaos stop: removed {}, a record pid {pid} never finished writing (it is not a \
                 running kchaos)",
                entry.path().display()
            ),
            Err(e) => {
                eprintln!(
                    "kchaos stop: could not remove {}: {e}",
                    entry.path().display()
                );
                tally.failed += 1;
            }
        }
    }
}

fn describe(r: &Residue) -> String {
    match r {
        Residue::Fq(fq) => format!(
            "fq qdisc {} on {} (netns inode {})",
            fq.handle, fq.dev, fq.netns.inode
        ),
        Residue::FrozenCgroup { path, .. } => format!("frozen cgroup {}", path.display()),
        Residue::Cgroup { path } => format!("cgroup {}", path.display()),
        Residue::Path { path } => format!("{}", path.display()),
        Residue::TimeHooks { tag } => format!("vDSO time hooks (tag {tag:016x})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_run_and_monkey_write_a_record_and_helpers_do_not() {
        for kind in crate::kind::KINDS {
            assert!(writes_a_record(kind), "{kind}");
        }
        for command in ["time", "kill", "run", "monkey", "net"] {
            assert!(writes_a_record(command), "{command}");
        }
        for helper in [
            "pause-guard",
            "stress-worker",
            "probe-agent",
            "traffic",
            "stop",
            "status",
        ] {
            assert!(!writes_a_record(helper), "{helper}");
        }
    }

    /// Lookups that never answer (a stalled mount) cost the scan its one deadline, not one each,
    /// and the runs that did answer are kept.
    #[test]
    fn the_scan_ends_at_its_deadline_however_many_lookups_hang() {
        fn lookup(pid: u32, _: &Path) -> Option<Starting> {
            if pid.is_multiple_of(2) {
                std::thread::sleep(Duration::from_secs(60));
            }
            Some(Starting {
                pid,
                identity: ProcessIdentity {
                    start_time: 1,
                    exe: "/usr/bin/kchaos".into(),
                    exe_dev: 0,
                    exe_ino: 0,
                },
                command: "net".into(),
                name: None,
            })
        }
        let named: Vec<(u32, String)> = (1..=20).map(|p| (p, "kchaos".into())).collect();
        let start = Instant::now();
        let runs = look_within(
            &named,
            Path::new("/run/kchaos"),
            Duration::from_millis(300),
            lookup,
        );
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        let pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
        assert_eq!(
            pids,
            (1..=20u32)
                .filter(|p| !p.is_multiple_of(2))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn only_kchaos_names_are_looked_at_further() {
        assert!(named_like_kchaos("kchaos", None));
        assert!(named_like_kchaos("chaos", Some("chaos")));
        for other in ["sleep", "kchaos-cpu", "exe", "sshd", ""] {
            assert!(!named_like_kchaos(other, Some("kchaos")), "{other}");
        }
    }

    #[test]
    fn a_name_is_read_from_either_form_of_the_flag() {
        let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            name_in(&argv(&["kchaos", "net", "--name", "loss", "--drop", "5"])),
            Some("loss".into())
        );
        assert_eq!(
            name_in(&argv(&["kchaos", "run", "f.yaml", "--name=game-day"])),
            Some("game-day".into())
        );
        assert_eq!(name_in(&argv(&["kchaos", "net", "--drop", "5"])), None);
        assert_eq!(name_in(&argv(&["kchaos", "net", "--name"])), None);
    }
}
