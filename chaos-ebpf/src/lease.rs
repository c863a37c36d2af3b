//! The lease check without a clock call on most packets.
//!
//! Every armed fault carries a deadline (CLOCK_MONOTONIC ns) that its loader keeps pushing forward;
//! a program checks it before doing anything. Reading a clock is a helper call, which on a per-packet
//! path costs more than the rest of the common path together. The coarse clock only moves on a timer
//! tick, and jiffies count those ticks and can be read without a call (the verifier inlines
//! `bpf_jiffies64` into one load). So each CPU remembers the tick at which it last found the lease
//! valid, and for which deadline: until the tick moves on or the loader writes a new deadline, the
//! answer is the same, and the clock is read again only once a tick per CPU.

use aya_ebpf::{
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::PerCpuArray,
};

/// Slots of [`NET_LEASE`]: one per program that checks a lease this way, so a program interrupting
/// another on the same CPU (ingress in softirq over egress) never writes the other's memory.
pub const SLOT_CGROUP_EGRESS: u32 = 0;
pub const SLOT_CGROUP_INGRESS: u32 = 1;
pub const SLOT_TC_EGRESS: u32 = 2;
const SLOTS: u32 = 3;

/// A CPU's last finding: at tick `jiffies`, the lease with deadline `deadline_ns` held.
#[repr(C)]
pub struct LeaseSeen {
    jiffies: u64,
    deadline_ns: u64,
}

#[map]
static NET_LEASE: PerCpuArray<LeaseSeen> = PerCpuArray::with_max_entries(SLOTS, 0);

/// True while `deadline_ns` is ahead of the coarse clock. It may answer true for up to two ticks
/// after the deadline (the coarse clock's tick, and the instant within a tick when jiffies have moved
/// on but the clock not yet), as the coarse clock alone may for one.
#[inline(always)]
pub fn holds(deadline_ns: u64, slot: u32) -> bool {
    // SAFETY: a helper without arguments (inlined by the verifier into a load of jiffies_64).
    let tick = unsafe { bpf_jiffies64() };
    let Some(seen) = NET_LEASE.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's slot of our own map; only this program writes it, and the verifier's
    // migration-free run means no other CPU does.
    let seen = unsafe { &mut *seen };
    if seen.jiffies == tick && seen.deadline_ns == deadline_ns {
        return true;
    }
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_coarse_ns() } >= deadline_ns {
        return false;
    }
    seen.jiffies = tick;
    seen.deadline_ns = deadline_ns;
    true
}
