//! The Chaos Toolkit extension (integrations/chaostoolkit) driven by a real `chaos` (pinned, in a
//! virtualenv): its examples validate and are discovered, an experiment's kchaos fault takes effect
//! (the kernel's counters in the journal), a broken hypothesis deviates, and whatever way the
//! experiment ends (rollback, control, Ctrl-C) nothing is left injecting.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use integration_tests::{
    RunDir, Service, StopAll, TempDir, TempFile,
    chaostoolkit::{ChaosToolkit, activity, extension_dir},
    in_vm,
    lab::Lab,
    no_residue, root_or_skip, skip, spawn_in, tag,
};

fn example(name: &str) -> PathBuf {
    extension_dir().join("examples").join(name)
}

/// Chaos Toolkit, or None after printing SKIP (no Python venv/PyPI here, or the emulated VM).
fn ctk(test: &str) -> Option<&'static ChaosToolkit> {
    if in_vm() {
        skip(
            test,
            "the VM image has no Python; the host suite runs Chaos Toolkit",
        );
        return None;
    }
    match ChaosToolkit::get() {
        Ok(c) => Some(c),
        Err(why) => {
            skip(test, &format!("no Chaos Toolkit here: {why}"));
            None
        }
    }
}

/// The names of the runs `kchaos status --json` lists in `runs`.
fn running(runs: &RunDir) -> Vec<String> {
    let (code, out, err) = runs.run_text(&["status", "--json"]);
    assert_eq!(code, 0, "kchaos status: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let list = v.get("runs").unwrap_or(&v);
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect()
}

/// UDP from the lab's cgroup to its namespace for `secs`: what a drop fault gets to count.
fn traffic_from_target(lab: &Lab, secs: u32) -> std::process::Child {
    let kchaos = integration_tests::kchaos();
    let to = format!("{}:7300", lab.server_addr);
    let count = (secs * 1000).to_string();
    spawn_in(
        &lab.cgroup.path,
        &[
            kchaos.to_str().unwrap(),
            "traffic",
            "udp-send",
            "--to",
            &to,
            "--rate",
            "1000",
            "--count",
            &count,
        ],
    )
}

fn env_for(lab: &Lab, svc: &Service) -> [(String, String); 2] {
    [
        (
            "KCHAOS_TARGET_CGROUP".into(),
            lab.cgroup.path.display().to_string(),
        ),
        ("KCHAOS_SERVICE_URL".into(), format!("http://{}/", svc.addr)),
    ]
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn examples_validate_and_chaos_discover_lists_the_extension() {
    let Some(ctk) = ctk("examples_validate_and_chaos_discover_lists_the_extension") else {
        return;
    };
    let runs = RunDir::new();
    let env = [
        ("KCHAOS_TARGET_CGROUP", "/sys/fs/cgroup/app"),
        ("KCHAOS_SERVICE_URL", "http://127.0.0.1:1/"),
    ];
    for name in [
        "kchaos-drop.json",
        "kchaos-drop.yaml",
        "kchaos-drop-process.json",
    ] {
        let path = example(name);
        let (code, out) = ctk.chaos(&["validate", path.to_str().unwrap()], &runs, &env);
        assert_eq!(code, 0, "chaos validate {name}:\n{out}");
        assert!(
            out.contains("experiment syntax and semantic look valid"),
            "{out}"
        );
    }
    let discovery = TempFile::new("discovery.json");
    let (code, out) = ctk.chaos(
        &[
            "discover",
            "--no-install",
            "--discovery-path",
            discovery.s(),
            "chaostoolkit-kchaos",
        ],
        &runs,
        &[],
    );
    assert_eq!(code, 0, "chaos discover:\n{out}");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&discovery.0).unwrap()).unwrap();
    let names: Vec<&str> = d["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    for wanted in [
        "start_fault",
        "run_scenario",
        "stop_run",
        "runs",
        "counters",
        "capabilities",
    ] {
        assert!(
            names.contains(&wanted),
            "discovery lacks {wanted}: {names:?}"
        );
    }
    // The system part is what `kchaos probe --json` found on this kernel.
    assert!(
        d["system"]["kchaos"]["capabilities"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{}",
        d["system"]
    );
}

/// Runs one of the drop examples against a lab; checks what the journal and the kernel say.
fn drop_example_against_the_lab(test: &str, file: &str) -> Option<serde_json::Value> {
    if !root_or_skip(test) {
        return None;
    }
    let ctk = ctk(test)?;
    let lab = Lab::create(&tag("c")).unwrap();
    let svc = Service::start(&lab, 7301, true);
    let runs = RunDir::new();
    let _stop = StopAll(&runs);
    let mut traffic = traffic_from_target(&lab, 30);
    let env = env_for(&lab, &svc);
    let (code, out, journal) = ctk.run(&example(file), &runs, &pairs(&env));
    let _ = traffic.kill();
    let _ = traffic.wait();
    assert_eq!(code, 0, "chaos run {file}:\n{out}");
    assert_eq!(journal["status"], "completed", "{out}");
    assert_eq!(journal["deviated"], false, "{out}");
    let stopped = activity(&journal, "stop-the-drop").expect("the rollback ran");
    assert_eq!(stopped["status"], "succeeded", "{stopped}");
    // Nothing injects any more, nothing is attached, no record is left.
    assert!(running(&runs).is_empty(), "{:?}", running(&runs));
    no_residue(&lab);
    assert!(runs.records().is_empty(), "{:?}", runs.records());
    Some(journal)
}

#[test]
fn drop_experiment_completes_and_its_probe_shows_the_kernel_counted_the_drops() {
    let Some(journal) = drop_example_against_the_lab(
        "drop_experiment_completes_and_its_probe_shows_the_kernel_counted_the_drops",
        "kchaos-drop.json",
    ) else {
        return;
    };
    let started = activity(&journal, "drop-everything-the-target-sends").unwrap();
    assert_eq!(started["output"]["name"], "ctk-drop", "{started}");
    let counters = &activity(&journal, "kernel-counters").unwrap()["output"];
    let dropped = counters["egress.dropped"].as_u64().unwrap_or(0);
    let matched = counters["egress.matched"].as_u64().unwrap_or(0);
    // 3 s of 1000 datagrams/s from the target, every one dropped by the kernel program.
    assert!(dropped >= 1000, "the kernel dropped {dropped}: {counters}");
    assert_eq!(
        dropped, matched,
        "a 100% drop dropped {dropped} of {matched}"
    );
}

#[test]
fn the_same_experiment_with_process_providers_needs_no_extension() {
    let Some(journal) = drop_example_against_the_lab(
        "the_same_experiment_with_process_providers_needs_no_extension",
        "kchaos-drop-process.json",
    ) else {
        return;
    };
    // The status probe printed the run, with the kernel's counters, into the journal.
    let status = &activity(&journal, "kchaos-status").unwrap()["output"];
    let v: serde_json::Value = serde_json::from_str(status["stdout"].as_str().unwrap()).unwrap();
    let list = v.get("runs").unwrap_or(&v);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "ctk-drop-process"),
        "{v}"
    );
}

/// An experiment whose hypothesis connects from inside the target: under a 100% drop it deviates.
fn deviating_experiment(lab: &Lab, svc: &Service, pause_s: u32, rollback: bool) -> TempFile {
    let kchaos = integration_tests::kchaos();
    let mut experiment = serde_json::json!({
        "version": "1.0.0",
        "title": "the target reaches its dependency",
        "description": "a test's experiment",
        "controls": [{"name": "kchaos", "provider": {"type": "python", "module": "chaoskchaos.control"}}],
        "steady-state-hypothesis": {
            "title": "a TCP connect from the target succeeds",
            "probes": [{
                "type": "probe",
                "name": "connect-from-the-target",
                "tolerance": {"type": "regex", "pattern": "\"connected\":true", "target": "stdout"},
                "provider": {
                    "type": "process",
                    "path": kchaos.to_str().unwrap(),
                    "arguments": ["traffic", "--cgroup", lab.cgroup.path.to_str().unwrap(),
                                  "tcp-connect", "--to", svc.addr.to_string(), "--timeout", "1s"]
                }
            }]
        },
        "method": [{
            "type": "action",
            "name": "drop",
            "provider": {
                "type": "python", "module": "chaoskchaos.actions", "func": "start_fault",
                "arguments": {"kind": "net", "cgroup": lab.cgroup.path.to_str().unwrap(),
                              "arguments": {"percent": 100}, "duration": "60s", "name": "ctk-deviate"}
            },
            "pauses": {"after": pause_s}
        }],
        "rollbacks": []
    });
    if rollback {
        experiment["rollbacks"] = serde_json::json!([{
            "type": "action",
            "name": "stop-the-drop",
            "provider": {"type": "python", "module": "chaoskchaos.actions", "func": "stop_run",
                         "arguments": {"name": "ctk-deviate"}}
        }]);
    }
    TempFile::with("deviate.json", &experiment.to_string())
}

#[test]
fn a_hypothesis_broken_by_the_fault_deviates_and_the_rollback_leaves_nothing_injecting() {
    let test =
        "a_hypothesis_broken_by_the_fault_deviates_and_the_rollback_leaves_nothing_injecting";
    if !root_or_skip(test) {
        return;
    }
    let Some(ctk) = ctk(test) else { return };
    let lab = Lab::create(&tag("d")).unwrap();
    let svc = Service::start(&lab, 7302, false);
    let runs = RunDir::new();
    let _stop = StopAll(&runs);
    let experiment = deviating_experiment(&lab, &svc, 1, true);
    let (code, out, journal) = ctk.run(&experiment.0, &runs, &[]);
    assert_eq!(journal["deviated"], true, "{out}");
    assert_ne!(code, 0, "chaos exits non-zero on a deviation:\n{out}");
    let after = &journal["steady_states"]["after"];
    assert_eq!(after["steady_state_met"], false, "{after}");
    // Before the fault the same probe connected: the fault, not the lab, broke it.
    assert_eq!(journal["steady_states"]["before"]["steady_state_met"], true);
    assert!(activity(&journal, "stop-the-drop").is_some());
    assert!(running(&runs).is_empty(), "{:?}", running(&runs));
    no_residue(&lab);
    // And the target reaches its dependency again.
    let v = integration_tests::tcp_connect_from(&lab.cgroup.path, svc.addr);
    assert_eq!(v["connected"], true, "{v}");
}

/// True when a kchaos process whose command line names `name` exists (started, maybe not armed).
fn kchaos_named(name: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.iter().any(|a| a.ends_with(b"kchaos")) && args.contains(&name.as_bytes())
            })
        })
}

/// Interrupts `chaos run` (SIGINT) once `ready` holds, with no rollback declared: only the control
/// can stop the 60 s fault. (Chaos Toolkit may act on the SIGINT only once the method's 5 s pause
/// is over; the fault goes on meanwhile, and must be gone when chaos exits.) Nothing may be left
/// injecting.
fn ctrl_c_stops_the_fault(test: &str, ready: fn(&RunDir) -> bool) {
    if !root_or_skip(test) {
        return;
    }
    let Some(ctk) = ctk(test) else { return };
    let lab = Lab::create(&tag("i")).unwrap();
    let svc = Service::start(&lab, 7303, false);
    let runs = RunDir::new();
    let _stop = StopAll(&runs);
    let experiment = deviating_experiment(&lab, &svc, 5, false);
    let scratch = TempDir::new("ctk-interrupt");
    let log = scratch.0.join("chaostoolkit.log");
    let journal = scratch.0.join("journal.json");
    let mut chaos = ctk
        .command(
            &[
                "--log-file",
                log.to_str().unwrap(),
                "run",
                "--journal-path",
                journal.to_str().unwrap(),
                experiment.s(),
            ],
            &runs,
            &[],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chaos");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(&runs) {
        assert!(Instant::now() < deadline, "the fault never started");
        assert!(
            chaos.try_wait().unwrap().is_none(),
            "chaos ended before the fault started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let interrupted = Instant::now();
    // SAFETY: kill with a pid of a child of ours and a valid signal number.
    unsafe { libc::kill(chaos.id() as i32, libc::SIGINT) };
    let status = chaos.wait().unwrap();
    println!(
        "chaos ended {:?} after SIGINT ({status})",
        interrupted.elapsed()
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    println!(
        "{}",
        log.lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let journal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&journal).unwrap()).unwrap();
    assert_eq!(journal["status"], "interrupted");
    assert!(running(&runs).is_empty(), "{:?}", running(&runs));
    no_residue(&lab);
    assert!(runs.records().is_empty(), "{:?}", runs.records());
}

#[test]
fn ctrl_c_during_the_method_stops_the_fault_through_the_control() {
    ctrl_c_stops_the_fault(
        "ctrl_c_during_the_method_stops_the_fault_through_the_control",
        |runs| running(runs).contains(&"ctk-deviate".to_owned()),
    );
}

#[test]
fn ctrl_c_while_the_fault_is_starting_still_stops_it() {
    ctrl_c_stops_the_fault("ctrl_c_while_the_fault_is_starting_still_stops_it", |_| {
        kchaos_named("ctk-deviate")
    });
}

/// An experiment's `arguments` reach kchaos only as flags its command has, less those the extension
/// sets or that write files or lift checks as root (issue 28.9): `json` pointing at a victim file is
/// refused before kchaos runs (the file is untouched), as is an unknown key; `kchaos_bin` must be an
/// absolute path to an executable.
#[test]
fn activity_arguments_are_limited_to_the_commands_own_safe_flags() {
    const NAME: &str = "activity_arguments_are_limited_to_the_commands_own_safe_flags";
    if !root_or_skip(NAME) {
        return;
    }
    let Some(ctk) = ctk(NAME) else { return };
    let runs = RunDir::new();
    let victim = TempFile::with("ctk-victim", "precious\n");
    let attempt = |arguments: &str, configuration: &str| {
        let code = format!(
            "from chaoskchaos.actions import start_fault\n\
             from chaoskchaos.runner import KchaosError\n\
             try:\n    start_fault(kind='net', duration='5s', cgroup='/sys/fs/cgroup/kchaos-ctk-none', \
             arguments={arguments}, configuration={configuration})\n    print('STARTED')\n\
             except KchaosError as e:\n    print('REFUSED', e)\n"
        );
        ctk.python(&code, &runs)
    };
    let (code, out) = attempt(
        &format!("{{'percent': 5, 'json': '{}'}}", victim.0.display()),
        "None",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("REFUSED") && out.contains("'json'") && out.contains("allowed: "),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&victim.0).unwrap(), "precious\n");
    let (_, out) = attempt("{'percnt': 5}", "None");
    assert!(
        out.contains("REFUSED") && out.contains("'percnt'") && out.contains("not a flag"),
        "{out}"
    );
    let (_, out) = attempt("{'percent': 5}", "{'kchaos_bin': 'kchaos'}");
    assert!(
        out.contains("REFUSED") && out.contains("absolute path"),
        "{out}"
    );
    assert!(
        running(&runs).is_empty(),
        "a refused activity started a run"
    );
}
