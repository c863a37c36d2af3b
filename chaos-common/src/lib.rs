//! The one contract between the kchaos eBPF programs and the loader.
//!
//! Every type here is `#[repr(C)]`, `Copy` and free of pointers, so the same bytes mean the same thing
//! on both sides of a BPF map. Field order is chosen so no implicit padding appears (the verifier
//! rejects reads of uninitialised stack bytes, and padding would make map keys ambiguous).
#![no_std]

pub mod net;
pub mod syscall;

pub use net::*;
pub use syscall::*;
