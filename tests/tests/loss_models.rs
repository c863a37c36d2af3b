//! Loss with memory (`--drop-correlation`, `--loss-model gemodel:…|4state:…`), decided in the kernel:
//! a real client counts what came back of 60k numbered UDP datagrams, and both the loss rate and the
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

/// 60k: the bounds `chain_bounds` derives for the loss rate stay within 1.2 points (40k gave 1.43 for
/// gemodel:5,40).
const PACKETS: u64 = 60_000;

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

/// How far the loss rate and the mean burst length of `n` packets may stray from `theory`'s at
/// alpha 1e-6: (loss rate, mean burst) half-widths.
///
/// The packet process is the Markov chain over (state, lost?) pairs `theory` describes. The loss
/// count and the burst count (kept -> lost steps) are additive functionals of it, so by the Markov
/// chain central limit theorem (a finite, aperiodic chain mixes geometrically) their sums over n
/// packets are nearly normal, with covariance n * Sigma, Sigma_ab = gamma_ab(0) +
/// sum_k>=1 (gamma_ab(k) + gamma_ba(k)), computed here from the chain's own transition matrix.
/// The mean burst length is their ratio (its deviation by the delta method). Each half-width is
/// normal_z(1e-6) = 4.89 of these deviations. The kernel's chain starts in state 0 rather than
/// the stationary mix: a bias of a few packets over the chain's mixing time, below 1e-3 of either.
// Matrix arithmetic over state indices reads best with indices.
#[allow(clippy::needless_range_loop)]
fn chain_bounds(chain: &chaos_common::LossChain, n: u64) -> (f64, f64) {
    const S: usize = chaos_common::LOSS_STATES;
    const X: usize = 2 * S;
    let frac = |x: u64| x.min(chaos_common::ALWAYS) as f64 / chaos_common::ALWAYS as f64;
    // The state chain, read from the thresholds as the kernel reads them.
    let mut step = [[0.0f64; S]; S];
    for (s, row) in step.iter_mut().enumerate() {
        let mut below = 0.0;
        for (t, p) in row.iter_mut().enumerate() {
            let upto = if t < S - 1 {
                frac(chain.next[s][t])
            } else {
                1.0
            };
            *p = (upto - below).max(0.0);
            below = below.max(upto);
        }
    }
    let lose: Vec<f64> = chain.lose.iter().map(|&l| frac(l)).collect();
    // The pair chain: x = 2 * state + lost.
    let mut m = [[0.0f64; X]; X];
    for (x, row) in m.iter_mut().enumerate() {
        for t in 0..S {
            row[2 * t + 1] = step[x / 2][t] * lose[t];
            row[2 * t] = step[x / 2][t] * (1.0 - lose[t]);
        }
    }
    // Its stationary distribution (a lazy walk: the same fixed point, no oscillation).
    let mut pi = [1.0 / X as f64; X];
    for _ in 0..20_000 {
        let mut next = [0.0; X];
        for x in 0..X {
            next[x] += pi[x] / 2.0;
            for y in 0..X {
                next[y] += pi[x] / 2.0 * m[x][y];
            }
        }
        pi = next;
    }
    // f over consecutive pairs (x, y): [lost at y, a burst starts at y (x kept, y lost)].
    let f = |x: usize, y: usize| [(y & 1) as f64, (!x & y & 1) as f64];
    let weight = |x: usize, y: usize| pi[x] * m[x][y];
    let mut mu = [0.0; 2];
    for x in 0..X {
        for y in 0..X {
            for a in 0..2 {
                mu[a] += weight(x, y) * f(x, y)[a];
            }
        }
    }
    // g_k(x, y) = E[f(Z_k) | Z_0 = (x, y)], stepped one packet at a time; gamma(k) = E[f(Z_0)
    // g_k(Z_0)^T] - mu mu^T.
    let mut g = [[[0.0f64; 2]; X]; X];
    for x in 0..X {
        for y in 0..X {
            g[x][y] = f(x, y);
        }
    }
    let mut sigma = [[0.0f64; 2]; 2];
    for k in 0..100_000 {
        let mut gamma = [[0.0f64; 2]; 2];
        for x in 0..X {
            for y in 0..X {
                for a in 0..2 {
                    for b in 0..2 {
                        gamma[a][b] += weight(x, y) * f(x, y)[a] * g[x][y][b];
                    }
                }
            }
        }
        let mut largest: f64 = 0.0;
        for a in 0..2 {
            for b in 0..2 {
                gamma[a][b] -= mu[a] * mu[b];
                largest = largest.max(gamma[a][b].abs());
            }
        }
        for a in 0..2 {
            for b in 0..2 {
                sigma[a][b] += if k == 0 {
                    gamma[a][b]
                } else {
                    gamma[a][b] + gamma[b][a]
                };
            }
        }
        if k > 0 && largest < 1e-15 {
            break;
        }
        let mut next = [[[0.0f64; 2]; X]; X];
        for x in 0..X {
            for y in 0..X {
                for w in 0..X {
                    for b in 0..2 {
                        next[x][y][b] += m[y][w] * g[y][w][b];
                    }
                }
            }
        }
        g = next;
    }
    let (n, z) = (
        n as f64,
        integration_tests::stats::normal_z(integration_tests::stats::ALPHA),
    );
    let (l, b) = (mu[0], mu[1]);
    let loss_sd = (sigma[0][0] / n).sqrt();
    let burst_var = (sigma[0][0] / (b * b) - 2.0 * l * sigma[0][1] / (b * b * b)
        + l * l * sigma[1][1] / (b * b * b * b))
        / n;
    (z * loss_sd, z * burst_var.max(0.0).sqrt())
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
    // The kernel's drop count is the chain's own (the client's adds what emulation loses, checked
    // below); the mean burst only the client sees.
    let (loss_bound, burst_bound) = chain_bounds(&model.chain(), sent);
    let kernel_loss = dropped as f64 / sent as f64;
    println!(
        "{label}: bounds at alpha {}: loss ±{:.2} pp, mean burst ±{burst_bound:.3}",
        integration_tests::stats::ALPHA,
        loss_bound * 100.0
    );
    assert!(
        (kernel_loss - th.loss).abs() <= loss_bound,
        "{label}: loss {:.2}% is not within {:.2} pp of {:.2}% (Markov chain CLT, alpha {})",
        kernel_loss * 100.0,
        loss_bound * 100.0,
        th.loss * 100.0,
        integration_tests::stats::ALPHA
    );
    assert!(
        (burst - th.mean_burst).abs() <= burst_bound,
        "{label}: mean burst {burst:.3} is not within {burst_bound:.3} of {:.3} (Markov chain \
         CLT, alpha {})",
        th.mean_burst,
        integration_tests::stats::ALPHA
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
