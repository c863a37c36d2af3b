//! kchaos: kernel-level fault injection held to one cgroup. The `kchaos` binary is a thin CLI over
//! these modules; the demo, the tests and scenarios use them too.

pub mod bounded_read;
pub mod command;
pub mod control;
pub mod detach;
pub mod engine;
pub mod error;
pub mod experiment;
pub mod kind;
pub mod kinds;
pub mod lab;
pub mod listed;
pub mod live;
pub mod metrics;
pub mod output;
pub mod probe;
pub mod progress;
pub mod report;
pub mod status;
pub mod stop;
pub mod units;

/// Why most commands need root.
pub const ROOT_BECAUSE: &str =
    "it loads eBPF programs, attaches them to cgroups and acts on processes of other users";

/// Fails with bad input unless running as root; `because` says what needs it.
pub fn require_root(what: &str, because: &str) -> Result<(), error::BadInput> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(error::BadInput::new(format!(
            "{what} needs root ({because}): run it with sudo"
        )));
    }
    Ok(())
}
