//! kchaos: kernel-level fault injection held to one cgroup. The `kchaos` binary is a thin CLI over
//! these modules; the demo, the tests and scenarios use them too.

pub mod bounded_read;
pub mod command;
pub mod engine;
pub mod error;
pub mod experiment;
pub mod journal;
pub mod kind;
pub mod kinds;
pub mod lab;
pub mod output;
pub mod probe;
pub mod stop;
pub mod units;

/// Fails with bad input unless running as root.
pub fn require_root(what: &str) -> Result<(), error::BadInput> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(error::BadInput::new(format!(
            "{what} needs root (it loads eBPF programs and attaches them to cgroups): run it with sudo"
        )));
    }
    Ok(())
}
