//! The fault kinds, one folder each: what the kind is (its `Kind` impl: flags, YAML, review, prepare)
//! and what it does while it runs (its `Active` impl). See `crate::kind` for the interface and the
//! registry.

pub mod kill;
pub mod net;
pub mod pause;
pub mod stress;
pub mod syscall;
pub mod time;
