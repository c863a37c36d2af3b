//! The second test kernel: programs ("payloads") run inside a Debian 6.12 kernel under qemu (TCG),
//! booted from an initramfs that holds busybox, iproute2, kchaos and the payloads.
//!
//! Each payload's verdict is read from marker lines on the serial console, never from qemu's exit
//! code: a panic, a timeout or a payload without its end marker is a failure.

pub mod build_kernel;
pub mod cargo_tests;
mod console;
mod host_load;
mod initramfs;
pub mod kernel;
mod modules;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    build, setup,
    tally::{Outcome, Part, Report, TestRecord},
};

pub use console::PayloadResult;
pub(crate) use console::strip_escapes;

/// Workspace directories copied into the VM at their host paths: the tests find them through
/// `env!("CARGO_MANIFEST_DIR")`, a host path fixed at compile time.
const WORKSPACE_DATA: &[&str] = &["scenarios", "integrations/grafana"];

/// The whole VM run's limit unless $KCHAOS_VM_TIMEOUT (seconds) says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25 * 60);

#[derive(clap::Args, Default, Clone)]
pub struct VmTestArgs {
    /// A kernel .deb or an unpacked directory to boot instead of the default Debian kernel;
    /// `kprobe`: the kernel xtask builds from Debian's linux-source-6.12 with bpf_override_return.
    #[arg(long)]
    pub kernel: Option<std::path::PathBuf>,
    /// Which tests: a test file's name (tests/tests/NAME.rs, or NAME_*.rs: `scenarios` runs every
    /// scenarios_*.rs) runs that file whole; any other word runs the tests whose name contains it.
    #[arg(last = true)]
    pub filter: Vec<String>,
    /// Run the selected tests this many times in one boot (to prove a test is not flaky).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Without --kernel, the syscall suite also runs on the kprobe kernel (Debian's source with
    /// bpf_override_return), which is built the first time (23 min on 2 idle cores here; then cached:
    /// `cargo xtask build-kernel` builds it alone). This leaves that part out, counted as skipped.
    #[arg(long)]
    pub skip_kprobe_kernel: bool,
}

/// The test files that also run on the kprobe kernel (where every syscall backend exists).
const KPROBE_KERNEL_SUITES: &[&str] = &["syscall"];

/// A program to run inside the VM: `binary` (a host path, copied in with its libraries) with `args`.
#[derive(Clone, Debug)]
pub struct Payload {
    pub name: String,
    pub binary: PathBuf,
    pub args: Vec<String>,
    /// Its working directory inside the VM (made if missing); None: /tmp.
    pub cwd: Option<PathBuf>,
}

/// `cargo xtask vm-test`: the integration tests inside the VM kernel, then their totals.
pub fn run(args: &VmTestArgs) -> Result<()> {
    let mut report = Report {
        repeat: args.repeat,
        ..Default::default()
    };
    let mut result = run_suite(args, &mut report);
    let short = report.short_of_repeat();
    if result.is_ok() && !short.is_empty() {
        result = Err(anyhow::anyhow!(
            "{} tests did not pass in all {} runs:\n    {}",
            short.len(),
            args.repeat,
            short.join("\n    ")
        ));
    }
    report.print();
    result
}

/// Runs the integration tests (those `args.filter` selects) inside the VM kernel and adds their
/// counts to `report`, also when the run fails partway.
pub fn run_suite(args: &VmTestArgs, report: &mut Report) -> Result<()> {
    let kchaos = report.timed("building kchaos for the VM", |_| build::build_kchaos())?;
    let mut tests = report.timed("building the integration tests for the VM", |_| {
        cargo_tests::build_integration_tests()
    })?;
    if tests.is_empty() {
        bail!("the integration-tests crate produced no test executables (no tests/tests/*.rs?)");
    }
    // Cargo reports them in build order, which varies; a fixed order makes runs comparable.
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<String> = tests.iter().map(|t| t.name.clone()).collect();
    let selection = cargo_tests::select(&args.filter, &names);
    tests.retain(|t| selection.runs(&t.name));
    let mut test_args = vec!["--test-threads=1".to_owned()];
    test_args.extend(selection.test_filters.iter().cloned());
    let payloads: Vec<Payload> = (1..=args.repeat)
        .flat_map(|k| tests.iter().map(move |t| (k, t)))
        .map(|(k, t)| Payload {
            name: if args.repeat > 1 {
                format!("{}-run{k}", t.name)
            } else {
                t.name.clone()
            },
            binary: t.path.clone(),
            args: test_args.clone(),
            // Where `cargo test` runs them: the package's directory.
            cwd: Some(setup::workspace_root().join("tests")),
        })
        .collect();
    let first = run_on(args.kernel.as_deref(), &kchaos, &payloads, report);
    if args.kernel.is_some() {
        return first;
    }
    let kprobe_payloads: Vec<Payload> = payloads
        .iter()
        .filter(|p| {
            KPROBE_KERNEL_SUITES
                .iter()
                .any(|s| p.name == *s || p.name.starts_with(&format!("{s}-run")))
        })
        .cloned()
        .collect();
    if kprobe_payloads.is_empty() {
        return first;
    }
    if args.skip_kprobe_kernel {
        let mut part = Part::new("VM kprobe kernel");
        for p in &kprobe_payloads {
            part.tests.push(TestRecord {
                binary: p.name.clone(),
                name: "(every test of this file)".to_owned(),
                outcome: Outcome::Skipped("--skip-kprobe-kernel".to_owned()),
            });
        }
        report.add(part);
        return first;
    }
    // The first run builds the kernel (kernel::obtain), later runs and clones take it from the cache:
    // obtained here first, so that its build is timed apart from the suite.
    let obtained = report.timed("kprobe kernel (built, or from the cache)", |_| {
        kernel::obtain(Some(Path::new(kernel::KPROBE_KERNEL)), &vm_dir()?)
    });
    if let Err(e) = obtained {
        return first.and(Err(e));
    }
    let second = run_on(
        Some(Path::new(kernel::KPROBE_KERNEL)),
        &kchaos,
        &kprobe_payloads,
        report,
    );
    first.and(second)
}

/// Boots `kernel`, runs `payloads`, adds their counts to `report`.
fn run_on(
    kernel: Option<&Path>,
    kchaos: &Path,
    payloads: &[Payload],
    report: &mut Report,
) -> Result<()> {
    let started = Instant::now();
    let run = boot_payloads(kernel, Some(kchaos), payloads, timeout_from_env()?)?;
    report.durations.push((
        format!("VM {} (boot and suite)", run.kernel_release),
        started.elapsed(),
    ));
    let mut part = Part::new(&format!("VM {}", run.kernel_release));
    for r in &run.results {
        part.read_output(&r.name, &r.output);
    }
    report.add(part);
    let verdicts = summarize(&run.results);
    // A run that failed partway says why (a panic, the time limit) better than its payloads do.
    match run.failure {
        Some(failure) => Err(failure),
        None => verdicts,
    }
}

/// What a VM run produced: each payload's result, and why the run failed partway, if it did.
pub struct VmRun {
    pub kernel_release: String,
    pub results: Vec<PayloadResult>,
    pub failure: Option<anyhow::Error>,
}

/// Boots the VM kernel (`kernel`: a .deb or unpacked directory; None for the default Debian
/// kernel), runs `payloads` in order with /bin/kchaos from `kchaos`, and returns each one's exit
/// code and output. An Err means the run itself failed (panic, timeout, missing end marker).
pub fn run_payloads(
    kernel: Option<&Path>,
    kchaos: Option<&Path>,
    payloads: &[Payload],
    timeout: Duration,
) -> Result<Vec<PayloadResult>> {
    let run = boot_payloads(kernel, kchaos, payloads, timeout)?;
    match run.failure {
        Some(failure) => Err(failure),
        None => Ok(run.results),
    }
}

/// The same, keeping the results of the payloads that ended when the run fails partway (a panic,
/// the time limit); an Err here means nothing ran (no kernel, no image, no qemu).
pub fn boot_payloads(
    kernel: Option<&Path>,
    kchaos: Option<&Path>,
    payloads: &[Payload],
    timeout: Duration,
) -> Result<VmRun> {
    let started = Instant::now();
    ensure_vm_packages()?;
    let vm_dir = vm_dir()?;
    let kernel = kernel::obtain(kernel, &vm_dir)?;
    let work = TempDir::create(&vm_dir, "run")?;
    let modules = modules::prepare(&kernel, modules::WANTED, &work.path.join("modules"))?;
    let initrd = work.path.join("initramfs.gz");
    let root = setup::workspace_root();
    let data_dirs: Vec<PathBuf> = WORKSPACE_DATA.iter().map(|d| root.join(d)).collect();
    let tools = test_tools(&root, &work.path)?;
    initramfs::build(
        &initramfs::Contents {
            kernel: &kernel,
            modules: &modules,
            kchaos,
            payloads,
            data_dirs: &data_dirs,
            tools: &tools,
        },
        &initrd,
    )?;
    let log = vm_dir.join("console.log");
    let boot = console::Boot {
        vmlinuz: &kernel.vmlinuz,
        initrd: &initrd,
        log: &log,
        timeout,
    };
    let collected = console::boot_and_collect(&boot, payloads, &kernel.release)
        .with_context(|| format!("on kernel {} ({})", kernel.release, kernel.source))?;
    setup::step(&format!(
        "VM results above came from kernel {} ({}), in {:.0?} in all; console log: {}",
        kernel.release,
        kernel.source,
        started.elapsed(),
        log.display()
    ));
    Ok(VmRun {
        kernel_release: kernel.release.clone(),
        results: collected.results,
        failure: collected
            .failure
            .map(|e| e.context(format!("on kernel {} ({})", kernel.release, kernel.source))),
    })
}

/// The time tests' clock helper (`tests/src/time_helper.c`), built here on the host, statically and
/// dynamically (the image has no C compiler): the tests find them through
/// `KCHAOS_TIME_HELPER_STATIC` and `KCHAOS_TIME_HELPER`.
fn test_tools(root: &Path, work: &Path) -> Result<Vec<initramfs::Tool>> {
    let src = root.join("tests/src/time_helper.c");
    let mut out = Vec::new();
    for (name, env, extra) in [
        (
            "time-helper-static",
            "KCHAOS_TIME_HELPER_STATIC",
            &["-static"][..],
        ),
        ("time-helper", "KCHAOS_TIME_HELPER", &[][..]),
    ] {
        let host = work.join(name);
        let status = Command::new("cc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&host)
            .arg(&src)
            .args(extra)
            .status()
            .context("running cc to build the time tests' clock helper")?;
        if !status.success() {
            bail!(
                "cc {} -o {} failed ({status}): the time tests need it (a static build needs the \
                 C library's static archive: libc6-dev)",
                src.display(),
                host.display()
            );
        }
        out.push(initramfs::Tool {
            image_path: format!("usr/libexec/kchaos/{name}"),
            host,
            env: env.to_owned(),
        });
    }
    Ok(out)
}

/// `cargo xtask build-kernel`: the kprobe kernel, built unless cached.
pub fn build_kprobe_kernel() -> Result<()> {
    let dir = build_kernel::obtain(&vm_dir()?)?;
    println!("{}", dir.display());
    Ok(())
}

/// Prints one line per payload and fails if any failed.
fn summarize(results: &[PayloadResult]) -> Result<()> {
    let mut failed = Vec::new();
    for r in results {
        // The test harness's own tally, when the payload is a Rust test executable.
        let tally = r
            .output
            .iter()
            .rev()
            .find(|l| l.trim_start().starts_with("test result:"));
        let verdict = match r.exit_code {
            0 => "ok".to_owned(),
            -1 => "FAILED (did not end)".to_owned(),
            code => format!("FAILED (exit {code})"),
        };
        setup::step(&format!(
            "VM {}: {verdict}{}",
            r.name,
            tally.map(|t| format!(": {}", t.trim())).unwrap_or_default()
        ));
        if r.exit_code != 0 {
            failed.push(r.name.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("inside the VM kernel, these failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The overall VM limit: $KCHAOS_VM_TIMEOUT seconds, or 25 minutes.
fn timeout_from_env() -> Result<Duration> {
    match std::env::var("KCHAOS_VM_TIMEOUT") {
        Ok(s) => {
            let secs: u64 = s
                .trim()
                .parse()
                .with_context(|| format!("KCHAOS_VM_TIMEOUT={s:?} is not a number of seconds"))?;
            Ok(Duration::from_secs(secs))
        }
        Err(_) => Ok(DEFAULT_TIMEOUT),
    }
}

/// qemu, busybox (static, so the image needs no libraries for it) and the tools the tests call.
fn ensure_vm_packages() -> Result<()> {
    ensure_qemu()?;
    setup::ensure_debian_packages(&[
        ("busybox", "busybox-static"),
        ("xz", "xz-utils"),
        ("gzip", "gzip"),
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("dpkg-deb", "dpkg"),
        ("ldd", "libc-bin"),
    ])
}

/// The oldest qemu the VM suite runs on. qemu 7.2's multi-threaded TCG loses a race when one vCPU
/// rewrites kernel text while the other translates the same page: the other vCPU keeps a translation
/// with the int3 that `text_poke_bp` puts in place for the length of a patch, and the guest oopses
/// ("Oops: int3" at ip_finish_output when the first cgroup program flips the cgroup-BPF static key, or
/// in bpf_lsm_file_permission when an LSM trampoline is attached) after the patch has completed.
/// Attaching and detaching a cgroup_skb program in a loop beside loopback traffic crashed 7.2 within
/// seconds; 10.0 ran 89 rounds without a fault.
const MIN_QEMU_MAJOR: u32 = 10;

/// qemu-system-x86_64 at least `MIN_QEMU_MAJOR`: on Debian 12, whose own is 7.2, from
/// bookworm-backports (which apt pins below bookworm, so nothing else is upgraded from it).
fn ensure_qemu() -> Result<()> {
    if qemu_major().is_some_and(|major| major >= MIN_QEMU_MAJOR) {
        return Ok(());
    }
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !os.lines().any(|l| l == "VERSION_CODENAME=bookworm") {
        let found = qemu_major().map_or("none".to_owned(), |m| format!("major version {m}"));
        bail!(
            "the VM suite needs qemu-system-x86_64 {MIN_QEMU_MAJOR} or newer (found: {found}): older \
             multi-threaded TCG oopses the guest when it patches kernel text; install a newer qemu \
             or run `cargo xtask test --host-only`"
        );
    }
    let list = Path::new("/etc/apt/sources.list.d/kchaos-bookworm-backports.list");
    setup::step(&format!(
        "qemu {MIN_QEMU_MAJOR}+: installing qemu-system-x86 from bookworm-backports (Debian 12's 7.2 \
         oopses guests under multi-threaded TCG); adding {}",
        list.display()
    ));
    std::fs::write(
        list,
        "deb http://deb.debian.org/debian bookworm-backports main\n",
    )
    .with_context(|| format!("writing {}", list.display()))?;
    setup::run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    setup::run_step(
        "apt-get install qemu-system-x86 from bookworm-backports",
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(["-t", "bookworm-backports", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    match qemu_major() {
        Some(major) if major >= MIN_QEMU_MAJOR => Ok(()),
        found => {
            bail!("after installing from bookworm-backports, qemu's major version is {found:?}")
        }
    }
}

/// The major version `qemu-system-x86_64 --version` reports ("QEMU emulator version 10.0.2 ...").
fn qemu_major() -> Option<u32> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split("version ").nth(1)?;
    version.split('.').next()?.trim().parse().ok()
}

/// `<cache>/vm`: the kernel package, its unpacked tree and the last console log.
fn vm_dir() -> Result<PathBuf> {
    let dir = setup::cache_dir()?.join("vm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A per-run directory under the cache, removed when dropped (on success and on error alike).
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `<parent>/<prefix>-<pid>`, emptied first.
    fn create(parent: &Path, prefix: &str) -> Result<TempDir> {
        remove_stale_dirs(parent);
        let path = parent.join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes the temporary directories (`run-<pid>`, `download-<pid>`, `kbuild-<pid>`, `<x>.unpacking-<pid>`) of
/// runs that were killed before they could clean up: their pid no longer exists.
fn remove_stale_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_dir_pid(&name) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid in the name of one of our temporary directories.
fn temp_dir_pid(name: &str) -> Option<u32> {
    let pid = name
        .strip_prefix("run-")
        .or_else(|| name.strip_prefix("download-"))
        .or_else(|| name.strip_prefix("kbuild-"))
        .or_else(|| name.rsplit_once(".unpacking-").map(|(_, pid)| pid))?;
    pid.parse().ok()
}

/// Runs `cmd` and returns its stdout, failing with `what` and the command on a non-zero exit.
fn capture(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {cmd:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Boots the real VM with shell payloads (and `kchaos probe` if built): the boot path without
    /// the integration tests. Slow and downloads the kernel once, so only on request:
    /// `cargo test -p xtask --release -- --ignored --nocapture vm_smoke`.
    /// Debugging aid: `KCHAOS_VM_SCRIPT='...' cargo test -p xtask --release -- --ignored vm_shell
    /// --nocapture` runs a shell script inside the VM (with $KCHAOS_BIN) and prints its output.
    #[test]
    #[ignore = "boots a VM; run by hand"]
    fn vm_shell() {
        let script =
            std::env::var("KCHAOS_VM_SCRIPT").unwrap_or_else(|_| "$KCHAOS_BIN probe".into());
        let kchaos = build::target_dir().join("release/kchaos");
        let payload = Payload {
            name: "shell".into(),
            binary: "/bin/sh".into(),
            args: vec!["-c".into(), script],
            cwd: None,
        };
        // KCHAOS_VM_KERNEL: another kernel (a .deb, a tree, or `kprobe`), as vm-test --kernel.
        let kernel = std::env::var_os("KCHAOS_VM_KERNEL").map(PathBuf::from);
        let results = run_payloads(
            kernel.as_deref(),
            Some(&kchaos),
            &[payload],
            Duration::from_secs(300),
        )
        .unwrap();
        for line in &results[0].output {
            eprintln!("{line}");
        }
    }

    #[test]
    #[ignore]
    fn vm_smoke() {
        let sh = |name: &str, script: &str| Payload {
            name: name.to_owned(),
            binary: "/bin/sh".into(),
            args: vec!["-c".to_owned(), script.to_owned()],
            cwd: None,
        };
        let mut payloads = vec![
            sh(
                "env",
                "uname -a; echo KCHAOS_BIN=$KCHAOS_BIN label=$KCHAOS_KERNEL_LABEL; cat /proc/mounts; cat /sys/kernel/security/lsm 2>&1; echo",
            ),
            sh(
                "net",
                "ip -V && tc -V && ip netns add t && ip -n t link add va type veth peer name vb && ip -n t link && tc -n t qdisc add dev va root netem delay 10ms 2ms distribution normal && tc -n t qdisc add dev vb root fq && tc -n t qdisc add dev vb clsact && ip netns exec t sh -c \"ip link set va up; ip link set vb up; ip -br link\" && tc -n t qdisc show && lsmod",
            ),
            sh("fails", "echo about to fail; exit 3"),
        ];
        let kchaos = build::target_dir().join("release/kchaos");
        if kchaos.is_file() {
            payloads.push(Payload {
                name: "probe".to_owned(),
                binary: "/bin/sh".into(),
                args: vec!["-c".into(), "$KCHAOS_BIN probe".into()],
                cwd: None,
            });
        }
        let results = run_payloads(
            None,
            Some(&kchaos).filter(|k| k.is_file()).map(PathBuf::as_path),
            &payloads,
            Duration::from_secs(300),
        )
        .unwrap();
        for r in &results {
            eprintln!("{} rc={} lines={}", r.name, r.exit_code, r.output.len());
        }
        assert_eq!(results[0].exit_code, 0);
        assert_eq!(results[1].exit_code, 0);
        assert_eq!(results[2].exit_code, 3);
        assert_eq!(results[2].output, ["about to fail"]);
    }
}
