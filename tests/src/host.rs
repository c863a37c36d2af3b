//! Where the tests run: which kernel, inside the emulated VM or not, as root or not; and saying SKIP
//! when a test can't run here.

/// Which kernel the results come from (the VM suite sets a label).
pub fn kernel_label() -> String {
    std::env::var("KCHAOS_KERNEL_LABEL").unwrap_or_else(|_| {
        format!(
            "host {}",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        )
    })
}

/// True inside the test VM (emulated, so much slower than the host).
pub fn in_vm() -> bool {
    std::env::var("KCHAOS_KERNEL_LABEL").is_ok_and(|l| l.starts_with("vm"))
}

/// Datagrams per second for UDP test traffic: under emulation the veth backlog itself overflows at
/// host rates, which would add losses no fault made.
pub fn udp_rate() -> &'static str {
    if in_vm() { "3000" } else { "20000" }
}

/// Prints why a test can't run here. Callers `return` right after: the output says SKIP, never PASS.
/// Written to the stderr handle itself, which libtest does not capture, so it shows for passing tests
/// (and `cargo xtask test` counts the test as skipped: keep the form `SKIP <test> [<kernel>]: <why>`).
pub fn skip(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIP {test} [{}]: {why}", kernel_label());
}

/// True when running as root; otherwise prints SKIP.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip(
            test,
            "needs root (loads eBPF programs, makes namespaces and cgroups)",
        );
    }
    root
}
