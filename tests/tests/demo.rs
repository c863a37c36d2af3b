//! `kchaos demo`, what the README's first command (`cargo xtask run`) runs: it must end with exit 0
//! and show the fault it promises (30% loss for the client in the target cgroup, none outside, the
//! partition total for its port only), and leave no lab behind.

use integration_tests::{root_or_skip, run_text};

/// The loss column of the demo's table row that starts with `phase` and names `client`.
fn loss(out: &str, phase: &str, client: &str) -> f64 {
    let row = out
        .lines()
        .find(|l| l.starts_with(phase) && l.contains(client))
        .unwrap_or_else(|| panic!("no row '{phase}' '{client}' in:\n{out}"));
    // After the phase's own name, which may hold a percentage too ("drop 30%").
    row[phase.len()..]
        .split_whitespace()
        .find_map(|w| w.strip_suffix('%').and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no loss in '{row}'"))
}

#[test]
fn the_demo_ends_well_and_shows_loss_inside_the_target_only() {
    if !root_or_skip("the_demo_ends_well_and_shows_loss_inside_the_target_only") {
        return;
    }
    let (code, out, err) = run_text(&["demo"]);
    let text = format!("{out}{err}");
    assert_eq!(code, 0, "{text}");
    let dropped = loss(&text, "drop 30%", "A (target) -> :7000");
    // 5000 datagrams each dropped with p = 0.3: the count is Binomial(5000, 0.3), sd = sqrt(5000 ×
    // 0.3 × 0.7) = 32.4 datagrams = 0.65 points; at alpha = 1e-6 (two-sided z = 4.89) the loss lies
    // within 30 ± 3.2 %, inside the 25..=35 asserted (exactly 1e-6 or less, so never a false red).
    assert!((25.0..=35.0).contains(&dropped), "{dropped}%\n{text}");
    assert_eq!(loss(&text, "drop 30%", "B (outside)"), 0.0, "{text}");
    assert_eq!(
        loss(&text, "partition :7000", "A (target) -> :7000"),
        100.0,
        "{text}"
    );
    assert_eq!(
        loss(&text, "partition :7000", "A (target) -> :7001"),
        0.0,
        "{text}"
    );
    assert!(
        !std::fs::read_to_string("/proc/net/dev")
            .unwrap_or_default()
            .contains("kcd"),
        "the demo left its veth"
    );
}
