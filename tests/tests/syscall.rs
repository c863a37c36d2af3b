//! `kchaos syscall`: errnos real processes saw. The cgroup backend runs here; the BPF LSM backend
//! runs where the kernel has it (the VM kernel) and says SKIP with the reason elsewhere; the kprobe
//! backend's availability answer is checked against what the kernel really offers.

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use chaos_userspace::kinds::syscall::BackendSupport;
use integration_tests::{
    RunDir, attach_type, cgroup_programs, lab::LabCgroup, root_or_skip, run, skip, tag, traffic,
};

fn cgroup(name: &str) -> LabCgroup {
    LabCgroup::create(&format!("kchaos-test-{}", tag(name))).unwrap()
}

fn calls(cg: Option<&Path>, op: &str, count: u64, dir: Option<&Path>) -> serde_json::Value {
    let count = count.to_string();
    let mut args = vec!["syscalls", "--op", op, "--count", &count];
    let d;
    if let Some(dir) = dir {
        d = dir.display().to_string();
        args.extend(["--dir", &d]);
    }
    traffic(cg, None, &args)
}

fn errors(v: &serde_json::Value, errno: i32) -> u64 {
    v["errnos"][errno.to_string()].as_u64().unwrap_or(0)
}

fn total_errors(v: &serde_json::Value) -> u64 {
    v["calls"].as_u64().unwrap() - v["ok"].as_u64().unwrap()
}

/// Programs effective on the cgroup at every hook the cgroup backend uses (the kernel's listing).
fn cgroup_hooks(cg: &Path) -> Vec<u32> {
    [
        attach_type::INET4_CONNECT,
        attach_type::INET4_BIND,
        attach_type::UDP4_SENDMSG,
        attach_type::INET_SOCK_CREATE,
    ]
    .into_iter()
    .flat_map(|t| cgroup_programs(cg, t))
    .collect()
}

/// The ids of loaded programs named like kchaos's host-wide ones (LSM, kprobe, fmod_ret). A tracer
/// may load programs with such names too, so a test compares against what was there before it.
fn our_programs() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str().is_some_and(|n| {
                n.starts_with("sys_")
                    || n.starts_with("lsm_")
                    || n.starts_with("kp_")
                    || n.starts_with("fm_")
            })
        })
        .map(|p| p.id())
        .collect()
}

/// Such programs loaded since `before` and still there 2 s on (the kernel frees a program once its
/// last fd and link are gone, which under emulation can lag the loader's exit).
fn programs_left(before: &BTreeSet<u32>) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<u32> = our_programs().difference(before).copied().collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connect_fails_at_the_configured_rate_only_inside_the_cgroup() {
    if !root_or_skip("connect_fails_at_the_configured_rate_only_inside_the_cgroup") {
        return;
    }
    let cg = cgroup("sc");
    let cg_path = cg.path.display().to_string();
    let runs = RunDir::new();
    let running = runs.start(&[
        "syscall",
        "--cgroup",
        &cg_path,
        "--syscall",
        "connect",
        "--errno",
        "ECONNREFUSED",
        "--percent",
        "30",
        "--quiet",
    ]);
    let inside = calls(Some(&cg.path), "connect", 20_000, None);
    let outside = calls(None, "connect", 5_000, None);
    let (code, lines) = running.terminate();
    assert_eq!(code, 143, "{lines:?}");
    let failed = errors(&inside, libc::ECONNREFUSED);
    let rate = 100.0 * failed as f64 / 20_000.0;
    println!(
        "inside: {failed}/20000 ECONNREFUSED ({rate:.2}%); outside: {} errors",
        total_errors(&outside)
    );
    assert_eq!(
        total_errors(&inside),
        failed,
        "an errno other than ECONNREFUSED: {inside}"
    );
    // Each call fails on its own draw: the count is binomial.
    integration_tests::stats::assert_binomial("connect calls refused", failed, 20_000, 0.3);
    assert_eq!(
        total_errors(&outside),
        0,
        "a process outside the cgroup saw errors"
    );
    // The kernel's count agrees with what the process saw.
    let summary = lines
        .iter()
        .find(|l| l.contains("connect calls") && !l.starts_with('['))
        .cloned()
        .unwrap_or_default();
    assert!(
        summary.contains(&format!("failed {failed} ")),
        "summary {summary:?} vs {failed}"
    );
}

#[test]
fn after_and_max_are_exact() {
    if !root_or_skip("after_and_max_are_exact") {
        return;
    }
    let cg = cgroup("sa");
    let cg_path = cg.path.display().to_string();
    let runs = RunDir::new();
    let running = runs.start(&[
        "syscall",
        "--cgroup",
        &cg_path,
        "--syscall",
        "connect",
        "--errno",
        "ETIMEDOUT",
        "--after",
        "100",
        "--max",
        "50",
        "--quiet",
    ]);
    let seen = calls(Some(&cg.path), "connect", 400, None);
    running.terminate();
    let at: Vec<u64> = seen["error_at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        at,
        (100..150).collect::<Vec<u64>>(),
        "errors must hit exactly calls 100..150"
    );
    assert_eq!(errors(&seen, libc::ETIMEDOUT), 50);
}

#[test]
fn bind_sendmsg_and_socket_fail_through_cgroup_hooks() {
    if !root_or_skip("bind_sendmsg_and_socket_fail_through_cgroup_hooks") {
        return;
    }
    let cg = cgroup("sb");
    let cg_path = cg.path.display().to_string();
    for (op, errno, name) in [
        ("bind", libc::EADDRINUSE, "EADDRINUSE"),
        ("sendmsg", libc::ENOBUFS, "ENOBUFS"),
        ("socket", libc::EMFILE, "EMFILE"),
    ] {
        let runs = RunDir::new();
        let running = runs.start(&[
            "syscall",
            "--cgroup",
            &cg_path,
            "--syscall",
            op,
            "--errno",
            name,
            "--backend",
            "cgroup",
            "--quiet",
        ]);
        let seen = calls(Some(&cg.path), op, 200, None);
        running.terminate();
        assert_eq!(errors(&seen, errno), 200, "{op}: {seen}");
    }
    assert_eq!(
        cgroup_hooks(&cg.path),
        Vec::<u32>::new(),
        "programs left attached after the runs"
    );
    assert_eq!(
        total_errors(&calls(Some(&cg.path), "socket", 200, None)),
        0,
        "a fault outlived its run"
    );
}

#[test]
fn unavailable_backends_are_refused_with_the_reason() {
    if !root_or_skip("unavailable_backends_are_refused_with_the_reason") {
        return;
    }
    let cg = cgroup("su");
    let cg_path = cg.path.display().to_string();
    let support = BackendSupport::probe();
    println!(
        "backends here [{}]: {support:?}",
        integration_tests::kernel_label()
    );
    // fsync has only the kprobe backend.
    let out = RunDir::new().run(&[
        "syscall",
        "--cgroup",
        &cg_path,
        "--syscall",
        "fsync",
        "--errno",
        "EIO",
        "--duration",
        "1s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match &support.kprobe {
        Err(why) => {
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(
                stderr.contains("fsync") && stderr.contains(why.as_str()),
                "{stderr}"
            );
        }
        Ok(()) => assert!(
            out.status.success(),
            "kprobe override is available, yet: {stderr}"
        ),
    }
    // The kprobe answer matches the kernel: no kprobe PMU means no kprobes at all.
    let has_kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if !has_kprobes {
        assert!(
            support
                .kprobe
                .as_ref()
                .unwrap_err()
                .contains("CONFIG_KPROBES")
        );
    }
    let out = RunDir::new().run(&[
        "syscall",
        "--cgroup",
        &cg_path,
        "--syscall",
        "connect",
        "--errno",
        "EIO",
        "--backend",
        "fmod_ret",
        "--duration",
        "1s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match &support.fmod_ret {
        Err(why) => {
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.contains(why.as_str()), "{stderr}");
        }
        Ok(()) => assert!(
            out.status.success(),
            "trampolines are available, yet: {stderr}"
        ),
    }
    for (args, expect) in [
        (
            vec!["--syscall", "frobnicate", "--errno", "EIO"],
            "allowed are",
        ),
        (
            vec!["--syscall", "connect", "--errno", "EWHAT"],
            "unknown errno",
        ),
        (
            vec![
                "--syscall",
                "connect",
                "--errno",
                "EIO",
                "--path-prefix",
                "/tmp",
            ],
            "open",
        ),
    ] {
        let mut full = vec!["syscall", "--cgroup", &cg_path];
        full.extend(args);
        let out = run(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
    }
    assert_eq!(cgroup_hooks(&cg.path), Vec::<u32>::new());
}

/// `kchaos probe --json` and `kchaos syscall --backend auto` agree, operation by operation: the
/// backend the probe names is the one the command picks, and an operation the probe says nothing
/// can serve is refused (exit 2) with the probe's reason.
#[test]
fn probe_and_syscall_agree_on_every_backend() {
    let test = "probe_and_syscall_agree_on_every_backend";
    if !root_or_skip(test) {
        return;
    }
    let label = integration_tests::kernel_label();
    let runs = RunDir::new();
    let out = runs.run(&["probe", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backends = probe["syscall_backends"].as_object().unwrap();
    assert_eq!(
        backends.len(),
        chaos_userspace::kinds::syscall::OPS.len(),
        "every operation is answered: {probe}"
    );
    let available = |name: &str| {
        probe["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no capability {name}: {probe}"))["available"]
            .as_bool()
            .unwrap()
    };
    // A test cgroup with no processes: the faults run for real but hit nothing.
    let cg = cgroup("sp");
    let cg_path = cg.path.display().to_string();
    let mut summary = Vec::new();
    for (op, choice) in backends {
        let out = runs.run(&[
            "syscall",
            "--cgroup",
            &cg_path,
            "--syscall",
            op,
            "--errno",
            "EIO",
            "--percent",
            "1",
            "--duration",
            "1s",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match choice["backend"].as_str() {
            Some(backend) => {
                summary.push(format!("{op}={backend}"));
                assert!(out.status.success(), "{op}: {stdout}{stderr}");
                let line = format!("  {op}: {backend} backend");
                assert!(
                    stdout.lines().any(|l| l == line),
                    "{op}: the probe said {backend}; kchaos syscall printed:\n{stdout}"
                );
                // The capability row behind that backend says yes too.
                let capability = match backend {
                    "cgroup" => "cgroup_sock_addr",
                    "lsm" => "BPF LSM",
                    "kprobe" => "bpf_override_return",
                    other => panic!("{op}: unknown backend {other}"),
                };
                assert!(available(capability), "{op}: {backend} but {probe}");
            }
            None => {
                let why = choice["reason"].as_str().unwrap();
                summary.push(format!("{op}=refused"));
                println!("[{label}] {op}: refused by both: {why}");
                assert_eq!(out.status.code(), Some(2), "{op}: {stdout}{stderr}");
                assert!(
                    stderr.contains(&format!("--syscall {op}: no backend")) && stderr.contains(why),
                    "{op}: the probe's reason {why:?}; kchaos syscall said: {stderr}"
                );
            }
        }
    }
    // open has no cgroup hook, and lsm comes before kprobe: it goes to lsm exactly when the probe's
    // BPF LSM row says yes.
    assert_eq!(
        available("BPF LSM"),
        backends["open"]["backend"] == "lsm",
        "{probe}"
    );
    // A kernel that loads BPF LSM programs but hasn't `bpf` among its active LSMs never runs them.
    if let Ok(list) = std::fs::read_to_string("/sys/kernel/security/lsm")
        && !list.split(',').any(|l| l.trim() == "bpf")
    {
        assert!(
            !available("BPF LSM"),
            "`bpf` is not active ({list}): {probe}"
        );
    }
    // Every kernel with bpf_set_retval (5.18+) serves connect through the cgroup hooks.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .split(['.', '-'])
        .filter_map(|s| s.parse::<u32>().ok());
    if (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (5, 18) {
        assert_eq!(backends["connect"]["backend"], "cgroup", "{probe}");
    }
    assert_eq!(
        cgroup_hooks(&cg.path),
        Vec::<u32>::new(),
        "programs left attached after the runs"
    );
    assert_eq!(
        runs.records(),
        Vec::<std::path::PathBuf>::new(),
        "run records left behind"
    );
    // To the stderr handle itself, which libtest doesn't capture: each kernel's answers show in the
    // VM suite's log too.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "[{label}] probe and kchaos syscall agree: {}",
        summary.join(" ")
    );
}

/// The BPF LSM backend: files, directories, processes and memory.
#[test]
fn lsm_backend_fails_file_and_process_calls() {
    if !root_or_skip("lsm_backend_fails_file_and_process_calls") {
        return;
    }
    let before = our_programs();
    if let Err(why) = BackendSupport::probe().lsm {
        skip(
            "lsm_backend_fails_file_and_process_calls",
            &format!("no BPF LSM here: {why}"),
        );
        return;
    }
    let cg = cgroup("sl");
    let cg_path = cg.path.display().to_string();
    let dir = std::env::temp_dir().join(format!("kchaos-test-{}", tag("d")));
    std::fs::create_dir_all(&dir).unwrap();
    let other = std::env::temp_dir().join(format!("kchaos-test-{}", tag("o")));
    std::fs::create_dir_all(&other).unwrap();
    let cleanup = scopeguard(vec![dir.clone(), other.clone()]);

    // open under --path-prefix fails; elsewhere it works; outside the cgroup it works.
    let prefix = dir.display().to_string();
    let runs = RunDir::new();
    let running = runs.start(&[
        "syscall",
        "--cgroup",
        &cg_path,
        "--syscall",
        "open",
        "--errno",
        "EIO",
        "--path-prefix",
        &prefix,
        "--backend",
        "lsm",
        "--quiet",
    ]);
    assert_eq!(
        errors(&calls(Some(&cg.path), "open", 100, Some(&dir)), libc::EIO),
        100,
        "open under the prefix"
    );
    assert_eq!(
        total_errors(&calls(Some(&cg.path), "open", 100, Some(&other))),
        0,
        "open outside the prefix"
    );
    assert_eq!(
        total_errors(&calls(None, "open", 100, Some(&dir))),
        0,
        "open outside the cgroup"
    );
    running.terminate();

    for (op, errno, name) in [
        ("read", libc::EIO, "EIO"),
        ("write", libc::ENOSPC, "ENOSPC"),
        ("mkdir", libc::EDQUOT, "EDQUOT"),
        ("unlink", libc::EBUSY, "EBUSY"),
        ("rename", libc::EXDEV, "EXDEV"),
        ("fork", libc::EAGAIN, "EAGAIN"),
        ("mmap", libc::ENOMEM, "ENOMEM"),
        ("connect", libc::ECONNREFUSED, "ECONNREFUSED"),
    ] {
        let runs = RunDir::new();
        let running = runs.start(&[
            "syscall",
            "--cgroup",
            &cg_path,
            "--syscall",
            op,
            "--errno",
            name,
            "--backend",
            "lsm",
            "--percent",
            "50",
            "--quiet",
        ]);
        let inside = calls(Some(&cg.path), op, 2000, Some(&dir));
        let outside = calls(None, op, 200, Some(&dir));
        running.terminate();
        let n = errors(&inside, errno);
        println!("lsm {op}: {n}/2000 {name}");
        assert!(
            (800..=1200).contains(&n),
            "{op}: {n} of 2000 failed with {name} at 50%: {inside}"
        );
        assert_eq!(total_errors(&outside), 0, "{op}: outside the cgroup");
    }
    drop(cleanup);
    assert_eq!(programs_left(&before), Vec::<u32>::new());
}

/// Removes directories when dropped (also when an assertion fails).
fn scopeguard(dirs: Vec<std::path::PathBuf>) -> impl Drop {
    struct Guard(Vec<std::path::PathBuf>);
    impl Drop for Guard {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    Guard(dirs)
}

/// The backends this kernel offers, each by its `--backend` name.
fn available_backends() -> Vec<&'static str> {
    let support = BackendSupport::probe();
    [
        ("cgroup", support.cgroup.is_ok()),
        ("lsm", support.lsm.is_ok()),
        ("kprobe", support.kprobe.is_ok()),
        ("fmod_ret", support.fmod_ret.is_ok()),
    ]
    .into_iter()
    .filter_map(|(b, ok)| ok.then_some(b))
    .collect()
}

/// 1, 100 and 1000 target cgroups in one run, on every backend this kernel has (cgroup, lsm, kprobe,
/// fmod_ret): a process in the first and in the last target fails every connect, one in an
/// untargeted sibling none, and nothing stays attached.
#[test]
fn many_targets_on_every_backend() {
    let before = our_programs();
    let test = "many_targets_on_every_backend";
    if !root_or_skip(test) {
        return;
    }
    let backends = available_backends();
    println!(
        "backends here [{}]: {backends:?}",
        integration_tests::kernel_label()
    );
    for backend in backends {
        // 1,000 targets are more links (fds) than the usual soft limit of 1,024 allows with the
        // cgroup backend's two hooks: kchaos raises its own limit (engine::fds).
        for n in [1, 100, 1000] {
            let parent = cgroup("mt");
            let targets: Vec<std::path::PathBuf> = (0..n)
                .map(|i| parent.child(&format!("t{i}")).unwrap())
                .collect();
            let outside = parent.child("outside").unwrap();
            let mut args: Vec<String> = Vec::new();
            for t in &targets {
                args.extend(["--cgroup".into(), t.display().to_string()]);
            }
            args.extend(
                [
                    "--syscall",
                    "connect",
                    "--errno",
                    "EHOSTUNREACH",
                    "--backend",
                    backend,
                    "--quiet",
                ]
                .map(String::from),
            );
            let mut full = vec!["syscall"];
            full.extend(args.iter().map(String::as_str));
            let runs = RunDir::new();
            let started = std::time::Instant::now();
            // Attaching the cgroup backend to 1,000 cgroups takes longer than `start` waits under
            // emulation.
            let mut running = runs.spawn(&full);
            running.wait_for("armed", std::time::Duration::from_secs(300));
            let last = targets.last().unwrap();
            let inside = calls(Some(last), "connect", 200, None);
            let first = calls(Some(&targets[0]), "connect", 200, None);
            let out = calls(Some(&outside), "connect", 200, None);
            let (code, lines) = running.terminate();
            println!(
                "{backend}, {n} targets: last {}/200 EHOSTUNREACH, first {}/200, outside {} errors ({:.1?} in all)",
                errors(&inside, libc::EHOSTUNREACH),
                errors(&first, libc::EHOSTUNREACH),
                total_errors(&out),
                started.elapsed()
            );
            assert_eq!(code, 143, "{backend}, {n} targets: {lines:?}");
            assert_eq!(
                errors(&inside, libc::EHOSTUNREACH),
                200,
                "{backend}, {n} targets, in the last: {inside}"
            );
            assert_eq!(
                errors(&first, libc::EHOSTUNREACH),
                200,
                "{backend}, {n} targets, in the first: {first}"
            );
            assert_eq!(
                total_errors(&out),
                0,
                "{backend}, {n} targets: an untargeted sibling saw errors"
            );
            assert_eq!(
                cgroup_hooks(last),
                Vec::<u32>::new(),
                "{backend}: programs left on a target"
            );
            if backend != "cgroup" {
                // Host-wide programs can only be counted by name (meaningful in the VM, where
                // no other kchaos runs); the cgroup backend's are checked on the target above.
                assert_eq!(
                    programs_left(&before),
                    Vec::<u32>::new(),
                    "{backend}: programs left loaded"
                );
            }
        }
    }
}

/// On a kernel with bpf_override_return, every operation the helper can call fails through
/// `--backend kprobe` at the configured rate inside the target (±2 pp over 20,000 calls), never
/// outside; `--after`/`--max` are exact; nothing stays attached.
#[test]
fn kprobe_backend_fails_every_operation() {
    let before = our_programs();
    let test = "kprobe_backend_fails_every_operation";
    if !root_or_skip(test) {
        return;
    }
    if let Err(why) = BackendSupport::probe().kprobe {
        skip(test, &format!("no kprobe override here: {why}"));
        return;
    }
    let cg = cgroup("sk");
    let cg_path = cg.path.display().to_string();
    let dir = std::env::temp_dir().join(format!("kchaos-test-{}", tag("k")));
    std::fs::create_dir_all(&dir).unwrap();
    let cleanup = scopeguard(vec![dir.clone()]);
    for (op, errno, name, count) in [
        ("fsync", libc::EIO, "EIO", 20_000u64),
        ("connect", libc::ECONNREFUSED, "ECONNREFUSED", 20_000),
        ("bind", libc::EADDRINUSE, "EADDRINUSE", 20_000),
        ("socket", libc::EMFILE, "EMFILE", 20_000),
        ("sendmsg", libc::ENOBUFS, "ENOBUFS", 20_000),
        ("recvmsg", libc::ECONNRESET, "ECONNRESET", 20_000),
        ("open", libc::EIO, "EIO", 20_000),
        ("read", libc::EIO, "EIO", 20_000),
        ("write", libc::ENOSPC, "ENOSPC", 20_000),
        ("mmap", libc::ENOMEM, "ENOMEM", 20_000),
        ("mkdir", libc::EDQUOT, "EDQUOT", 20_000),
        ("unlink", libc::EBUSY, "EBUSY", 20_000),
        ("rename", libc::EXDEV, "EXDEV", 20_000),
        ("fork", libc::EAGAIN, "EAGAIN", 20_000),
    ] {
        let runs = RunDir::new();
        let running = runs.start(&[
            "syscall",
            "--cgroup",
            &cg_path,
            "--syscall",
            op,
            "--errno",
            name,
            "--backend",
            "kprobe",
            "--percent",
            "30",
            "--quiet",
        ]);
        let inside = calls(Some(&cg.path), op, count, Some(&dir));
        let outside = calls(None, op, 2000, Some(&dir));
        let (code, lines) = running.terminate();
        assert_eq!(code, 143, "{op}: {lines:?}");
        let n = errors(&inside, errno);
        let rate = 100.0 * n as f64 / count as f64;
        println!(
            "kprobe {op}: {n}/{count} {name} ({rate:.2}%), outside {} errors",
            total_errors(&outside)
        );
        assert_eq!(total_errors(&inside), n, "{op}: another errno: {inside}");
        integration_tests::stats::assert_binomial(&format!("{op}: calls failed"), n, count, 0.3);
        assert_eq!(total_errors(&outside), 0, "{op}: outside the cgroup");
        assert_eq!(
            programs_left(&before),
            Vec::<u32>::new(),
            "{op}: programs left after the run"
        );
    }
    // --after 100 --max 50 on fsync: calls 100..150 fail, no other.
    let runs = RunDir::new();
    let running = runs.start(&[
        "syscall",
        "--cgroup",
        &cg_path,
        "--syscall",
        "fsync",
        "--errno",
        "EIO",
        "--backend",
        "kprobe",
        "--after",
        "100",
        "--max",
        "50",
        "--quiet",
    ]);
    let seen = calls(Some(&cg.path), "fsync", 400, Some(&dir));
    running.terminate();
    let at: Vec<u64> = seen["error_at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(at, (100..150).collect::<Vec<u64>>(), "{seen}");
    assert_eq!(programs_left(&before), Vec::<u32>::new());
    // In the directory the calls use, which the guard removes when it is dropped.
    assert_eq!(
        total_errors(&calls(Some(&cg.path), "fsync", 200, Some(&dir))),
        0,
        "a fault outlived its run"
    );
    drop(cleanup);
}

/// `--backend fmod_ret` (BPF_MODIFY_RETURN, loaded by kchaos's own loader): the security_* functions
/// fail calls at the configured rate inside the target, never outside, and nothing stays attached;
/// fsync works where the kernel has an error-injection list (the kprobe-override kernel) and is
/// refused with the kernel's answer elsewhere.
#[test]
fn fmod_ret_backend_fails_calls() {
    let before = our_programs();
    let test = "fmod_ret_backend_fails_calls";
    if !root_or_skip(test) {
        return;
    }
    let support = BackendSupport::probe();
    if let Err(why) = &support.fmod_ret {
        skip(test, &format!("no BPF trampolines here: {why}"));
        return;
    }
    let cg = cgroup("sf");
    let cg_path = cg.path.display().to_string();
    let dir = std::env::temp_dir().join(format!("kchaos-test-{}", tag("f")));
    std::fs::create_dir_all(&dir).unwrap();
    let cleanup = scopeguard(vec![dir.clone()]);
    for (op, errno, name) in [
        ("connect", libc::ECONNREFUSED, "ECONNREFUSED"),
        ("open", libc::EACCES, "EACCES"),
        ("read", libc::EIO, "EIO"),
        ("write", libc::ENOSPC, "ENOSPC"),
        ("mkdir", libc::EDQUOT, "EDQUOT"),
        ("fork", libc::EAGAIN, "EAGAIN"),
        ("socket", libc::EMFILE, "EMFILE"),
    ] {
        let runs = RunDir::new();
        let running = runs.start(&[
            "syscall",
            "--cgroup",
            &cg_path,
            "--syscall",
            op,
            "--errno",
            name,
            "--backend",
            "fmod_ret",
            "--percent",
            "50",
            "--quiet",
        ]);
        let inside = calls(Some(&cg.path), op, 2000, Some(&dir));
        let outside = calls(None, op, 200, Some(&dir));
        let (code, lines) = running.terminate();
        assert_eq!(code, 143, "{op}: {lines:?}");
        let n = errors(&inside, errno);
        println!("fmod_ret {op}: {n}/2000 {name}");
        assert_eq!(total_errors(&inside), n, "{op}: another errno: {inside}");
        assert!(
            (800..=1200).contains(&n),
            "{op}: {n} of 2000 failed with {name} at 50%: {inside}"
        );
        assert_eq!(total_errors(&outside), 0, "{op}: outside the cgroup");
        assert_eq!(
            programs_left(&before),
            Vec::<u32>::new(),
            "{op}: programs left after the run"
        );
    }
    let out = RunDir::new().run(&[
        "syscall",
        "--cgroup",
        &cg_path,
        "--syscall",
        "fsync",
        "--errno",
        "EIO",
        "--backend",
        "fmod_ret",
        "--duration",
        "1s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("fmod_ret fsync: {:?}: {}", out.status.code(), stderr.trim());
    if support.kprobe.is_ok() {
        assert!(out.status.success(), "{stderr}");
    } else {
        // No error-injection list: the kernel refuses BPF_MODIFY_RETURN on the syscall.
        assert!(!out.status.success());
        assert!(stderr.contains("fmod_ret fm_fsync"), "{stderr}");
    }
    drop(cleanup);
    assert_eq!(programs_left(&before), Vec::<u32>::new());
}

/// Each cgroup link is a descriptor for the fault's life: with a hard RLIMIT_NOFILE of 300, 100
/// targets on the cgroup backend's two connect hooks (200 links) do not fit beside what a run keeps
/// open, and the run is refused up front (exit 2) with the numbers, nothing attached; 10 targets fit.
#[test]
fn targets_beyond_the_descriptor_limit_are_refused_with_the_numbers() {
    let test = "targets_beyond_the_descriptor_limit_are_refused_with_the_numbers";
    if !root_or_skip(test) {
        return;
    }
    let parent = cgroup("fd");
    let targets: Vec<std::path::PathBuf> = (0..100)
        .map(|i| parent.child(&format!("t{i}")).unwrap())
        .collect();
    let runs = RunDir::new();
    let run_limited = |n: usize| {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = std::process::Command::new(integration_tests::kchaos());
        cmd.env("KCHAOS_RUN_DIR", &runs.0).arg("syscall");
        for t in &targets[..n] {
            cmd.arg("--cgroup").arg(t);
        }
        cmd.args([
            "--syscall",
            "connect",
            "--errno",
            "EPERM",
            "--backend",
            "cgroup",
        ])
        .args(["--duration", "200ms", "--quiet"]);
        // SAFETY: setrlimit is async-signal-safe, and the struct lives on this stack frame.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 300,
                    rlim_max: 300,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run_limited(100);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("2 cgroup hook(s) on 100 target(s) need 200 links")
            && err.contains("RLIMIT_NOFILE allows 300 (hard limit 300)")
            && err.contains("raise the hard limit to 456 or more"),
        "{err}"
    );
    assert_eq!(cgroup_hooks(&targets[99]), Vec::<u32>::new(), "attached");
    let (code, err) = run_limited(10);
    assert_eq!(code, Some(0), "10 targets: {err}");
}
