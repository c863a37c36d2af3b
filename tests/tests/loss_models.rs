//! Loss with memory (`--drop-correlation`, `--loss-model gemodel:…|4state:…`), decided in the kernel:
//! a real client counts what came back of 40k numbered UDP datagrams, and both the loss rate and the
//! mean burst length (runs of missing sequence numbers) match what the model's chain implies
//! (`chaos_userspace::kinds::net::loss::theory`, whose comment states the formulas). A process outside
//! the cgroup on the same veth loses nothing, and nothing stays attached afterwards.

use std::{net::SocketAddr, path::Path};

use chaos_userspace::kinds::net::loss::{LossModel, theory};
use integration_tests::{
    RunDir, TempFile, attach_type, cgroup_programs, lab, root_or_skip, tag, traffic, udp_echo,
    udp_rate,
};
use lab::{EchoServer, Lab};

const PACKETS: u64 = 40_000;

/// Runs `kchaos net --cgroup LAB ARGS…` while the lab cgroup sends PACKETS datagrams, then (fault
/// still armed) a process outside the cgroup sends 5,000 to the same echo: (loss rate, mean burst
/// length, the kernel's drop count, datagrams sent, (outside sent, outside received)).
fn measure(lab: &Lab, to: SocketAddr, args: &[&str]) -> (f64, f64, u64, u64, (u64, u64)) {
    let report = TempFile::new("loss.json");
    let runs = RunDir::new();
    let cg = lab.cgroup.path.display().to_string();
    let mut argv = vec!["net", "--cgroup", &cg];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--json", report.s(), "--quiet"]);
    let running = runs.start(&argv);
    let v = traffic(
        Some(&lab.cgroup.path),
        None,
        &[
            "udp-echo",
            "--to",
            &to.to_string(),
            "--count",
            &PACKETS.to_string(),
            "--rate",
            udp_rate(),
        ],
    );
    let outside = udp_echo(None, None, to, 5_000);
    let (code, lines) = running.terminate();
    assert_eq!(code, 143, "kchaos net output: {lines:?}");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no '{k}' in {v}"));
    let (sent, received, bursts) = (n("sent"), n("received"), n("loss_bursts"));
    let lost = sent - received;
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report.0).expect("report")).expect("json");
    // On ingress the echoes are what the chain drops, on their way back into the target.
    let counter = if args.contains(&"ingress") {
        "ingress.dropped"
    } else {
        "egress.dropped"
    };
    let dropped = r["faults"][0]["counters"][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no {counter} in {r}"));
    (
        lost as f64 / sent as f64,
        lost as f64 / bursts.max(1) as f64,
        dropped,
        sent,
        outside,
    )
}

fn check(label: &str, args: &[&str], model: LossModel) {
    check_over(label, args, model, false)
}

/// As `check`, to the lab server's IPv6 address when `ipv6`.
fn check_over(label: &str, args: &[&str], model: LossModel, ipv6: bool) {
    let lab = Lab::create(&tag("l")).unwrap();
    let to = if ipv6 {
        SocketAddr::from((lab.add_ipv6().unwrap().1, 7000))
    } else {
        SocketAddr::from((lab.server_addr, 7000))
    };
    let _srv = EchoServer::start(&lab.netns, to).unwrap();
    let th = theory(&model.chain());
    let (loss, burst, dropped, sent, (out_sent, out_received)) = measure(&lab, to, args);
    println!(
        "{label}: loss {:.2}% (theory {:.2}%), mean burst {burst:.3} (theory {:.3}); kernel dropped \
         {dropped} of {sent}; outside {out_received}/{out_sent}",
        loss * 100.0,
        th.loss * 100.0,
        th.mean_burst
    );
    // Over 40k packets the loss rate's standard error is below 0.3 pp for these models (bursts make
    // it larger than a coin's: the variance grows by (1+λ)/(1-λ), λ the chain's lag-1 correlation),
    // and the mean burst's below 3 %: allow about four of each.
    assert!(
        (loss - th.loss).abs() <= 0.012,
        "{label}: loss {:.2}% is not within 1.2 pp of {:.2}%",
        loss * 100.0,
        th.loss * 100.0
    );
    assert!(
        (burst - th.mean_burst).abs() <= 0.12 * th.mean_burst,
        "{label}: mean burst {burst:.3} is not within 12% of {:.3}",
        th.mean_burst
    );
    // Every loss the client saw is one the kernel made (only one direction is faulted).
    let allowed = if integration_tests::in_vm() {
        sent / 400
    } else {
        0
    };
    let lost = (loss * sent as f64).round() as u64;
    assert!(
        lost.abs_diff(dropped) <= allowed,
        "{label}: client lost {lost}, kernel dropped {dropped}"
    );
    assert_eq!(
        out_received, out_sent,
        "{label}: a process outside the cgroup lost packets"
    );
    assert_no_programs(&lab.cgroup.path);
}

fn assert_no_programs(cg: &Path) {
    let mut ids = cgroup_programs(cg, attach_type::INET_EGRESS);
    ids.extend(cgroup_programs(cg, attach_type::INET_INGRESS));
    assert!(ids.is_empty(), "programs left on the cgroup: {ids:?}");
}

#[test]
fn correlated_drop_keeps_the_rate_and_makes_bursts() {
    if !root_or_skip("correlated_drop_keeps_the_rate_and_makes_bursts") {
        return;
    }
    check(
        "drop 10 correlation 50",
        &["--percent", "10", "--drop-correlation", "50"],
        LossModel::Correlated {
            percent: 10.0,
            correlation: 50.0,
        },
    );
}

#[test]
fn gilbert_elliott_on_ingress_loses_what_the_target_receives() {
    if !root_or_skip("gilbert_elliott_on_ingress_loses_what_the_target_receives") {
        return;
    }
    let spec = "gemodel:5,40";
    check(
        &format!("{spec} on ingress"),
        &["--loss-model", spec, "--direction", "ingress"],
        LossModel::parse(spec).unwrap(),
    );
}

#[test]
fn gilbert_elliott_over_ipv6() {
    if !root_or_skip("gilbert_elliott_over_ipv6") {
        return;
    }
    let spec = "gemodel:5,40";
    check_over(
        &format!("{spec} over IPv6"),
        &["--loss-model", spec],
        LossModel::parse(spec).unwrap(),
        true,
    );
}

#[test]
fn gilbert_elliott_rate_and_bursts_match_theory() {
    if !root_or_skip("gilbert_elliott_rate_and_bursts_match_theory") {
        return;
    }
    let spec = "gemodel:5,40";
    check(
        spec,
        &["--loss-model", spec],
        LossModel::parse(spec).unwrap(),
    );
}

#[test]
fn gilbert_elliott_with_partial_loss_in_each_state() {
    if !root_or_skip("gilbert_elliott_with_partial_loss_in_each_state") {
        return;
    }
    let spec = "gemodel:4,30,80,1";
    check(
        spec,
        &["--loss-model", spec],
        LossModel::parse(spec).unwrap(),
    );
}

#[test]
fn four_state_rate_and_bursts_match_theory() {
    if !root_or_skip("four_state_rate_and_bursts_match_theory") {
        return;
    }
    let spec = "4state:3,40,20,30,1";
    check(
        spec,
        &["--loss-model", spec],
        LossModel::parse(spec).unwrap(),
    );
}
