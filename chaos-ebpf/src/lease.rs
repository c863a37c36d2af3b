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
/// another on the same CPU (ingress in softirq over egress) writes the other's memory only rarely:
/// the same program can still nest over itself (a softirq sending a TCP ACK through the egress hook
/// while a process's egress run is between its two stores); see [`holds`].
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
///
/// A run of the same program nesting over this one (softirq over process context, on this CPU)
/// can interleave its two stores with ours and leave a pair no single run wrote: its tick with our
/// deadline, or ours with its. Both runs read the same fault's deadline, so the pair is one a run
/// could have written unless the loader renewed the lease between the two reads; the deadline a
/// renewal replaces is still most of the lease (3 s, renewed on the loader's 50 ms tick) ahead, so
/// the mixed pair's claim ("this deadline held at this tick") is true then as well. The slot is only touched through raw
/// pointers with volatile accesses, never a reference, because of that nesting.
#[inline(always)]
pub fn holds(deadline_ns: u64, slot: u32) -> bool {
    // SAFETY: a helper without arguments (inlined by the verifier into a load of jiffies_64).
    let tick = unsafe { bpf_jiffies64() };
    let Some(seen) = NET_LEASE.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's slot of our own map (a run is never migrated); only raw pointers to its
    // fields, read and written volatile, as a nested run on this CPU may write them (see above).
    let (seen_tick, seen_deadline) = unsafe {
        (
            core::ptr::addr_of_mut!((*seen).jiffies),
            core::ptr::addr_of_mut!((*seen).deadline_ns),
        )
    };
    // SAFETY: see above.
    let (last_tick, last_deadline) = unsafe {
        (
            core::ptr::read_volatile(seen_tick),
            core::ptr::read_volatile(seen_deadline),
        )
    };
    if last_tick == tick && last_deadline == deadline_ns {
        return true;
    }
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_coarse_ns() } >= deadline_ns {
        return false;
    }
    // SAFETY: see above.
    unsafe {
        core::ptr::write_volatile(seen_tick, tick);
        core::ptr::write_volatile(seen_deadline, deadline_ns);
    }
    true
}
