//! Fault kinds. Each is an owned value: attached when built, detached when dropped.

pub mod net;
pub mod peers;
pub mod syscall;
