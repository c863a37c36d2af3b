//! Booting qemu and reading the payloads' verdicts from its serial console.
//!
//! /init prints a marker before and after each payload; the console is streamed to the terminal
//! (`vm| ` lines) and to a log file, and parsed once qemu has stopped.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Read, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{Payload, host_load::HostCpu};
use crate::setup::step;

/// Printed by /init after the mounts and modules, with `uname -r`.
pub const READY_MARKER: &str = "KCHAOS-VM-READY";
const BEGIN: &str = "KCHAOS-VM-BEGIN";
const END: &str = "KCHAOS-VM-END";
const INSMOD_FAILED: &str = "KCHAOS-VM-INSMOD-FAILED";
/// How many of the console's last lines a failure prints.
const TAIL_LINES: usize = 40;

/// One payload's outcome inside the VM.
#[derive(Clone, Debug)]
pub struct PayloadResult {
    pub name: String,
    /// -1 when it never ended (the run failed while it ran).
    pub exit_code: i32,
    /// What it printed (stdout and stderr), one line each.
    pub output: Vec<String>,
}

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    /// Where the whole console goes.
    pub log: &'a Path,
    pub timeout: Duration,
}

/// `KCHAOS-VM-BEGIN 2/5 name`: numbered, so two payloads of the same name stay apart.
pub fn begin_marker(index: usize, total: usize, name: &str) -> String {
    format!("{BEGIN} {}/{total} {}", index + 1, marker_name(name))
}

/// `KCHAOS-VM-END 2/5 name rc=`, which /init completes with the exit code.
pub fn end_marker_prefix(index: usize, total: usize, name: &str) -> String {
    format!("{END} {}/{total} {} rc=", index + 1, marker_name(name))
}

pub fn insmod_failed_marker(module: &str) -> String {
    format!("{INSMOD_FAILED} {module}")
}

/// The name as one shell- and parser-safe word.
fn marker_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a boot produced: the result of every payload that started (one cut short has exit code -1
/// and the console up to its end as output), and why the run failed, if it did.
pub struct Collected {
    pub results: Vec<PayloadResult>,
    pub failure: Option<anyhow::Error>,
}

/// Boots the VM, waits for it to power off (or the time limit), and returns each payload's result.
/// A panic, an oops, a timeout, or a payload without its end marker is a failure, reported after the
/// console's end is printed; the payloads that ended before it keep their results. An Err: qemu
/// could not start.
pub fn boot_and_collect(boot: &Boot, payloads: &[Payload], release: &str) -> Result<Collected> {
    let console = run_qemu(boot)?;
    let (results, unfinished) = parse_results(&console.lines, payloads);
    let failure = run_failure(&console, boot, release).or(unfinished);
    let failure = failure.map(|msg| {
        print_tail(&console.lines);
        anyhow::anyhow!(
            "{msg} (the console's last {TAIL_LINES} lines are above; all of it is in {})",
            boot.log.display()
        )
    });
    Ok(Collected { results, failure })
}

/// Why the run as a whole failed (a panic, an oops, the time limit, /init never ready), if it did;
/// prints the warnings of a run that did not fail.
fn run_failure(console: &Console, boot: &Boot, release: &str) -> Option<String> {
    if console.lines.iter().any(|l| l.contains("Kernel panic")) {
        return Some("the VM's kernel panicked".to_owned());
    }
    // An oops kills only the task that hit it, so the payloads may still end; it is a failure anyway.
    if let Some(oops) = console
        .lines
        .iter()
        .find(|l| l.contains("] Oops: ") || l.contains("] BUG: "))
    {
        return Some(format!("the VM's kernel reported a bug: {}", oops.trim()));
    }
    if console.timed_out {
        return Some(format!(
            "the VM ran past its time limit ({:?}) and was killed (for `cargo xtask vm-test`, set \
             KCHAOS_VM_TIMEOUT=<seconds> to change it)",
            boot.timeout
        ));
    }
    let Some(ready) = console
        .lines
        .iter()
        .find_map(|l| l.split_once(READY_MARKER))
    else {
        return Some("the VM never got through /init's setup to its payloads".to_owned());
    };
    if ready.1.trim() != release {
        step(&format!(
            "VM: the kernel says it is {}, not {release}",
            ready.1.trim()
        ));
    }
    for line in &console.lines {
        if let Some((_, module)) = line.split_once(INSMOD_FAILED) {
            step(&format!(
                "VM: warning: insmod {} failed (see the console above)",
                module.trim()
            ));
        }
    }
    None
}

/// The payloads' results, in order, from the console's lines, up to the first that did not end
/// (its result has exit code -1 and the rest of the console as output), and what went wrong then.
fn parse_results(lines: &[String], payloads: &[Payload]) -> (Vec<PayloadResult>, Option<String>) {
    let total = payloads.len();
    let mut results = Vec::new();
    let mut from = 0;
    for (i, p) in payloads.iter().enumerate() {
        let begin = begin_marker(i, total, &p.name);
        let Some(b) = (from..lines.len()).find(|&n| lines[n].contains(&begin)) else {
            return (results, Some(format!("payload {} never started", p.name)));
        };
        let end = end_marker_prefix(i, total, &p.name);
        let found = (b + 1..lines.len()).find_map(|n| {
            lines[n]
                .split_once(&end)
                .map(|(before, after)| (n, before, after))
        });
        let Some((e, before, after)) = found else {
            results.push(PayloadResult {
                name: p.name.clone(),
                exit_code: -1,
                output: lines[b + 1..].to_vec(),
            });
            return (
                results,
                Some(format!(
                    "payload {} has no end marker: it hung, or took the VM down with it",
                    p.name
                )),
            );
        };
        let mut output = lines[b + 1..e].to_vec();
        // Output that did not end in a newline shares its line with the end marker.
        if !before.is_empty() {
            output.push(before.to_owned());
        }
        let exit_code = after.trim().parse().ok();
        results.push(PayloadResult {
            name: p.name.clone(),
            exit_code: exit_code.unwrap_or(-1),
            output,
        });
        if exit_code.is_none() {
            return (
                results,
                Some(format!(
                    "payload {}: unreadable exit code in {:?}",
                    p.name, lines[e]
                )),
            );
        }
        from = e + 1;
    }
    (results, None)
}

fn print_tail(lines: &[String]) {
    step(&format!("the VM console's last {TAIL_LINES} lines:"));
    for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
        eprintln!("vm| {line}");
    }
}

struct Console {
    lines: Vec<String>,
    timed_out: bool,
}

/// Runs qemu until it exits or the time limit passes, streaming its console.
fn run_qemu(boot: &Boot) -> Result<Console> {
    let mut cmd = qemu_command(boot);
    step(&format!(
        "VM: booting (TCG, time limit {:?}): {cmd:?}",
        boot.timeout
    ));
    let started = Instant::now();
    let deadline = started + boot.timeout;
    let host_before = HostCpu::read();
    let mut qemu = Qemu(
        cmd.spawn()
            .with_context(|| format!("could not start {cmd:?}"))?,
    );
    let (tx, rx) = mpsc::channel();
    if let Some(out) = qemu.0.stdout.take() {
        spawn_reader(out, "", tx.clone());
    }
    if let Some(err) = qemu.0.stderr.take() {
        spawn_reader(err, "qemu: ", tx);
    }
    let log_file =
        File::create(boot.log).with_context(|| format!("creating {}", boot.log.display()))?;
    let mut log = BufWriter::new(log_file);
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                eprintln!("vm| {line}");
                let _ = writeln!(log, "{line}");
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            // qemu closed its output: it has exited (or is about to).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = log.flush();
    timed_out |= !qemu.wait_until(deadline);
    step(&format!("VM: qemu ran {:.1?}", started.elapsed()));
    if let (Some(before), Some(after)) = (host_before, HostCpu::read())
        && let Some(line) = after.warning(&before)
    {
        step(&line);
    }
    Ok(Console { lines, timed_out })
}

/// The boot line KERNEL.md verified, with the console on stdio (KVM is unusable here: TCG).
fn qemu_command(boot: &Boot) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "2G",
        "-smp",
        "2",
    ])
    .args(["-nographic", "-no-reboot"])
    // No network card: the guest reaches no network but the ones its tests make inside it.
    .args(["-nic", "none"])
    .arg("-kernel")
    .arg(boot.vmlinuz)
    .arg("-initrd")
    .arg(boot.initrd)
    // loglevel=5 (after quiet): kernel warnings reach the console, routine notices don't.
    // tsc=reliable: under load, emulation's clock skew can make the watchdog mark the TSC unstable
    // mid-run, and that starts more kernel text patching (see MIN_QEMU_MAJOR in vm.rs for why
    // patching needs care under TCG); the TSC of one emulator is coherent across its vCPUs anyway.
    .args([
        "-append",
        "console=ttyS0 quiet loglevel=5 tsc=reliable panic=-1",
    ])
    // No stdin: qemu must not read (or put into raw mode) the terminal it was started from.
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// Sends each line of `stream` (without CR/LF, prefixed) until it closes.
fn spawn_reader(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_escapes(&String::from_utf8_lossy(&buf));
                    if tx
                        .send(format!("{prefix}{}", line.trim_end_matches(['\r', '\n'])))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}

/// `line` without terminal escape sequences (the firmware clears the screen with them), so the
/// log and the terminal show plain text.
pub(crate) fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
        } else if chars.next_if_eq(&'[').is_some() {
            // CSI: parameters up to a final byte in @..~.
            while chars.next().is_some_and(|p| !('@'..='~').contains(&p)) {}
        } else {
            // A two-byte sequence such as ESC c (reset).
            chars.next();
        }
    }
    out
}

/// The qemu process; killed when dropped if it is still running, so no path leaves one behind.
struct Qemu(Child);

impl Qemu {
    /// Waits for qemu to exit until `deadline`, then kills it; true if it exited by itself.
    fn wait_until(&mut self, deadline: Instant) -> bool {
        loop {
            match self.0.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.0.kill();
                    let _ = self.0.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(name: &str) -> Payload {
        Payload {
            name: name.to_owned(),
            binary: "/bin/true".into(),
            args: Vec::new(),
            cwd: None,
        }
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn results_between_markers() {
        let console = lines(
            "boot noise\nKCHAOS-VM-READY 6.12\nKCHAOS-VM-BEGIN 1/2 a\nhello\nKCHAOS-VM-END 1/2 a rc=0\n\
             KCHAOS-VM-BEGIN 2/2 b c\nno newlineKCHAOS-VM-END 2/2 b_c rc=101\n",
        );
        // "b c" becomes b_c in markers; the begin line above has "b c", so it is not found.
        let (results, err) = parse_results(&console, &[payload("a"), payload("b c")]);
        assert!(err.unwrap().contains("never started"));
        assert_eq!(results.len(), 1);

        let console = lines(
            "KCHAOS-VM-BEGIN 1/2 a\nhello\nKCHAOS-VM-END 1/2 a rc=0\n\
             KCHAOS-VM-BEGIN 2/2 b_c\nno newlineKCHAOS-VM-END 2/2 b_c rc=101\n",
        );
        let (results, err) = parse_results(&console, &[payload("a"), payload("b c")]);
        assert!(err.is_none());
        assert_eq!(results[0].exit_code, 0);
        assert_eq!(results[0].output, ["hello"]);
        assert_eq!(results[1].exit_code, 101);
        assert_eq!(results[1].output, ["no newline"]);
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("\x1bc\x1b[?7l\x1b[2JKCHAOS-VM-READY 6.12\r\n"),
            "KCHAOS-VM-READY 6.12\r\n"
        );
        assert_eq!(strip_escapes("plain"), "plain");
    }

    #[test]
    fn a_payload_without_its_end_marker_fails() {
        let console = lines("KCHAOS-VM-BEGIN 1/1 a\nstill running\n");
        let (results, err) = parse_results(&console, &[payload("a")]);
        assert!(err.unwrap().contains("no end marker"));
        // Its output so far is kept, for counting the tests that ended before it stopped.
        assert_eq!(results[0].exit_code, -1);
        assert_eq!(results[0].output, ["still running"]);
    }
}
