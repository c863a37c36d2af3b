//! `kchaos net` on real traffic: loss a client measured, a partition that holds both ways, a process in
//! its own netns, a cgroup made after the start, and nothing left behind however the loader ends.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{
    RunDir, TempFile, attach_type, cgroup_programs, kchaos, lab, net_totals, root_or_skip,
    run_with, tag, traffic, udp_echo,
};
use lab::{EchoServer, Lab};

fn cg_arg(lab: &Lab) -> String {
    lab.cgroup.path.display().to_string()
}

/// The programs that run for the lab cgroup's sockets, both ways (the kernel's own listing).
fn attached(lab: &Lab) -> Vec<u32> {
    let mut ids = cgroup_programs(&lab.cgroup.path, attach_type::INET_EGRESS);
    ids.extend(cgroup_programs(&lab.cgroup.path, attach_type::INET_INGRESS));
    ids
}

/// The lab device's qdiscs (root and clsact/ingress alike).
fn qdiscs(lab: &Lab) -> String {
    let out = Command::new("tc")
        .args(["qdisc", "show", "dev", &lab.host_if])
        .output()
        .expect("tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn drop_rate_within_2pp_over_20k_packets_and_nothing_outside() {
    if !root_or_skip("drop_rate_within_2pp_over_20k_packets_and_nothing_outside") {
        return;
    }
    let lab = Lab::create(&tag("t")).unwrap();
    let (_, server6) = lab.add_ipv6().unwrap();
    for to in [
        SocketAddr::from((lab.server_addr, 7000)),
        SocketAddr::from((server6, 7000)),
    ] {
        drop_30_percent(&lab, to);
    }
}

/// 30 % drop on what the lab cgroup sends to the echo server at `to`: the loss a client measured,
/// the kernel's count of it, and nothing lost outside the cgroup.
fn drop_30_percent(lab: &Lab, to: SocketAddr) {
    let _srv = EchoServer::start(&lab.netns, to).unwrap();
    let report = TempFile::new("net.json");
    let runs = RunDir::new();
    let running = runs.start(&[
        "net",
        "--cgroup",
        &cg_arg(lab),
        "--drop",
        "30",
        "--json",
        report.s(),
        "--quiet",
    ]);

    let (sent, received) = udp_echo(Some(&lab.cgroup.path), None, to, 20_000);
    let (out_sent, out_received) = udp_echo(None, None, to, 5_000);
    let (code, lines) = running.terminate();
    assert_eq!(code, 143, "kchaos net output: {lines:?}");

    let loss = 100.0 * (sent - received) as f64 / sent as f64;
    println!(
        "{to}: target sent {sent} received {received} loss {loss:.2}%; outside: {out_sent}/{out_received}"
    );
    assert_eq!(
        out_received, out_sent,
        "{to}: a process outside the cgroup lost packets"
    );
    // The kernel's own count of drops is exactly what the client missed (egress only: echoes pass).
    let totals = net_totals(&report.0);
    // Each datagram is dropped on its own draw: the count is binomial (the client's loss is the
    // same count, give or take what emulation loses, below).
    integration_tests::stats::assert_binomial(
        &format!("{to}: datagrams dropped"),
        totals["egress"]["dropped"].as_u64().unwrap(),
        sent,
        0.3,
    );
    // Under emulation (the VM suite) a datagram or two can be lost with no fault: allow 0.25 % there.
    let dropped = totals["egress"]["dropped"].as_u64().unwrap();
    let allowed = if integration_tests::in_vm() {
        sent / 400
    } else {
        0
    };
    assert!((sent - received).abs_diff(dropped) <= allowed, "{totals}");
    assert_eq!(totals["egress"]["seen"].as_u64().unwrap(), sent, "{totals}");
    // Ingress is not attached for an egress drop, and the report does not pretend it counted.
    assert_eq!(totals["ingress"], serde_json::json!({}), "{totals}");
}

#[test]
fn partition_blocks_exactly_the_peer_and_port_both_ways() {
    if !root_or_skip("partition_blocks_exactly_the_peer_and_port_both_ways") {
        return;
    }
    let lab = Lab::create(&tag("t")).unwrap();
    let s7000 = SocketAddr::from((lab.server_addr, 7000));
    let s7001 = SocketAddr::from((lab.server_addr, 7001));
    let alt7000 = SocketAddr::from((lab.alt_addr, 7000));
    let servers: Vec<EchoServer> = [s7000, s7001, alt7000]
        .iter()
        .map(|a| EchoServer::start(&lab.netns, *a).unwrap())
        .collect();
    let runs = RunDir::new();
    let running = runs.start(&[
        "net",
        "--cgroup",
        &cg_arg(&lab),
        "--partition",
        &format!("{}:7000", lab.server_addr),
        "--quiet",
    ]);

    // Target -> peers.
    assert_eq!(
        udp_echo(Some(&lab.cgroup.path), None, s7000, 500).1,
        0,
        "the partitioned peer:port answered"
    );
    assert_eq!(
        udp_echo(Some(&lab.cgroup.path), None, s7001, 500).1,
        500,
        "another port of the peer was cut off"
    );
    assert_eq!(
        udp_echo(Some(&lab.cgroup.path), None, alt7000, 500).1,
        500,
        "another address was cut off"
    );
    assert_eq!(
        udp_echo(None, None, s7000, 500).1,
        500,
        "a process outside the cgroup was cut off"
    );

    // Peer -> target: datagrams sent from the partitioned port never arrive; from another port they do.
    drop(servers); // frees port 7000 to send from
    // The open sink ends once its 300 datagrams are in; the blocked one when its stdin is closed,
    // after that: the blocked datagrams were sent first, on the same path, so by then they would
    // have arrived. No window fixed in advance, which a starved host's late senders overrun.
    let sink = |port: u16, until: &[&str]| {
        let mut child = Command::new(kchaos())
            .args([
                "traffic",
                "--cgroup",
                &cg_arg(&lab),
                "udp-sink",
                "--bind",
                &format!("{}:{port}", lab.host_addr),
                "--for",
                "60s",
            ])
            .args(until)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
        assert!(ready.contains("ready"), "{ready}");
        (child, out)
    };
    let ns_path = lab.netns.path();
    let (blocked, mut blocked_out) = sink(9000, &["--until-eof"]);
    let (open, mut open_out) = sink(9001, &["--count", "300"]);
    for (to_port, from) in [
        (9000, s7000),
        (9001, SocketAddr::from((lab.server_addr, 7005))),
    ] {
        let v = traffic(
            None,
            Some(&ns_path),
            &[
                "udp-send",
                "--to",
                &format!("{}:{to_port}", lab.host_addr),
                "--from",
                &from.to_string(),
                "--count",
                "300",
            ],
        );
        assert_eq!(v["send_errors"], 0);
    }
    let read = |mut child: std::process::Child,
                out: &mut std::io::BufReader<std::process::ChildStdout>| {
        drop(child.stdin.take());
        let mut line = String::new();
        std::io::BufRead::read_line(out, &mut line).unwrap();
        let _ = child.wait_with_output();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["received"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        read(open, &mut open_out),
        300,
        "datagrams from another port of the peer were lost"
    );
    assert_eq!(
        read(blocked, &mut blocked_out),
        0,
        "datagrams from the partitioned peer:port arrived"
    );
    let (code, lines) = running.terminate();
    assert_eq!(code, 143, "{lines:?}");
}

#[test]
fn process_in_its_own_netns_is_hit_both_ways() {
    if !root_or_skip("process_in_its_own_netns_is_hit_both_ways") {
        return;
    }
    // The target cgroup comes from one lab; the process lives in a second lab's namespace (a
    // "container"), talking to a server in this (host) namespace across the veth.
    let target = Lab::create(&tag("t")).unwrap();
    let container = Lab::create(&tag("c")).unwrap();
    let to = SocketAddr::from((container.host_addr, 7100));
    let server = EchoServer::start_in(None, to).unwrap();
    let ns = container.netns.path();
    assert_eq!(
        udp_echo(Some(&target.cgroup.path), Some(&ns), to, 300).1,
        300,
        "the lab does not work without a fault"
    );

    for (direction, server_gets) in [("egress", 0), ("ingress", 300)] {
        let before = server.received.load(std::sync::atomic::Ordering::Relaxed);
        let runs = RunDir::new();
        let running = runs.start(&[
            "net",
            "--cgroup",
            &cg_arg(&target),
            "--drop",
            "100",
            "--direction",
            direction,
            "--quiet",
        ]);
        let (_, received) = udp_echo(Some(&target.cgroup.path), Some(&ns), to, 300);
        let got = server.received.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(
            received, 0,
            "{direction}: the client in its own netns still got echoes"
        );
        assert_eq!(got, server_gets, "{direction}: the server received {got}");
        assert_eq!(
            running.terminate().0,
            143,
            "SIGTERM ends a run with 128 + 15"
        );
    }
}

#[test]
fn child_cgroup_made_after_the_start_is_hit() {
    if !root_or_skip("child_cgroup_made_after_the_start_is_hit") {
        return;
    }
    let lab = Lab::create(&tag("t")).unwrap();
    let to = SocketAddr::from((lab.server_addr, 7000));
    let _srv = EchoServer::start(&lab.netns, to).unwrap();
    let runs = RunDir::new();
    let running = runs.start(&["net", "--cgroup", &cg_arg(&lab), "--drop", "100", "--quiet"]);
    let child = lab.cgroup.child("made-later").unwrap();
    assert_eq!(
        udp_echo(Some(&child), None, to, 300).1,
        0,
        "a child cgroup made after the start was not hit"
    );
    assert_eq!(udp_echo(None, None, to, 300).1, 300);
    assert_eq!(
        running.terminate().0,
        143,
        "SIGTERM ends a run with 128 + 15"
    );
    assert_eq!(
        udp_echo(Some(&child), None, to, 300).1,
        300,
        "the fault outlived the run"
    );
}

#[test]
fn nothing_is_left_after_a_run_and_after_sigkill() {
    if !root_or_skip("nothing_is_left_after_a_run_and_after_sigkill") {
        return;
    }
    let lab = Lab::create(&tag("t")).unwrap();
    let to = SocketAddr::from((lab.server_addr, 7000));
    let _srv = EchoServer::start(&lab.netns, to).unwrap();
    let before = (attached(&lab), qdiscs(&lab));
    assert!(
        before.0.is_empty(),
        "programs already attached to a fresh cgroup: {before:?}"
    );
    let runs = RunDir::new();

    // A run that ends by its duration.
    let out = run_with(
        &[
            "net",
            "--cgroup",
            &cg_arg(&lab),
            "--drop",
            "50",
            "--partition",
            "10.254.0.0/16",
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
    assert_eq!(
        (attached(&lab), qdiscs(&lab)),
        before,
        "the kernel still lists kchaos's programs or qdiscs"
    );
    assert_eq!(udp_echo(Some(&lab.cgroup.path), None, to, 300).1, 300);
    assert!(
        runs.records().is_empty(),
        "a clean run left its record: {:?}",
        runs.records()
    );

    // A loader killed with SIGKILL while injecting: its fd-owned links die with it.
    let running = runs.start(&["net", "--cgroup", &cg_arg(&lab), "--drop", "100", "--quiet"]);
    assert_eq!(attached(&lab).len(), 1, "one egress program while running");
    assert_eq!(
        udp_echo(Some(&lab.cgroup.path), None, to, 300).1,
        0,
        "the fault was not injecting"
    );
    running.sigkill();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        udp_echo(Some(&lab.cgroup.path), None, to, 300).1,
        300,
        "faults outlived a SIGKILLed loader"
    );
    assert_eq!((attached(&lab), qdiscs(&lab)), before);
    // The killed loader's record is left (and its status file); `kchaos stop` finds it and clears
    // both.
    assert_eq!(
        runs.record_files().len(),
        1,
        "the killed loader left no record for `kchaos stop`: {:?}",
        runs.records()
    );
    let out = run_with(&["stop"], Some(&runs));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        runs.records().is_empty(),
        "kchaos stop left a record: {:?}",
        runs.records()
    );
}

#[test]
fn bad_input_exits_2_and_attaches_nothing() {
    if !root_or_skip("bad_input_exits_2_and_attaches_nothing") {
        return;
    }
    let lab = Lab::create(&tag("t")).unwrap();
    let cg = cg_arg(&lab);
    let progs = attached(&lab);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["net", "--cgroup", &cg, "--drop", "140"], "0 to 100"),
        (vec!["net", "--cgroup", &cg, "--bogus"], "--bogus"),
        (
            vec!["net", "--cgroup", "/no/such/cgroup", "--drop", "5"],
            "does not exist",
        ),
        (vec!["net", "--cgroup", "/", "--drop", "5"], "root cgroup"),
        (vec!["net", "--cgroup", &cg], "nothing to inject"),
        (
            vec!["net", "--cgroup", &cg, "--partition", "10.0.0.1:99999"],
            "port",
        ),
        (vec!["net", "--cgroup", &cg, "--delay", "10"], "unit"),
        (
            vec!["net", "--pid", "999999999", "--drop", "1"],
            "--pid 999999999",
        ),
    ];
    for (args, expect) in cases {
        let out = RunDir::new().run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{args:?}: stderr does not say '{expect}': {stderr}"
        );
        assert_eq!(attached(&lab), progs, "{args:?} left programs loaded");
    }
    if !chaos_userspace::engine::qdisc::kernel_has_fq() {
        let out = RunDir::new().run(&["net", "--cgroup", &cg, "--delay", "10ms"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("sch_fq"), "{stderr}");
        assert_eq!(attached(&lab), progs);
    }
}

#[test]
fn dry_run_says_what_it_would_do_and_attaches_nothing() {
    if !root_or_skip("dry_run_says_what_it_would_do_and_attaches_nothing") {
        return;
    }
    let lab = Lab::create(&tag("y")).unwrap();
    let cg = cg_arg(&lab);
    let progs = attached(&lab);
    let runs = RunDir::new();
    let mut sleeper = integration_tests::spawn_in(&lab.cgroup.path, &["sleep", "30"]);
    let procs = lab.cgroup.path.join("cgroup.procs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::fs::read_to_string(&procs)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sleeper never joined the lab"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = runs.run(&[
        "net",
        "--cgroup",
        &cg,
        "--drop",
        "50",
        "--duration",
        "1m30s",
        "--dry-run",
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for said in [
        "drop 50% (egress) (dry run: nothing is attached)",
        "1 process(es) now",
        "for 90s",
        "this kernel offers what it needs",
    ] {
        assert!(stdout.contains(said), "missing '{said}': {stdout}");
    }
    assert_eq!(attached(&lab), progs, "a dry run attached a program");
    assert!(
        runs.records().is_empty(),
        "a dry run left {:?}",
        runs.records()
    );
}

#[test]
fn partition_holds_over_ipv6() {
    if !root_or_skip("partition_holds_over_ipv6") {
        return;
    }
    let lab = Lab::create(&tag("6")).unwrap();
    let (_, server6) = lab.add_ipv6().unwrap();
    let s7000 = SocketAddr::from((server6, 7000));
    let s7001 = SocketAddr::from((server6, 7001));
    let _a = EchoServer::start(&lab.netns, s7000).unwrap();
    let _b = EchoServer::start(&lab.netns, s7001).unwrap();
    let cg = cg_arg(&lab);

    let runs = RunDir::new();

    // Partition: one peer's port, then its whole /64, both ways; other ports and processes untouched.
    for (peer, cut_7001) in [
        (format!("[{server6}]:7000"), false),
        (format!("{server6}/64"), true),
    ] {
        let running = runs.start(&["net", "--cgroup", &cg, "--partition", &peer, "--quiet"]);
        assert_eq!(
            udp_echo(Some(&lab.cgroup.path), None, s7000, 300).1,
            0,
            "{peer}: the partitioned IPv6 peer still answered"
        );
        assert_eq!(
            udp_echo(Some(&lab.cgroup.path), None, s7001, 300).1,
            if cut_7001 { 0 } else { 300 },
            "{peer}: port 7001"
        );
        assert_eq!(
            udp_echo(None, None, s7000, 300).1,
            300,
            "{peer}: a process outside the cgroup was cut off"
        );
        assert_eq!(running.terminate().0, 143);
    }
}

#[test]
fn ingress_delay_is_refused_where_it_cannot_be_held_to_the_target() {
    if !root_or_skip("ingress_delay_is_refused_where_it_cannot_be_held_to_the_target") {
        return;
    }
    let lab = Lab::create(&tag("i")).unwrap();
    let container = Lab::create(&tag("j")).unwrap();
    let cg = cg_arg(&lab);
    // spawn_in's shell joins the cgroup a moment after it starts.
    let joined = |n: usize| {
        for _ in 0..100 {
            let procs = std::fs::read_to_string(lab.cgroup.path.join("cgroup.procs")).unwrap();
            if procs.lines().count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no process joined the lab cgroup");
    };
    let delay_in = |cg: &str| {
        let out = RunDir::new().run(&[
            "net",
            "--cgroup",
            cg,
            "--delay",
            "10ms",
            "--direction",
            "ingress",
        ]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No process yet: no namespace to delay into.
    let (code, err) = delay_in(&cg);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("needs a process in the target already"),
        "{err}"
    );

    // A process in kchaos's own namespace: its way in is every process's.
    let mut host_proc = integration_tests::spawn_in(&lab.cgroup.path, &["sleep", "30"]);
    joined(1);
    let (code, err) = delay_in(&cg);
    // A rate on ingress is refused the same way, and for the same reason.
    let rate = RunDir::new().run(&[
        "net",
        "--cgroup",
        &cg,
        "--rate",
        "1mbit",
        "--direction",
        "both",
    ]);
    let _ = host_proc.kill();
    let _ = host_proc.wait();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("needs the target in a network namespace of its own"),
        "{err}"
    );
    let rate_err = String::from_utf8_lossy(&rate.stderr);
    assert_eq!(rate.status.code(), Some(2), "{rate_err}");
    assert!(
        rate_err.contains("--rate on ingress")
            && rate_err.contains("needs the target in a network namespace of its own"),
        "{rate_err}"
    );

    // A namespace of its own, but shared with a process of another cgroup.
    let ns = container.netns.name.clone();
    let mut inside = integration_tests::spawn_in(
        &lab.cgroup.path,
        &["ip", "netns", "exec", &ns, "sleep", "30"],
    );
    let mut other = Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "30"])
        .spawn()
        .unwrap();
    joined(1);
    // `ip netns exec` has entered the namespace once it runs sleep.
    std::thread::sleep(Duration::from_millis(300));
    let (code, err) = delay_in(&cg);
    for p in [&mut inside, &mut other] {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("process {}", other.id())), "{err}");
    assert!(err.contains("which is not a target"), "{err}");
    assert!(
        attached(&lab).is_empty(),
        "a refused fault attached a program"
    );
}
