//! `cargo xtask test`: unit tests, the integration tests on this kernel, then inside the VM kernel;
//! at the end, the skipped tests with their reasons and one line of totals over all of it.

use std::{
    io::{Read as _, Write},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    build, setup,
    tally::{Part, Report},
    vm::{self, cargo_tests},
};

#[derive(clap::Args, Default)]
pub struct TestArgs {
    /// Skip the VM suite.
    #[arg(long)]
    pub host_only: bool,
    /// Leave out the syscall suite on the kprobe kernel (which is built from source the first time,
    /// 23 min on 2 idle cores here, then cached); its tests are counted as skipped.
    #[arg(long)]
    pub skip_kprobe_kernel: bool,
    /// Which integration tests: a test file's name (tests/tests/NAME.rs, or NAME_*.rs: `scenarios`
    /// runs every scenarios_*.rs) runs that file whole; any other word runs the tests whose name
    /// contains it. The unit tests always run whole.
    #[arg(last = true)]
    pub filter: Vec<String>,
    /// Run every selected test file this many times, on the host and in one boot per VM kernel,
    /// and print each test's passes ("k of N"): a test that did not pass all N times fails the run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let mut report = Report {
        repeat: args.repeat,
        ..Default::default()
    };
    let result = run_parts(args, &mut report);
    report.print();
    result
}

/// Runs every part, on to the next when one has failing tests (so the totals cover everything);
/// fails at the end naming the parts that failed. A step that is not a test run (building kchaos,
/// installing tools) stops it at once.
fn run_parts(args: &TestArgs, report: &mut Report) -> Result<()> {
    let kchaos = report.timed("building kchaos", |_| build::build_kchaos())?;
    let linker_dir = setup::ensure_bpf_linker()?;
    let root = setup::workspace_root();
    let mut failed = Vec::new();

    setup::step("unit tests");
    let mut unit = Command::new(env!("CARGO"));
    unit.args(["test", "--release", "--no-fail-fast"])
        .args(["-p", "chaos-common", "-p", "chaos-userspace", "-p", "xtask"])
        .current_dir(&root)
        .env("PATH", build::path_with(&linker_dir));
    if let Err(e) = report.timed("unit tests", |r| {
        run_counted(r, "unit tests", "unit tests", &mut unit)
    }) {
        failed.push(e);
    }

    // prometheus: the metrics test scrapes a run with a real server.
    setup::ensure_debian_packages(&[
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("prometheus", "prometheus"),
    ])?;
    setup::step("integration tests on this kernel");
    let selection = cargo_tests::select(&args.filter, &cargo_tests::integration_test_files()?);
    let mut host = Command::new(env!("CARGO"));
    host.args([
        "test",
        "--release",
        "--no-fail-fast",
        "-p",
        "integration-tests",
    ]);
    for binary in selection.binaries.iter().flatten() {
        host.args(["--test", binary]);
    }
    host.args(["--", "--test-threads=1"])
        .args(&selection.test_filters)
        .current_dir(&root)
        .env("KCHAOS_BIN", &kchaos)
        .env("PATH", build::path_with(&linker_dir));
    let host_label = format!(
        "host {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let host_step = format!("integration tests on the {host_label}");
    report.timed(&host_step, |r| {
        for k in 1..=args.repeat {
            if args.repeat > 1 {
                setup::step(&format!(
                    "integration tests on this kernel, run {k} of {}",
                    args.repeat
                ));
            }
            if let Err(e) = run_counted(r, "integration tests", &host_label, &mut host) {
                failed.push(e);
            }
        }
    });

    if !args.host_only {
        let vm_args = vm::VmTestArgs {
            kernel: None,
            filter: args.filter.clone(),
            repeat: args.repeat,
            skip_kprobe_kernel: args.skip_kprobe_kernel,
        };
        if let Err(e) = vm::run_suite(&vm_args, report) {
            failed.push(e.context("the VM suite"));
        }
    }
    let short = report.short_of_repeat();
    if !short.is_empty() {
        failed.push(anyhow::anyhow!(
            "{} tests did not pass in all {} runs:\n    {}",
            short.len(),
            args.repeat,
            short.join("\n    ")
        ));
    }
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0)),
        _ => {
            let all: Vec<String> = failed.iter().map(|e| format!("{e:#}")).collect();
            bail!("{} parts failed:\n  {}", all.len(), all.join("\n  "))
        }
    }
}

/// Runs a `cargo test` step, its output streamed as it comes, and adds its tests to `report` as the
/// part `label` (also when it fails).
fn run_counted(report: &mut Report, step_name: &str, label: &str, cmd: &mut Command) -> Result<()> {
    let (lines, status) = run_streamed(step_name, cmd, Box::new(std::io::stdout()))?;
    let mut part = Part::new(label);
    part.read_output("?", &lines);
    report.add(part);
    if !status.success() {
        bail!("{step_name} failed ({status}); to do it by hand run: {cmd:?}");
    }
    Ok(())
}

/// How long output still counts after the command ended: a process a test left behind may hold
/// the pipe open, and must not hold up the run.
const AFTER_EXIT: Duration = Duration::from_secs(2);

/// Runs `cmd` with its stdout and stderr on one pipe, so a test's SKIP line (stderr) stays next to
/// its `test NAME ... ` line (stdout); passes the output on to `echo` as it arrives (a test's name
/// shows while it runs) and returns it as lines, with the exit status.
fn run_streamed(
    step_name: &str,
    cmd: &mut Command,
    mut echo: Box<dyn Write + Send>,
) -> Result<(Vec<String>, ExitStatus)> {
    let (mut reader, writer) = std::io::pipe().context("making a pipe")?;
    let writer2 = writer.try_clone().context("making a pipe")?;
    cmd.stdout(writer2).stderr(writer);
    let spawned = cmd.spawn();
    // The command keeps the pipe's write end open while it holds it: without this, the reader
    // would never see the end of the output.
    cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    let mut child = spawned.with_context(|| format!("{step_name}: could not start {cmd:?}"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut line = Vec::new();
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _ = echo.write_all(&buf[..n]);
            let _ = echo.flush();
            for &b in &buf[..n] {
                if b == b'\n' {
                    let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        }
    });
    let status = child
        .wait()
        .with_context(|| format!("{step_name}: waiting for {cmd:?}"))?;
    let deadline = Instant::now() + AFTER_EXIT;
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(line);
    }
    Ok((lines, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_output_is_counted_with_stderr_in_place() {
        // A test binary's shape: the SKIP line on stderr between the test's start and its verdict.
        let script = "echo 'running 2 tests'; printf 'test a ... '; \
                      echo 'SKIP a [host]: why' >&2; echo ok; echo 'test b ... FAILED'; exit 101";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        let (lines, status) = run_streamed("script", &mut cmd, Box::new(std::io::sink())).unwrap();
        assert_eq!(status.code(), Some(101));
        let mut part = Part::new("host");
        part.read_output("x", &lines);
        assert_eq!((part.passed(), part.failed(), part.skipped()), (0, 1, 1));
    }

    #[test]
    fn a_process_left_holding_the_pipe_does_not_hold_up_the_run() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo before; sleep 6 & echo $!"]);
        let started = Instant::now();
        let (lines, status) = run_streamed("script", &mut cmd, Box::new(std::io::sink())).unwrap();
        let elapsed = started.elapsed();
        let sleep = lines.get(1).and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = sleep {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        assert!(status.success());
        assert_eq!(lines[0], "before");
        assert!(sleep.is_some(), "{lines:?}");
        assert!(elapsed < AFTER_EXIT + Duration::from_secs(2), "{elapsed:?}");
    }
}
