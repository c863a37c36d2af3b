//! EDT delay and rate for real: round trips a clock measured and TCP bulk a receiver counted through
//! sch_fq, beside netem in the same boot. Needs sch_fq (and sch_netem for the comparison): runs in the
//! VM kernel, says SKIP where it is absent.

use std::{net::SocketAddr, process::Command};

use integration_tests::{
    Arrivals, Netem, Received, RunDir, echo_rtts, kernel_label, lab, mbit, quantile, root_or_skip,
    skip, tag, tcp_sink_log, traffic, udp_echo_report,
};
use lab::{EchoServer, Lab};

const PROBES: u64 = 2000;
const MS: f64 = 1000.0; // µs per ms

/// Sorted round-trip times in µs of PROBES UDP echoes.
fn rtts(cg: Option<&std::path::Path>, to: SocketAddr) -> Vec<f64> {
    echo_rtts(cg, None, to, PROBES, "400").unwrap()
}

/// `measure` with `tc qdisc add dev DEV root netem ARGS` in place, then the qdisc removed; None
/// where the kernel has no netem.
fn beside_netem<T>(dev: &str, args: &[&str], measure: impl FnOnce() -> T) -> Option<T> {
    let _netem = Netem::add(dev, args).ok()?;
    Some(measure())
}

fn root_qdisc(dev: &str) -> String {
    let out = Command::new("tc")
        .args(["qdisc", "show", "dev", dev, "root"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// A lab with an echo server on its :7000, where this kernel has root and sch_fq; None (after saying
/// SKIP and why) where it hasn't.
fn fq_lab(test: &str) -> Option<(Lab, SocketAddr, EchoServer)> {
    if !root_or_skip(test) {
        return None;
    }
    if !chaos_userspace::engine::qdisc::kernel_has_fq() {
        skip(
            test,
            "this kernel has no sch_fq (CONFIG_NET_SCH_FQ); the VM suite runs it",
        );
        return None;
    }
    let lab = Lab::create(&tag("e")).unwrap();
    let to = SocketAddr::from((lab.server_addr, 7000));
    let server = EchoServer::start(&lab.netns, to).unwrap();
    Some((lab, to, server))
}

#[test]
fn edt_delay_is_as_configured_and_at_least_as_precise_as_netem() {
    let Some((lab, to, _srv)) =
        fq_lab("edt_delay_is_as_configured_and_at_least_as_precise_as_netem")
    else {
        return;
    };
    // 50 ms: under emulation (the VM suite) timers are late by up to a few ms, for netem as for fq.
    let (d, j) = (50.0 * MS, 5.0 * MS);
    let (base, base_late) =
        integration_tests::timing::with_timer_lateness(|| rtts(Some(&lab.cgroup.path), to));
    let before_qdisc = root_qdisc(&lab.host_if);

    let runs = RunDir::new();

    let running = runs.start(&[
        "net",
        "--cgroup",
        &lab.cgroup.path.display().to_string(),
        "--delay",
        "50ms",
        "--jitter",
        "5ms",
        "--quiet",
    ]);
    assert_eq!(
        root_qdisc(&lab.host_if),
        "fq",
        "kchaos did not put fq on {}",
        lab.host_if
    );
    // A plain timer beside the probes: how late this environment's timers were meanwhile.
    let (hit, late) =
        integration_tests::timing::with_timer_lateness(|| rtts(Some(&lab.cgroup.path), to));
    let (outside, outside_late) = integration_tests::timing::with_timer_lateness(|| rtts(None, to));
    let (code, out) = running.terminate();
    assert_eq!(code, 143, "{out:?}");
    assert_eq!(
        root_qdisc(&lab.host_if),
        before_qdisc,
        "the qdisc was not restored"
    );

    // netem on the same device, same boot, same probes (netem delays every packet on the device).
    let netem_rtts = beside_netem(&lab.host_if, &["delay", "50ms", "5ms"], || rtts(None, to));

    let added = |r: &[f64], p: f64| quantile(r, p) - quantile(&base, 0.5);
    println!(
        "[{}] delay 50ms ±5ms, {PROBES} UDP round trips each (ms; baseline median {:.3}):",
        kernel_label(),
        quantile(&base, 0.5) / MS
    );
    println!(
        "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>14} {:>12}",
        "", "p5", "p25", "p50", "p95", "p99", "|p50-D|"
    );
    let row = |label: &str, r: &[f64]| {
        println!(
            "  {label:<22} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>14.3} {:>12.3}",
            added(r, 0.05) / MS,
            added(r, 0.25) / MS,
            added(r, 0.5) / MS,
            added(r, 0.95) / MS,
            added(r, 0.99) / MS,
            (added(r, 0.5) - d).abs() / MS
        )
    };
    row("kchaos (EDT, fq)", &hit);
    if let Some(n) = &netem_rtts {
        row("netem", n);
    } else {
        println!("  netem: not available on this kernel");
    }
    row("outside the cgroup", &outside);

    // Judged against this boot's own lateness, not a fixed number of milliseconds. A probe's
    // round trip is H = X + F + B: X the delay drawn (uniform within D±J, so its p quantile is
    // D - J + 2Jp), F how late fq's watchdog released it (never early), B the round trip without
    // fault. For any quantiles, P(X + F + B > x_a + f_b + b_c) <= (1 - a) + (1 - b) + (1 - c), so
    // with a = 0.6, b = c = 0.95 the median of H is at most x_0.6 + f_0.95 + b_0.95, and (F >= 0)
    // at least x_0.4 + b_0.05. F is taken as no later than the plain timer beside the probes (an
    // hrtimer too, and a thread's wake-up besides). Each sample quantile is replaced by the
    // order statistic that bounds it at alpha 1e-6 / 8 (quantile_bracket; eight are used here and
    // in the check outside the cgroup below), so the checks together fail falsely with probability
    // below 1e-6.
    use integration_tests::stats::{ALPHA, quantile_bracket};
    let a = ALPHA / 8.0;
    let x = |p: f64| d - j + 2.0 * j * p;
    let (hit_med_low, hit_med_high) = quantile_bracket(&hit, 0.5, a);
    let late_95 = quantile_bracket(&late, 0.95, a).1;
    let (base_05, base_95) = (
        quantile_bracket(&base, 0.05, a).0,
        quantile_bracket(&base, 0.95, a).1,
    );
    println!(
        "  a plain 2 ms timer beside the probes was late by (ms) p50 {:.3}, p95 {:.3}, max {:.3} \
         (beside the baseline: p95 {:.3})",
        quantile(&late, 0.5) / MS,
        quantile(&late, 0.95) / MS,
        late.last().copied().unwrap_or(0.0) / MS,
        quantile(&base_late, 0.95) / MS
    );
    let high = x(0.6) + late_95 + base_95;
    assert!(
        hit_med_low <= high,
        "median round trip {:.3} ms (at least {:.3}) above {:.3} ms: the draw's 60th percentile \
         {:.3} + this boot's timer lateness p95 {:.3} + the baseline's p95 {:.3}",
        quantile(&hit, 0.5) / MS,
        hit_med_low / MS,
        high / MS,
        x(0.6) / MS,
        late_95 / MS,
        base_95 / MS
    );
    let low = x(0.4) + base_05;
    assert!(
        hit_med_high >= low,
        "median round trip {:.3} ms (at most {:.3}) below {:.3} ms: fq sent early",
        quantile(&hit, 0.5) / MS,
        hit_med_high / MS,
        low / MS
    );
    let err = (added(&hit, 0.5) - d).abs();
    // Jitter: the middle half of the added delays lies within D±J, give or take the baseline's own
    // spread (fq never sends early: a quarter of the draws are below D - J/2, the margin is J/2
    // more than that), plus this boot's timer lateness above.
    let noise = quantile(&base, 0.75) - quantile(&base, 0.5);
    assert!(
        added(&hit, 0.25) >= d - j - 0.5 * MS,
        "p25 {:.3} ms below D-J",
        added(&hit, 0.25) / MS
    );
    assert!(
        added(&hit, 0.75) <= d + j + noise + late_95,
        "p75 {:.3} ms above D+J plus the baseline's spread {:.3} and this boot's timer lateness p95 \
         {:.3}",
        added(&hit, 0.75) / MS,
        noise / MS,
        late_95 / MS
    );
    // The draws' middle half spans J (uniform within D±J); the round trip adds spread, it does not
    // take it away (fq releases each at its own time or later).
    assert!(
        added(&hit, 0.75) - added(&hit, 0.25) >= j * 0.5,
        "no spread: the jitter was not applied"
    );
    // Nothing added outside the cgroup: its median round trip is at most the baseline's 95th
    // percentile plus this boot's timer lateness meanwhile (the derivation above with X = 0).
    let outside_high = base_95 + quantile_bracket(&outside_late, 0.95, a).1;
    assert!(
        quantile_bracket(&outside, 0.5, a).0 <= outside_high,
        "a process outside the cgroup was delayed: median round trip {:.3} ms above {:.3} ms (the \
         baseline's p95 plus this boot's timer lateness p95)",
        quantile(&outside, 0.5) / MS,
        outside_high / MS
    );
    // netem ran after kchaos, not beside it, so its error is shown, not asserted: under
    // emulation the two runs see different lateness (the plain timer above is the reference).
    if let Some(n) = &netem_rtts {
        println!(
            "  median error: kchaos {:.3} ms, netem {:.3} ms",
            err / MS,
            (added(n, 0.5) - d).abs() / MS
        );
    }
}

#[test]
fn stop_restores_the_qdisc_a_sigkilled_loader_left() {
    let Some((lab, to, _srv)) = fq_lab("stop_restores_the_qdisc_a_sigkilled_loader_left") else {
        return;
    };
    let before = root_qdisc(&lab.host_if);
    let runs = RunDir::new();
    let running = runs.start(&[
        "net",
        "--cgroup",
        &lab.cgroup.path.display().to_string(),
        "--delay",
        "50ms",
        "--quiet",
    ]);
    assert_eq!(root_qdisc(&lab.host_if), "fq");
    running.sigkill();
    // The programs died with the loader: no delay any more, although fq (harmless alone) is still there.
    let r = rtts(Some(&lab.cgroup.path), to);
    assert!(
        quantile(&r, 0.5) < 20.0 * MS,
        "packets still delayed after the loader died: median {:.3} ms",
        quantile(&r, 0.5) / MS
    );
    assert_eq!(
        root_qdisc(&lab.host_if),
        "fq",
        "expected the netlink-owned qdisc to outlive the loader"
    );
    let out = runs.run(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&lab.host_if),
        "stop did not say what it undid"
    );
    assert_eq!(
        root_qdisc(&lab.host_if),
        before,
        "kchaos stop did not restore the qdisc"
    );
}

/// Mbit/s of TCP payload a receiver in `lab`'s namespace at `to` got from a 3-second bulk send from
/// `cg` (or outside any target).
fn goodput(lab: &Lab, cg: Option<&std::path::Path>, to: SocketAddr) -> f64 {
    slope(&arrivals(lab, cg, to))
}

/// A 3-second bulk send from `cg` to a sink at `to` in `lab`'s namespace: the sink's reads.
fn arrivals(lab: &Lab, cg: Option<&std::path::Path>, to: SocketAddr) -> Arrivals {
    let sink = tcp_sink_log(&lab.netns, to).expect("the TCP sink");
    traffic(
        cg,
        None,
        &["tcp-send", "--to", &to.to_string(), "--for", "3s"],
    );
    sink.join().unwrap().expect("the sink")
}

/// What a sink received in all, from its first read to its last.
fn received(log: &Arrivals) -> Received {
    match (log.first(), log.last()) {
        (Some(first), Some(last)) => (last.1, first.0, last.0),
        _ => {
            let now = std::time::Instant::now();
            (0, now, now)
        }
    }
}

/// Mbit/s of payload over a whole transfer: the slope through all its reads (`rate_between`: robust
/// to the GSO bursts a paced stream lands in, and to a read that came late at either end).
fn slope(log: &Arrivals) -> f64 {
    match (log.first(), log.last()) {
        (Some(first), Some(last)) => integration_tests::rate_between(log, first.0, last.0),
        _ => 0.0,
    }
}

/// Runs `a` and `b` at once: the same seconds for both.
fn together<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    std::thread::scope(|s| {
        let a = s.spawn(a);
        let b = b();
        (a.join().unwrap(), b)
    })
}

/// netem's `rate` on a second lab's veth, carrying a bulk stream of its own in the same seconds as
/// kchaos's: the environment's own pacing, measured at the same moment (issue 27). The stream runs as
/// kchaos's do, from this namespace (outside any target cgroup) to a sink in the lab's namespace,
/// through netem at the root of the host's end of the pair. Made after kchaos started, so that its
/// device is not one kchaos put fq on (kchaos plans its devices when it starts); it goes with the lab.
struct NetemTwin {
    // Field order is drop order: the qdisc goes before the lab's veth.
    _netem: Netem,
    lab: Lab,
}

impl NetemTwin {
    /// None (after saying so) where this kernel has no sch_netem.
    fn start(mbit: f64) -> Option<Self> {
        let lab = Lab::create(&tag("n")).unwrap();
        match Netem::add(&lab.host_if, &["rate", &Self::rate(mbit)]) {
            Ok(netem) => Some(Self { _netem: netem, lab }),
            Err(e) => {
                println!("  no netem twin to measure this boot's pacing beside kchaos: {e}");
                None
            }
        }
    }

    fn rate(mbit: f64) -> String {
        format!("{}kbit", (mbit * 1000.0).round() as u64)
    }

    /// Sets the rate (at the moment a ramp steps).
    fn set(&self, mbit: f64) {
        let out = Command::new("tc")
            .args(["qdisc", "change", "dev", &self.lab.host_if, "root", "netem"])
            .args(["rate", &Self::rate(mbit)])
            .output()
            .expect("running tc");
        assert!(
            out.status.success(),
            "changing the netem twin's rate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A bulk stream of `secs` from here to a sink in the twin's namespace on `port`: its reads.
    fn stream(&self, port: u16, secs: &str) -> Arrivals {
        let to = SocketAddr::from((self.lab.server_addr, port));
        let sink = tcp_sink_log(&self.lab.netns, to).expect("the twin's sink");
        traffic(
            None,
            None,
            &["tcp-send", "--to", &to.to_string(), "--for", secs],
        );
        sink.join().unwrap().expect("the twin's sink")
    }

    /// Mbit/s of IPv4 TCP payload netem's rate implies: it counts the frame, 1514 bytes for 1448.
    fn payload_rate(mbit: f64) -> f64 {
        mbit * 1448.0 / 1514.0
    }
}

/// How close to its rate kchaos holds a stream on an idle machine, as a fraction of the rate: the
/// product's goal (README, the comparison with netem: "±2% for bandwidth"), not a statistical bound. A rate is a clock's doing, not a
/// sample's: nothing in it is drawn at random.
const RATE_GOAL: f64 = 0.02;

/// Asserts a rate kchaos shaped: `got` Mbit/s of payload where the rate implies `want`, judged beside
/// `reference`, netem's (got, want) on a twin veth in the same seconds.
///
/// Under emulation on a busy host a paced stream falls short where its sender, its receiver or the
/// qdisc's watchdog waits for a CPU (issue 27 saw 17.9 for 19.0 Mbit/s), and a receiver's late reads
/// bend the measured slope either way; netem's stream meets the same stalls at the same moment
/// (the same vCPUs, the same kind of sender and sink, a paced qdisc as fq is). So kchaos's ratio
/// got/want must lie within RATE_GOAL of the range between 1 and netem's ratio: the goal where the
/// twin kept its rate, the environment's own error added where it did not. Without a twin (a kernel
/// without sch_netem) the goal alone.
fn assert_rate(what: &str, got: f64, want: f64, reference: Option<(f64, f64)>) {
    let ratio = got / want;
    let env = reference.map_or(1.0, |(g, w)| g / w);
    let (low, high) = (env.min(1.0) - RATE_GOAL, env.max(1.0) + RATE_GOAL);
    println!(
        "  {what}: {got:.3} Mbit/s of payload for {want:.3} ({:+.2}%); netem beside it {}; allowed \
         {:.2}%..{:+.2}%",
        (ratio - 1.0) * 100.0,
        reference.map_or("not available".to_owned(), |(g, w)| format!(
            "{g:.3} for {w:.3} ({:+.2}%)",
            (g / w - 1.0) * 100.0
        )),
        (low - 1.0) * 100.0,
        (high - 1.0) * 100.0,
    );
    assert!(
        (low..=high).contains(&ratio),
        "{what}: {got:.3} Mbit/s of payload for {want:.3} ({:+.2}%), outside {:+.2}%..{:+.2}%: \
         {:.0}% of the rate beyond what netem on a twin veth got in the same seconds",
        (ratio - 1.0) * 100.0,
        (low - 1.0) * 100.0,
        (high - 1.0) * 100.0,
        RATE_GOAL * 100.0
    );
}

/// kchaos's 3-second stream `measure` beside a netem twin at `mbit` carrying its own stream on
/// `port` in the same seconds: kchaos's result and netem's (got, want), None without a twin.
fn beside_twin<T: Send>(
    mbit: f64,
    port: u16,
    measure: impl FnOnce() -> T + Send,
) -> (T, Option<(f64, f64)>) {
    match NetemTwin::start(mbit) {
        Some(twin) => {
            let (got, log) = together(measure, || twin.stream(port, "3s"));
            (got, Some((slope(&log), NetemTwin::payload_rate(mbit))))
        }
        None => (measure(), None),
    }
}

#[test]
fn rate_holds_tcp_bulk_to_the_configured_bandwidth_beside_netem() {
    let Some((lab, _to, _srv)) =
        fq_lab("rate_holds_tcp_bulk_to_the_configured_bandwidth_beside_netem")
    else {
        return;
    };
    let runs = RunDir::new();
    let running = runs.start(&[
        "net",
        "--cgroup",
        &lab.cgroup.path.display().to_string(),
        "--rate",
        "20mbit",
        "--quiet",
    ]);
    // kchaos's stream and a netem twin's at the same rate in the same seconds.
    let (hit, netem) = beside_twin(20.0, 7111, || {
        goodput(&lab, Some(&lab.cgroup.path), (lab.server_addr, 7101).into())
    });
    let outside = goodput(&lab, None, (lab.server_addr, 7102).into());
    let (code, out) = running.terminate();
    assert_eq!(code, 143, "{out:?}");

    // Each counts its own bytes: kchaos the IP packet (1500 for 1448 of TCP payload with
    // timestamps), netem the frame with its Ethernet header (1514).
    let expected = payload_rate(20.0, SocketAddr::from((lab.server_addr, 7101)));
    println!(
        "[{}] --rate 20mbit, 3 s of TCP bulk beside netem's rate on a twin veth; outside the \
         cgroup {outside:.1} Mbit/s",
        kernel_label(),
    );
    assert_rate("--rate 20mbit", hit, expected, netem);
    // An unlimited sender outside the cgroup: twice the rate is far below what any machine's veth
    // carries (600 Mbit/s under TCG, README), so this only fails where kchaos limited it.
    assert!(
        outside > 2.0 * 20.0,
        "a sender outside the cgroup got only {outside:.1} Mbit/s"
    );
}

/// The share (%) of `count` echoes at 1000 a second that came before one sent earlier.
fn reordered_share(cg: Option<&std::path::Path>, to: SocketAddr, count: u64) -> f64 {
    100.0 * reordered_count(cg, to, count) as f64 / count as f64
}

/// How many of `count` echoes at 1000 a second came before one sent earlier.
fn reordered_count(cg: Option<&std::path::Path>, to: SocketAddr, count: u64) -> u64 {
    let v = udp_echo_report(cg, None, to, count, "1000", &["--wait", "1s"]);
    assert_eq!(v["received"], v["sent"], "echoes were lost: {v}");
    v["reordered"].as_u64().unwrap()
}

/// With `--delay 10ms --reorder 25` and a datagram a millisecond, the number that overtook is
/// binomial: each is sent at once on its own draw (25 %) and then overtakes the ten still waiting
/// unless all ten went at once too (0.25^10, 1e-6: the chance is 0.25 (1 - 0.25^10); the first
/// datagrams have fewer before them, a third of one overtake in expectation). 8000 keep the bound
/// at alpha 1e-6 within 2.4 points (4000 gave 3.4). It assumes the sender keeps its pace: one that
/// stalls 10 ms leaves nothing to overtake.
const REORDER_COUNT: u64 = 8000;

fn assert_reorder_share(label: &str, reordered: u64) {
    integration_tests::stats::assert_binomial(
        &format!("{label}: echoes that overtook"),
        reordered,
        REORDER_COUNT,
        0.25 * (1.0 - 0.25f64.powi(10)),
    );
}

#[test]
fn reorder_sends_its_share_ahead_beside_netem() {
    let Some((lab, to, _srv)) = fq_lab("reorder_sends_its_share_ahead_beside_netem") else {
        return;
    };
    // A datagram a millisecond, a 10 ms delay: one sent at once overtakes the ten still waiting
    // unless all ten went at once too (0.25^10), so the share that overtakes is the share sent at
    // once.
    const COUNT: u64 = 4000;
    let runs = RunDir::new();
    let running = runs.start(&[
        "net",
        "--cgroup",
        &lab.cgroup.path.display().to_string(),
        "--delay",
        "10ms",
        "--reorder",
        "25",
        "--quiet",
    ]);
    let hit_count = reordered_count(Some(&lab.cgroup.path), to, REORDER_COUNT);
    let hit = 100.0 * hit_count as f64 / REORDER_COUNT as f64;
    let outside = reordered_share(None, to, COUNT);
    let (code, out) = running.terminate();
    assert_eq!(code, 143, "{out:?}");
    let netem = beside_netem(&lab.host_if, &["delay", "10ms", "reorder", "25%"], || {
        reordered_share(None, to, COUNT)
    });
    println!(
        "[{}] --delay 10ms --reorder 25, {REORDER_COUNT} echoes at 1000/s ({COUNT} outside and \
         beside netem), % that overtook an earlier one: kchaos {hit:.2}, netem {}, outside the \
         cgroup {outside:.2}",
        kernel_label(),
        netem.map_or("not available".to_owned(), |n| format!("{n:.2}"))
    );
    assert_reorder_share("IPv4", hit_count);
    assert!(
        outside < 0.5,
        "a process outside the cgroup was reordered: {outside:.2}%"
    );
}

/// A target whose process lives in a network namespace of its own (a container): the target cgroup
/// is `target`'s, the namespace `container`'s; the process is killed when this is dropped.
struct Container {
    target: Lab,
    container: Lab,
    resident: std::process::Child,
}

impl Container {
    /// Where this kernel has root and sch_fq; None (after saying SKIP and why) where it hasn't.
    fn start(test: &str) -> Option<Self> {
        if !root_or_skip(test) {
            return None;
        }
        if !chaos_userspace::engine::qdisc::kernel_has_fq() {
            skip(
                test,
                "this kernel has no sch_fq (CONFIG_NET_SCH_FQ); the VM suite runs it",
            );
            return None;
        }
        let target = Lab::create(&tag("t")).unwrap();
        let container = Lab::create(&tag("c")).unwrap();
        let resident = integration_tests::spawn_in(
            &target.cgroup.path,
            &["ip", "netns", "exec", &container.netns.name, "sleep", "120"],
        );
        // kchaos finds the namespace through the target's processes: wait until this one is in it.
        // (A namespace is known by its nsfs inode: the bind mount's and the process's link agree.)
        let inode = |path: &std::path::Path| {
            std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        };
        let ns = inode(&container.netns.path()).expect("the container's namespace");
        let link = std::path::PathBuf::from(format!("/proc/{}/ns/net", resident.id()));
        let since = std::time::Instant::now();
        while inode(&link).ok() != Some(ns) {
            assert!(
                since.elapsed() < std::time::Duration::from_secs(5),
                "the target's process did not enter the container's namespace"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Some(Self {
            target,
            container,
            resident,
        })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.resident.kill();
        let _ = self.resident.wait();
    }
}

#[test]
fn ingress_delay_holds_for_a_process_in_its_own_namespace() {
    let Some(c) = Container::start("ingress_delay_holds_for_a_process_in_its_own_namespace") else {
        return;
    };
    let (target, container) = (&c.target, &c.container);
    // The target's process talks to a server in this namespace across the container's veth.
    let to = SocketAddr::from((container.host_addr, 7300));
    let _server = EchoServer::start_in(None, to).unwrap();
    let ns = container.netns.path();
    let probe = || echo_rtts(Some(&target.cgroup.path), Some(&ns), to, 500, "200").unwrap();
    let base_rtts = probe();
    let base = quantile(&base_rtts, 0.5);
    let before_qdisc = root_qdisc(&container.host_if);
    let mut added = Vec::new();
    let mut measured = Vec::new();
    for direction in ["ingress", "both"] {
        let runs = RunDir::new();
        let running = runs.start(&[
            "net",
            "--cgroup",
            &target.cgroup.path.display().to_string(),
            "--delay",
            "20ms",
            "--direction",
            direction,
            "--quiet",
        ]);
        assert_eq!(
            root_qdisc(&container.host_if),
            "fq",
            "kchaos did not put fq on the host side of the container's veth"
        );
        let (hit, late) = integration_tests::timing::with_timer_lateness(probe);
        added.push((quantile(&hit, 0.5) - base) / MS);
        measured.push((hit, late));
        let (code, out) = running.terminate();
        assert_eq!(code, 143, "{out:?}");
        assert_eq!(
            root_qdisc(&container.host_if),
            before_qdisc,
            "the qdisc was not restored"
        );
    }
    println!(
        "[{}] --delay 20ms into a container: median round trip {:.3} ms, +{:.3} ms on ingress, \
         +{:.3} ms both ways",
        kernel_label(),
        base / MS,
        added[0],
        added[1]
    );
    // Judged against this boot's own timer lateness in the same rounds, not a fixed 1 ms.
    for ((label, d), (hit, late)) in [("ingress", 20.0 * MS), ("both ways", 40.0 * MS)]
        .into_iter()
        .zip(&measured)
    {
        assert_constant_delay(label, d, hit, late, &base_rtts);
    }
}

/// Asserts that round trips `hit` (sorted, µs), with `late` the lateness of a plain timer beside
/// them (`timing::with_timer_lateness`), carry the constant delay `d` over the baseline `base`
/// (sorted): by the derivation in `edt_delay_is_as_configured_and_at_least_as_precise_as_netem`
/// with X = d, their median lies between d + the baseline's 10th percentile (fq never sends early)
/// and d + the baseline's 90th + the timer's 90th (P(H > that) <= 0.1 + 0.1 < 0.5). Each quantile
/// is bounded by its order statistic at alpha 1e-6 / 5 (five are used): a false alarm below 1e-6.
fn assert_constant_delay(label: &str, d: f64, hit: &[f64], late: &[f64], base: &[f64]) {
    use integration_tests::stats::{ALPHA, quantile_bracket};
    let a = ALPHA / 5.0;
    let (med_low, med_high) = quantile_bracket(hit, 0.5, a);
    let high = d + quantile_bracket(base, 0.9, a).1 + quantile_bracket(late, 0.9, a).1;
    let low = d + quantile_bracket(base, 0.1, a).0;
    println!(
        "  {label}: median round trip {:.3} ms, allowed {:.3}..{:.3} ms (a plain timer beside it \
         late by p90 {:.3} ms)",
        quantile(hit, 0.5) / MS,
        low / MS,
        high / MS,
        quantile(late, 0.9) / MS
    );
    assert!(
        med_low <= high && med_high >= low,
        "{label}: median round trip {:.3} ms (bracket {:.3}..{:.3}) not within {:.3}..{:.3} ms: \
         {:.3} ms of delay over the baseline's p10..p90, plus this boot's timer lateness p90",
        quantile(hit, 0.5) / MS,
        med_low / MS,
        med_high / MS,
        low / MS,
        high / MS,
        d / MS
    );
}

/// Mbit/s of TCP payload the rate implies for full-sized segments: each 1500-byte IP packet carries
/// 1500 less its IP header (20 or 40) and TCP's 32 (with timestamps).
fn payload_rate(mbit: f64, to: SocketAddr) -> f64 {
    let ip = if to.is_ipv6() { 40.0 } else { 20.0 };
    mbit * (1500.0 - ip - 32.0) / 1500.0
}

#[test]
fn delay_rate_and_reorder_hold_over_ipv6() {
    let Some((lab, _to4, _srv4)) = fq_lab("delay_rate_and_reorder_hold_over_ipv6") else {
        return;
    };
    let (_, server6) = lab.add_ipv6().unwrap();
    let to = SocketAddr::from((server6, 7000));
    let _srv = EchoServer::start(&lab.netns, to).unwrap();
    let cg = lab.cgroup.path.display().to_string();
    let run = |args: &[&str], measure: &mut dyn FnMut()| {
        let runs = RunDir::new();
        let mut argv = vec!["net", "--cgroup", &cg, "--quiet"];
        argv.extend_from_slice(args);
        let running = runs.start(&argv);
        measure();
        let (code, out) = running.terminate();
        assert_eq!(code, 143, "{out:?}");
    };

    let base_rtts = rtts(Some(&lab.cgroup.path), to);
    let base = quantile(&base_rtts, 0.5);
    let mut delayed_rtts = (Vec::new(), Vec::new());
    run(&["--delay", "20ms"], &mut || {
        delayed_rtts =
            integration_tests::timing::with_timer_lateness(|| rtts(Some(&lab.cgroup.path), to));
    });
    let delayed = quantile(&delayed_rtts.0, 0.5) - base;
    let (mut got, mut netem) = (0.0, None);
    let bulk = SocketAddr::from((server6, 7104));
    run(&["--rate", "20mbit"], &mut || {
        (got, netem) = beside_twin(20.0, 7114, || goodput(&lab, Some(&lab.cgroup.path), bulk));
    });
    let mut reordered_n = 0;
    run(&["--delay", "10ms", "--reorder", "25"], &mut || {
        reordered_n = reordered_count(Some(&lab.cgroup.path), to, REORDER_COUNT);
    });
    let reordered = 100.0 * reordered_n as f64 / REORDER_COUNT as f64;
    let expected = payload_rate(20.0, bulk);
    println!(
        "[{}] over IPv6: --delay 20ms added {:.3} ms (median of {PROBES}); --rate 20mbit gave \
         {got:.3} Mbit/s of payload (expected {expected:.3}); --reorder 25: {reordered:.2}% overtook",
        kernel_label(),
        delayed / MS
    );
    // The delay judged as over IPv4 and into a container (assert_constant_delay), the rate and the
    // reorder share as over IPv4.
    assert_constant_delay(
        "IPv6 --delay 20ms",
        20.0 * MS,
        &delayed_rtts.0,
        &delayed_rtts.1,
        &base_rtts,
    );
    assert_rate("IPv6 --rate 20mbit", got, expected, netem);
    assert_reorder_share("IPv6", reordered_n);
}

#[test]
fn rate_per_peer_gives_each_peer_the_rate() {
    let Some((lab, _to, _srv)) = fq_lab("rate_per_peer_gives_each_peer_the_rate") else {
        return;
    };
    // Two peers: the lab's IPv4 and IPv6 server addresses, each with its own bulk stream at once.
    let (_, server6) = lab.add_ipv6().unwrap();
    let peers = [
        SocketAddr::from((lab.server_addr, 7105)),
        SocketAddr::from((server6, 7106)),
    ];
    let both = |lab: &Lab| -> Vec<Arrivals> {
        std::thread::scope(|s| {
            let streams: Vec<_> = peers
                .iter()
                .map(|&to| s.spawn(move || arrivals(lab, Some(&lab.cgroup.path), to)))
                .collect();
            streams.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let cg = lab.cgroup.path.display().to_string();
    let mut measured = Vec::new();
    for (per_peer, port) in [(true, 7115), (false, 7116)] {
        let runs = RunDir::new();
        let mut argv = vec!["net", "--cgroup", &cg, "--rate", "10mbit", "--quiet"];
        if per_peer {
            argv.push("--rate-per-peer");
        }
        let running = runs.start(&argv);
        // A netem twin at the same 10 Mbit/s in the same seconds, beside either.
        measured.push(beside_twin(10.0, port, || both(&lab)));
        let (code, out) = running.terminate();
        assert_eq!(code, 143, "{out:?}");
    }
    let expected: Vec<f64> = peers.iter().map(|&to| payload_rate(10.0, to)).collect();
    let per_peer: Vec<f64> = measured[0].0.iter().map(slope).collect();
    // One bucket: the two streams share the link, so what both carried together (as IP bytes, each
    // payload grossed up by its own headers) over the span from the first byte to the last is the
    // rate; a stream alone at either end has the link to itself meanwhile.
    let ip_bytes: Vec<Received> = measured[1]
        .0
        .iter()
        .zip(&expected)
        .map(|(log, want)| {
            let (bytes, first, last) = received(log);
            ((bytes as f64 * 10.0 / want) as u64, first, last)
        })
        .collect();
    let shared = mbit(&ip_bytes);
    println!(
        "[{}] --rate 10mbit, two peers at once (Mbit/s of payload, IPv4 and IPv6): per peer {:.3} \
         and {:.3} (expected {:.3} and {:.3} each); one bucket for all: {:.3} and {:.3}, together \
         {shared:.3} Mbit/s of IP bytes (expected 10)",
        kernel_label(),
        per_peer[0],
        per_peer[1],
        expected[0],
        expected[1],
        slope(&measured[1].0[0]),
        slope(&measured[1].0[1]),
    );
    for (got, want) in per_peer.iter().zip(&expected) {
        assert_rate("per peer", *got, *want, measured[0].1);
    }
    assert_rate("one bucket for two peers", shared, 10.0, measured[1].1);
}

#[test]
fn ingress_rate_holds_tcp_bulk_into_a_container() {
    let Some(c) = Container::start("ingress_rate_holds_tcp_bulk_into_a_container") else {
        return;
    };
    let (target, container) = (&c.target, &c.container);
    // A sender in this namespace streams into the container.
    let into = SocketAddr::from((container.server_addr, 7301));
    let runs = RunDir::new();
    let running = runs.start(&[
        "net",
        "--cgroup",
        &target.cgroup.path.display().to_string(),
        "--rate",
        "20mbit",
        "--direction",
        "ingress",
        "--quiet",
    ]);
    assert_eq!(
        root_qdisc(&container.host_if),
        "fq",
        "kchaos did not put fq on the host side of the container's veth"
    );
    let (got, netem) = beside_twin(20.0, 7311, || goodput(container, None, into));
    let (code, out) = running.terminate();
    assert_eq!(code, 143, "{out:?}");
    // The same stream without the fault: the limit was kchaos's, not the VM's.
    let free = goodput(
        container,
        None,
        SocketAddr::from((container.server_addr, 7302)),
    );
    let expected = payload_rate(20.0, into);
    println!(
        "[{}] --rate 20mbit --direction ingress into a container; without the fault {free:.1} \
         Mbit/s",
        kernel_label(),
    );
    assert_rate("ingress --rate 20mbit", got, expected, netem);
    // Twice the rate: far below what a veth carries (600 Mbit/s under TCG, README).
    assert!(
        free > 2.0 * 20.0,
        "unlimited, the stream got only {free:.1} Mbit/s"
    );
}

#[test]
fn a_scenario_ramps_reorder_from_0_to_100_percent() {
    let Some((lab, to, _srv)) = fq_lab("a_scenario_ramps_reorder_from_0_to_100_percent") else {
        return;
    };
    let file = integration_tests::net_ramp_scenario(
        &lab.cgroup.path,
        "reorder",
        4,
        "delay: 10ms, proto: udp",
        "reorder: {from: 0%, to: 100%, over: 2s, step: 2s}",
    );
    let report = integration_tests::TempFile::new("reorder-ramp.json");
    let runs = RunDir::new();
    let mut run = runs.spawn(&["run", file.s(), "--json", report.s(), "--accept-risk"]);
    // Echoes from the target once the fault is armed, through both steps (2 s at 0 %, 1.5 s of the
    // 2 s at 100 %): the only UDP the fault sees, so the kernel's counts are of these echoes. They
    // start after loading, which under emulation keeps both CPUs busy and makes undelayed echoes
    // late too.
    run.wait_for("fault.armed", std::time::Duration::from_secs(30));
    let v = udp_echo_report(
        Some(&lab.cgroup.path),
        None,
        to,
        1050,
        "300",
        &["--rtt", "--wait", "1s"],
    );
    let (code, out, err) = run.finish();
    assert_eq!(code, 0, "stdout {out:?}\nstderr {err}");
    let r = integration_tests::read_report(&report.0);
    let fault = &r["faults"][0];
    let steps = integration_tests::ramp_steps(fault);
    assert_eq!(steps, [0.0, 100.0], "{fault}");
    let c = &fault["counters"];
    let (delayed, reordered) = (
        c["egress.delayed"].as_u64().unwrap(),
        c["egress.reordered"].as_u64().unwrap(),
    );
    // The client, echo by echo in the order it sent them. The kernel delayed every datagram until
    // the step and none after it, so the first `delayed` are those it held.
    assert_eq!(v["received"], v["sent"], "echoes were lost: {v}");
    let numbers = |k: &str| -> Vec<u64> {
        v[k].as_array()
            .unwrap_or_else(|| panic!("no {k} in {v}"))
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let mut by_seq: Vec<(u64, u64)> = numbers("rtt_seq")
        .into_iter()
        .zip(numbers("rtt_us"))
        .collect();
    by_seq.sort_unstable();
    let rtt: Vec<f64> = by_seq.iter().map(|&(_, us)| us as f64).collect();
    let held = (delayed as usize).min(rtt.len());
    // Each held echo waited the whole 10 ms (fq never sends one early); the first that came back in
    // well under that is the step's (a stall of the emulated machine can make a quick one late, so
    // the client's boundary may trail the kernel's by a few); after it, datagrams went at once.
    let short_of_delay = rtt[..held].iter().filter(|&&r| r < 10.0 * MS).count();
    let first_quick = rtt.iter().position(|&r| r < 8.0 * MS).unwrap_or(rtt.len());
    let mut after = rtt[held..].to_vec();
    after.sort_by(f64::total_cmp);
    let after_median = if after.is_empty() {
        f64::INFINITY
    } else {
        quantile(&after, 0.5)
    };
    println!(
        "[{}] reorder ramped 0 -> 100% after 2 s of a 4 s fault: kernel delayed {delayed}, sent \
         {reordered} at once; the client's first quick echo was #{first_quick}, the median round \
         trip after the step {:.3} ms",
        kernel_label(),
        after_median / MS
    );
    // Two seconds at 0 % (every packet delayed), then 1.5 at 100 % (every packet at once).
    let share = reordered as f64 / (delayed + reordered).max(1) as f64;
    assert!(
        (0.3..=0.7).contains(&share),
        "sent {reordered} at once and delayed {delayed}"
    );
    assert_eq!(
        short_of_delay, 0,
        "{short_of_delay} of the {delayed} echoes the kernel delayed came back in under 10 ms"
    );
    assert!(
        (held..=held + 1 + held / 50).contains(&first_quick),
        "the kernel delayed {delayed} datagrams, the client's first quick echo was #{first_quick}"
    );
    assert!(
        after_median < 5.0 * MS,
        "after the step the median round trip was {:.3} ms",
        after_median / MS
    );
}

#[test]
fn a_scenario_ramps_the_rate_from_1_to_10_mbit() {
    let Some((lab, _to, _srv)) = fq_lab("a_scenario_ramps_the_rate_from_1_to_10_mbit") else {
        return;
    };
    let file = integration_tests::net_ramp_scenario(
        &lab.cgroup.path,
        "rate",
        7,
        "proto: tcp",
        "rate: {from: 1mbit, to: 10mbit, over: 3s, step: 3s}",
    );
    let report = integration_tests::TempFile::new("rate-ramp.json");
    let runs = RunDir::new();
    let bulk = SocketAddr::from((lab.server_addr, 7107));
    let sink = integration_tests::tcp_sink_log(&lab.netns, bulk).expect("the TCP sink");
    // The test's clock against the wall clock kchaos's report is in: an Instant and the unix ms
    // read beside it (within a millisecond: read again where the two reads straddled more).
    let (clock, clock_unix_ms) = loop {
        let before = std::time::Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let after = std::time::Instant::now();
        if after - before < std::time::Duration::from_millis(1) {
            break (before, unix.as_secs_f64() * 1e3);
        }
    };
    let at_unix_ms = |ms: f64| {
        let d = std::time::Duration::from_secs_f64((ms - clock_unix_ms).abs() / 1e3);
        if ms >= clock_unix_ms {
            clock + d
        } else {
            clock - d
        }
    };
    let mut run = runs.spawn(&["run", file.s(), "--json", report.s(), "--accept-risk"]);
    // TCP bulk from the target from the moment the fault is armed until after its end.
    run.wait_for("fault.armed", std::time::Duration::from_secs(30));
    let seen_armed = std::time::Instant::now();
    // Beside kchaos's stream, a netem twin at 1 Mbit/s carrying its own, stepped to 10 Mbit/s 3 s
    // after its stream began: the environment's pacing in the same seconds (give or take the
    // twin's making, which begins with kchaos's stream). Its step's instants: before tc changed
    // the rate and after tc returned.
    let twin = std::thread::scope(|s| {
        let twin = s.spawn(|| {
            let twin = NetemTwin::start(1.0)?;
            let begun = std::time::Instant::now();
            std::thread::scope(|s| {
                let step = s.spawn(|| {
                    std::thread::sleep(
                        (begun + std::time::Duration::from_secs(3))
                            .saturating_duration_since(std::time::Instant::now()),
                    );
                    let before = std::time::Instant::now();
                    twin.set(10.0);
                    (before, std::time::Instant::now())
                });
                let log = twin.stream(7117, "7500ms");
                Some((step.join().unwrap(), log))
            })
        });
        traffic(
            Some(&lab.cgroup.path),
            None,
            &["tcp-send", "--to", &bulk.to_string(), "--for", "7500ms"],
        );
        twin.join().unwrap()
    });
    let log = sink.join().unwrap().expect("the sink");
    let (code, out, err) = run.finish();
    assert_eq!(code, 0, "stdout {out:?}\nstderr {err}");
    let r = integration_tests::read_report(&report.0);
    let fault = &r["faults"][0];
    let steps = integration_tests::ramp_steps(fault);
    assert_eq!(steps, [1e6, 1e7], "{fault}");
    // When kchaos armed the fault and when it stepped the rate, from its report (ms since the run's
    // start, whose wall clock it gives), on the test's clock. Not when the test saw the fault armed:
    // under load that line is read late, and a window measured from it reaches past the step (issue
    // 27: 1.000 Mbit/s where 1 was set). The report's wall clock is whole ms, and the run reads its
    // start's wall clock just after its Instant: 10 ms off each edge covers both.
    let t0 = r["started_unix_ms"].as_f64().expect("started_unix_ms");
    let ms = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("no time in {fault}"));
    let armed = at_unix_ms(t0 + ms(&fault["start_ms"]));
    let stepped = at_unix_ms(t0 + ms(&fault["ramp_steps"][1]["t_ms"]));
    let secs = std::time::Duration::from_secs_f64;
    // The receiver's rate inside each step: from 0.5 s in (TCP's start) to the step, and from a
    // second after it (TCP grows into the faster link; its pacing rate follows the round trips the
    // slower one lengthened) to half a second before the end.
    let window = |log: &Arrivals, from, to| integration_tests::rate_between(log, from, to);
    let edge = secs(0.01);
    let slow = window(&log, armed + secs(0.5), stepped - edge);
    let fast = window(&log, stepped + secs(1.0), armed + secs(6.5) - edge);
    let (want_slow, want_fast) = (payload_rate(1.0, bulk), payload_rate(10.0, bulk));
    let per_second: Vec<String> = (0..7)
        .map(|s| {
            let from = armed + secs(s as f64);
            format!("{:.2}", window(&log, from, from + secs(1.0)))
        })
        .collect();
    println!(
        "[{}] rate ramped 1 -> 10 Mbit/s {:.3} s into a 7 s fault (seen armed {:.0} ms late): \
         second by second {}",
        kernel_label(),
        (stepped - armed).as_secs_f64(),
        (seen_armed.saturating_duration_since(armed)).as_secs_f64() * 1e3,
        per_second.join(" ")
    );
    // The twin's windows: the same spans around its own step (before tc ran for the slow one,
    // after it returned for the fast one).
    let span = (stepped - armed).as_secs_f64();
    let reference = twin.as_ref().map(|((before, after), log)| {
        (
            window(log, *before - secs(span - 0.5), *before),
            window(log, *after + secs(1.0), *after + secs(6.5 - span)),
        )
    });
    assert_rate(
        "at 1 Mbit/s",
        slow,
        want_slow,
        reference.map(|r| (r.0, NetemTwin::payload_rate(1.0))),
    );
    assert_rate(
        "at 10 Mbit/s",
        fast,
        want_fast,
        reference.map(|r| (r.1, NetemTwin::payload_rate(10.0))),
    );
}
