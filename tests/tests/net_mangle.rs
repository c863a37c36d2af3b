//! `kchaos net --duplicate / --corrupt` on real traffic: the tcx program's copies and flipped bits as
//! a real receiver saw them, over IPv4 and IPv6; nothing done to a process outside the cgroup sending
//! over the same device; no tcx link left after a run or after SIGKILL; bad input refused before
//! anything is attached.

use std::{net::SocketAddr, path::Path, sync::atomic::Ordering, time::Duration};

use integration_tests::{
    RunDir, TempFile, in_vm, lab, net_totals, root_or_skip, run_text, run_with, skip, tag,
    tcx_egress_programs, udp_echo_report, udp_rate,
};
use lab::{EchoServer, Lab};

/// True when this kernel links TC programs by tcx (6.6+); otherwise prints SKIP.
fn tcx_or_skip(test: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        skip(test, &format!("can't read the kernel version {release:?}"));
        return false;
    };
    let has = (major, minor) >= (6, 6);
    if !has {
        skip(
            test,
            &format!("kernel {major}.{minor} has no tcx links (6.6+)"),
        );
    }
    has
}

/// `count` self-checking datagrams to the echo server at `to`, from inside `cgroup` (or outside any
/// target): the client's JSON result (sent, received, duplicates, corrupted).
fn echo(cgroup: Option<&Path>, to: SocketAddr, count: u64) -> serde_json::Value {
    echo_at(cgroup, to, count, udp_rate())
}

/// The same at `rate` datagrams a second.
fn echo_at(cgroup: Option<&Path>, to: SocketAddr, count: u64, rate: &str) -> serde_json::Value {
    udp_echo_report(cgroup, None, to, count, rate, &[])
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn duplicate_and_corrupt_rates_over_ipv4_and_ipv6_and_nothing_outside() {
    let test = "duplicate_and_corrupt_rates_over_ipv4_and_ipv6_and_nothing_outside";
    if !root_or_skip(test) || !tcx_or_skip(test) {
        return;
    }
    let lab = Lab::create(&tag("m")).unwrap();
    let (_, server6) = lab.add_ipv6().unwrap();
    let cg = lab.cgroup.path.display().to_string();
    const SENT: u64 = 20_000;
    const OUTSIDE: u64 = 5_000;
    for to in [
        SocketAddr::from((lab.server_addr, 7000)),
        SocketAddr::from((server6, 7000)),
    ] {
        let server = EchoServer::start(&lab.netns, to).unwrap();
        let report = TempFile::new("mangle.json");
        let runs = RunDir::new();
        // --proto makes the program read the headers (IPv4 or IPv6) on every packet.
        let running = runs.start(&[
            "net",
            "--cgroup",
            &cg,
            "--duplicate",
            "10",
            "--corrupt",
            "5",
            "--proto",
            "udp",
            "--json",
            report.s(),
            "--quiet",
        ]);
        let target = echo(Some(&lab.cgroup.path), to, SENT);
        let outside = echo(None, to, OUTSIDE);
        let server_got = server.received.load(Ordering::Relaxed);
        let (code, lines) = running.terminate();
        assert_eq!(code, 143, "kchaos net output: {lines:?}");
        let totals = net_totals(&report.0);
        let egress = &totals["egress"];
        let (duplicated, corrupted) = (n(egress, "duplicated"), n(egress, "corrupted"));
        let pct = |k: u64| 100.0 * k as f64 / SENT as f64;
        println!(
            "{to}: kernel duplicated {duplicated} ({:.2}%) corrupted {corrupted} ({:.2}%); server got \
             {server_got}; target client {target}; outside client {outside}",
            pct(duplicated),
            pct(corrupted)
        );
        assert_eq!(n(egress, "seen"), SENT, "{totals}");
        // Each packet is duplicated and corrupted on its own draws: both counts are binomial.
        integration_tests::stats::assert_binomial(
            &format!("{to}: duplicated"),
            duplicated,
            SENT,
            0.10,
        );
        integration_tests::stats::assert_binomial(
            &format!("{to}: corrupted"),
            corrupted,
            SENT,
            0.05,
        );
        // What the receivers saw is what the kernel counted. Under emulation a datagram or two can
        // be lost with no fault: allow 0.25 % there.
        let allowed = if in_vm() { SENT / 400 } else { 0 };
        assert!(
            server_got.abs_diff(SENT + OUTSIDE + duplicated) <= allowed,
            "{to}: the server got {server_got}, not {SENT} + {OUTSIDE} + {duplicated} copies"
        );
        assert!(
            n(&target, "corrupted").abs_diff(corrupted) <= allowed,
            "{to}: the client saw {} corrupted echoes, the kernel flipped {corrupted}",
            n(&target, "corrupted")
        );
        assert!(n(&target, "duplicates") > 0, "{to}: no duplicate came back");
        assert_eq!(
            (
                n(&outside, "received"),
                n(&outside, "duplicates"),
                n(&outside, "corrupted")
            ),
            (OUTSIDE, 0, 0),
            "{to}: a process outside the cgroup was touched: {outside}"
        );
    }
}

#[test]
fn tcx_links_end_with_the_run_and_with_sigkill() {
    let test = "tcx_links_end_with_the_run_and_with_sigkill";
    if !root_or_skip(test) || !tcx_or_skip(test) {
        return;
    }
    let lab = Lab::create(&tag("k")).unwrap();
    let to = SocketAddr::from((lab.server_addr, 7000));
    let _server = EchoServer::start(&lab.netns, to).unwrap();
    let cg = lab.cgroup.path.display().to_string();
    let links = || (tcx_egress_programs(&lab.host_if), tcx_egress_programs("lo"));
    let before = links();
    assert!(
        before.0.is_empty(),
        "a fresh veth has tcx programs: {before:?}"
    );
    let runs = RunDir::new();

    // A run that ends by its duration.
    let out = run_with(
        &[
            "net",
            "--cgroup",
            &cg,
            "--duplicate",
            "100",
            "--duration",
            "1s",
            "--quiet",
        ],
        Some(&runs),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(links(), before, "a finished run left a tcx link");
    assert_eq!(n(&echo(Some(&lab.cgroup.path), to, 300), "duplicates"), 0);

    // A loader killed while injecting: the kernel closes its link fds, and the links go with them.
    let running = runs.start(&["net", "--cgroup", &cg, "--duplicate", "100", "--quiet"]);
    assert_eq!(links().0.len(), 1, "one tcx program on the lab's veth");
    let during = echo(Some(&lab.cgroup.path), to, 300);
    assert_eq!(
        (n(&during, "received"), n(&during, "duplicates")),
        (300, 300),
        "--duplicate 100 did not copy every datagram: {during}"
    );
    running.sigkill();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(links(), before, "a SIGKILLed loader left a tcx link");
    assert_eq!(
        n(&echo(Some(&lab.cgroup.path), to, 300), "duplicates"),
        0,
        "duplicates outlived a SIGKILLed loader"
    );
    let out = run_with(&["stop"], Some(&runs));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_mangle_input_exits_2_and_attaches_nothing() {
    let test = "bad_mangle_input_exits_2_and_attaches_nothing";
    if !root_or_skip(test) {
        return;
    }
    let lab = Lab::create(&tag("b")).unwrap();
    let cg = lab.cgroup.path.display().to_string();
    for (args, says) in [
        (
            vec!["--duplicate", "5", "--direction", "ingress"],
            "--duplicate and --corrupt apply to what the target sends",
        ),
        (vec!["--corrupt", "150"], "150"),
        (vec!["--duplicate", "-1"], "-1"),
    ] {
        let mut argv = vec!["net", "--cgroup", &cg, "--duration", "1s"];
        argv.extend(&args);
        let (code, _, stderr) = run_text(&argv);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            tcx_egress_programs(&lab.host_if).is_empty(),
            "{args:?} attached a program"
        );
    }
}

#[test]
fn more_targets_than_fit_inline_are_all_hit_and_no_other() {
    let test = "more_targets_than_fit_inline_are_all_hit_and_no_other";
    if !root_or_skip(test) || !tcx_or_skip(test) {
        return;
    }
    // Six targets, more than the program compares inline, so the hash decides: five sibling cgroups
    // and one a level deeper (two levels to look up), with traffic also from below that one. The
    // lab's own cgroup is not a target.
    let lab = Lab::create(&tag("h")).unwrap();
    let to = SocketAddr::from((lab.server_addr, 7000));
    let _server = EchoServer::start(&lab.netns, to).unwrap();
    let others: Vec<lab::LabCgroup> = (0..6)
        .map(|i| lab::LabCgroup::create(&format!("kchaos-lab-{}", tag(&format!("h{i}")))).unwrap())
        .collect();
    let deep = others[5].child("a").unwrap();
    let deep = deep.join("b");
    std::fs::create_dir(&deep).unwrap();
    let mut argv = vec![
        "net".to_owned(),
        "--duplicate".into(),
        "100".into(),
        "--quiet".into(),
    ];
    for cg in &others[..5] {
        argv.extend(["--cgroup".into(), cg.path.display().to_string()]);
    }
    argv.extend([
        "--cgroup".into(),
        others[5].path.join("a").display().to_string(),
    ]);
    let runs = RunDir::new();
    let running = runs.start(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    for from in [others[0].path.as_path(), others[4].path.as_path(), &deep] {
        let v = echo(Some(from), to, 200);
        assert_eq!(
            n(&v, "duplicates"),
            200,
            "{}: a target's datagrams were not all copied: {v}",
            from.display()
        );
    }
    let v = echo(Some(&lab.cgroup.path), to, 200);
    assert_eq!(
        n(&v, "duplicates"),
        0,
        "a cgroup outside the targets was hit: {v}"
    );
    assert_eq!(running.terminate().0, 143);
}

#[test]
fn a_scenario_ramps_duplicate_and_corrupt_from_0_to_100_percent() {
    let test = "a_scenario_ramps_duplicate_and_corrupt_from_0_to_100_percent";
    if !root_or_skip(test) || !tcx_or_skip(test) {
        return;
    }
    let lab = Lab::create(&tag("r")).unwrap();
    let to = SocketAddr::from((lab.server_addr, 7000));
    let _server = EchoServer::start(&lab.netns, to).unwrap();
    // (ramp parameter, the kernel's counter, what the client counts)
    for (param, counter, seen_by_client) in [
        ("duplicate", "duplicated", "duplicates"),
        ("corrupt", "corrupted", "corrupted"),
    ] {
        let file = integration_tests::net_ramp_scenario(
            &lab.cgroup.path,
            param,
            4,
            "proto: udp",
            &format!("{param}: {{from: 0%, to: 100%, over: 2s, step: 2s}}"),
        );
        let report = TempFile::new(&format!("{param}-ramp.json"));
        let runs = RunDir::new();
        let run = runs.spawn(&["run", file.s(), "--json", report.s(), "--accept-risk"]);
        // Echo traffic from the target for the whole run, and a little before and after.
        let traffic = echo_at(Some(&lab.cgroup.path), to, 6 * 300, "300");
        let (code, out, err) = run.finish();
        assert_eq!(code, 0, "{param}: stdout {out:?}\nstderr {err}");
        let r = integration_tests::read_report(&report.0);
        let fault = &r["faults"][0];
        let steps = integration_tests::ramp_steps(fault);
        assert_eq!(steps, [0.0, 100.0], "{param}: {fault}");
        let c = &fault["counters"];
        let (seen, hit) = (
            c["egress.seen"].as_u64().unwrap(),
            c[format!("egress.{counter}")].as_u64().unwrap(),
        );
        println!("{param}: seen {seen}, {counter} {hit}; client {traffic}");
        // Two seconds at 0 %, two at 100 %: about half, and the client saw each one.
        let share = hit as f64 / seen.max(1) as f64;
        assert!(
            (0.3..=0.7).contains(&share),
            "{param}: {counter} {hit} of {seen}"
        );
        let allowed = if in_vm() { 2 } else { 0 };
        assert!(
            n(&traffic, seen_by_client).abs_diff(hit) <= allowed,
            "{param}: the client saw other than the kernel made: {traffic}"
        );
    }
}
