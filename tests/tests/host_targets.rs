//! Host-critical targets are refused unless `--allow-host`: a cgroup holding PID 1, kchaos itself, or a
//! process an operator needs to recover the host (sshd, containerd, kubelet ...), named by the target,
//! the process and its pid; the refusal comes before anything is done to the target.
//!
//! The protected process here is a copy of kchaos (idling) named `sshd`, in a cgroup the test makes: the host's
//! own sshd and init are never touched.

use std::{
    path::Path,
    process::{Child, Command, Output},
    time::Duration,
};

use integration_tests::{RunDir, TempDir, kchaos, lab::LabCgroup, root_or_skip, spawn_in, tag};

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Processes a test started, killed and reaped on drop (also when an assertion fails).
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The state letter of a process (/proc/PID/stat field 3).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or('?')
}

/// `kill --pid 1` (and `pause`, `time`, `syscall` on it) is refused with exit 2 naming PID 1's cgroup
/// and `--allow-host`. Each is first tried as `--dry-run` (which resolves the same targets and
/// signals nothing): only when that is refused does the real command run, so a regression here can
/// never signal the test host's init.
#[test]
fn pid_1_is_refused_before_anything_is_sent() {
    if !root_or_skip("pid_1_is_refused_before_anything_is_sent") {
        return;
    }
    let runs = RunDir::new();
    let commands: [&[&str]; 4] = [
        &["kill", "--pid", "1", "--signal", "INT"],
        &["pause", "--pid", "1", "--duration", "1s"],
        &["time", "--pid", "1", "--offset", "1h", "--duration", "1s"],
        &[
            "syscall",
            "--pid",
            "1",
            "--syscall",
            "connect",
            "--errno",
            "ECONNREFUSED",
            "--duration",
            "1s",
        ],
    ];
    for args in commands {
        for dry in [true, false] {
            let mut argv = args.to_vec();
            if dry {
                argv.push("--dry-run");
            }
            let (code, stdout, stderr) = text(&runs.run(&argv));
            assert_eq!(code, 2, "{argv:?}: {stdout}{stderr}");
            assert!(
                stderr.contains("--pid 1: ") && stderr.contains("add --allow-host"),
                "{argv:?}: {stderr}"
            );
            // Its cgroup is the root (a container's init) or holds PID 1 itself.
            assert!(
                stderr.contains("holds PID 1 (")
                    || stderr.contains("holds init.scope")
                    || stderr.contains("the root cgroup"),
                "{argv:?}: {stderr}"
            );
            assert!(!stdout.contains("signalled"), "{argv:?}: {stdout}");
        }
    }
    assert!(runs.records().is_empty(), "{:?}", runs.records());
}

/// A copy of kchaos (idling) named `sshd` in a test cgroup: `pause --cgroup` on that cgroup (and on its
/// parent, and by `--pid`) is refused naming the process, nothing is frozen; with `--allow-host` the
/// same pause runs. A plain `sleep` there is no reason to refuse, unless `KCHAOS_PROTECT` names it; a
/// process named `sshd` in a pid namespace of its own is a container's, not the host's.
#[test]
fn a_cgroup_holding_a_protected_process_is_refused_unless_allow_host() {
    if !root_or_skip("a_cgroup_holding_a_protected_process_is_refused_unless_allow_host") {
        return;
    }
    let dir = TempDir::new("protected");
    let sshd = dir.0.join("sshd");
    // A copy of kchaos idling (`/bin/sleep` is a busybox link in the VM, which a new name breaks).
    std::fs::copy(integration_tests::kchaos(), &sshd).unwrap();
    let parent = LabCgroup::create(&format!("kchaos-test-{}", tag("h"))).unwrap();
    let cg = parent.child("svc").unwrap();
    let plain = parent.child("plain").unwrap();
    let mut kids = Kids(Vec::new());
    kids.0
        .push(spawn_in(&cg, &[sshd.to_str().unwrap(), "idle"]));
    kids.0.push(spawn_in(&plain, &["sleep", "300"]));
    let sshd_pid = kids.0[0].id();
    let sleep_pid = kids.0[1].id();
    // The shell execs: wait until the process is named sshd.
    for _ in 0..200 {
        if std::fs::read_to_string(format!("/proc/{sshd_pid}/comm")).is_ok_and(|c| c == "sshd\n") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let runs = RunDir::new();
    let cg_arg = cg.display().to_string();
    let parent_arg = parent.path.display().to_string();
    let pid_arg = sshd_pid.to_string();
    for (flag, value, path) in [
        ("--cgroup", &cg_arg, &cg_arg),
        ("--cgroup", &parent_arg, &parent_arg),
        ("--pid", &pid_arg, &cg_arg),
    ] {
        let target = [flag, value.as_str()];
        let mut argv = vec!["pause"];
        argv.extend(target);
        argv.extend(["--duration", "2s"]);
        let (code, stdout, stderr) = text(&runs.run(&argv));
        assert_eq!(code, 2, "{argv:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!(
                "{flag} {value}: {path} holds pid {sshd_pid} (sshd), a process an operator needs \
                 to recover the host"
            )) && stderr.contains("add --allow-host"),
            "{argv:?}: {stderr}"
        );
        assert_eq!(frozen(&cg), "0", "{argv:?}: the cgroup was frozen");
        assert_ne!(state(sshd_pid), 'T');
    }
    // A scenario target: the same refusal, at the target.
    let file = dir.0.join("s.yaml");
    std::fs::write(
        &file,
        format!(
            "title: t\ntargets: [{{name: svc, cgroup: \"{cg_arg}\"}}]\nfaults: [{{for: 1s, pause: {{}}}}]\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = text(&runs.run(&["validate", file.to_str().unwrap()]));
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stdout.contains("[  HIGH] host-critical-target: target 'svc': ")
            && stdout.contains(&format!("holds pid {sshd_pid} (sshd)")),
        "{stdout}{stderr}"
    );
    let (code, stdout, stderr) = text(&runs.run(&["run", file.to_str().unwrap()]));
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert_eq!(frozen(&cg), "0", "run: the cgroup was frozen");
    // allow_host: true resolves it, and the review still rates it high.
    let allowed = dir.0.join("allowed.yaml");
    std::fs::write(
        &allowed,
        format!(
            "title: t\nallow_host: true\ntargets: [{{name: svc, cgroup: \"{cg_arg}\"}}]\nfaults: [{{for: 1s, pause: {{}}}}]\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = text(&runs.run(&["validate", allowed.to_str().unwrap()]));
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "[  HIGH] host-critical-target: target 'svc' ({cg_arg}) holds pid {sshd_pid} (sshd)"
        )),
        "{stdout}{stderr}"
    );

    // A plain sleep is fine; named in KCHAOS_PROTECT it is protected too.
    let plain_arg = plain.display().to_string();
    let (code, stdout, stderr) = text(&runs.run(&[
        "pause",
        "--cgroup",
        &plain_arg,
        "--duration",
        "1s",
        "--dry-run",
    ]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let out = Command::new(kchaos())
        .args([
            "pause",
            "--cgroup",
            &plain_arg,
            "--duration",
            "1s",
            "--dry-run",
        ])
        .env("KCHAOS_RUN_DIR", &runs.0)
        .env("KCHAOS_PROTECT", "nginx, sleep")
        .output()
        .unwrap();
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("holds pid {sleep_pid} (sleep)")),
        "{stderr}"
    );

    // With --allow-host the pause runs: the process is frozen while it does, and thawed after.
    let mut run = runs.spawn(&[
        "pause",
        "--cgroup",
        &cg_arg,
        "--duration",
        "2s",
        "--allow-host",
    ]);
    run.wait_for("armed for", Duration::from_secs(10));
    assert_eq!(frozen(&cg), "1", "--allow-host: not frozen");
    let (code, _, stderr) = run.finish();
    assert_eq!(code, 0, "--allow-host: {stderr}");
    assert_eq!(frozen(&cg), "0", "not thawed");

    // The same name in a pid namespace of its own: a container's sshd, not the host's.
    let ns = parent.child("ns").unwrap();
    kids.0.push(spawn_in(
        &ns,
        &["unshare", "--pid", "--fork", sshd.to_str().unwrap(), "idle"],
    ));
    let ns_arg = ns.display().to_string();
    let mut named = false;
    for _ in 0..200 {
        named = std::fs::read_to_string(ns.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "sshd\n")
            });
        if named {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(named, "no sshd in the namespace");
    let (code, stdout, stderr) = text(&runs.run(&[
        "pause",
        "--cgroup",
        &ns_arg,
        "--duration",
        "1s",
        "--dry-run",
    ]));
    assert_eq!(
        code, 0,
        "an sshd in its own pid namespace: {stdout}{stderr}"
    );
    assert!(runs.records().is_empty(), "{:?}", runs.records());
}

/// cgroup.freeze of `cg`: "1" while kchaos holds it frozen.
fn frozen(cg: &Path) -> String {
    std::fs::read_to_string(cg.join("cgroup.freeze"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}
