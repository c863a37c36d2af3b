//! Network faults that touch packet data: duplicate and corrupt what a target sends.
//!
//! cgroup_skb may not write packet data, so these run as a tcx egress program on the devices of the
//! target's network namespace. A TC program runs for every packet on its device, so its first
//! question is whether the packet's socket belongs to a target cgroup: one ancestor-id helper and one
//! hash lookup per cgroup level the targets span. A packet without a socket (forwarded, or our own
//! duplicate) is never a target.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_skb_ancestor_cgroup_id},
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use chaos_common::{
    DIR_EGRESS, DIR_INGRESS, FEAT_CORRUPT, FEAT_DELAY, FEAT_DUPLICATE, FEAT_FILTER, FEAT_RATE,
    FEAT_RATE_PER_PEER, FEAT_TC_COUNTS_SEEN, INLINE_TARGETS, MAX_TARGET_LEVELS, MangleFault,
    NetConfig,
};

use crate::{
    lease,
    net::{NET_CONFIG, NET_COUNTERS, delay_ns, matches, pace},
    packet,
};

/// tcx: go on to the next program on the device (or the qdisc), so ours never cuts a chain short.
const TCX_NEXT: i32 = TC_ACT_UNSPEC;

/// `FEAT_*` bits of the TC program, set by the loader (read-only, like the cgroup programs').
#[unsafe(no_mangle)]
static NET_TC_FEATURES: u64 = 0;

/// Target cgroup ids (value unused) when there are more than `INLINE_TARGETS`. The loader sizes it.
#[map]
static NET_TARGETS: HashMap<u64, u8> = HashMap::with_max_entries(1, 0);

#[classifier]
pub fn net_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: a read-only global of this object, set before load.
    let features = unsafe { core::ptr::read_volatile(&NET_TC_FEATURES) };
    let Some(cfg) = NET_CONFIG.get(0) else {
        return TCX_NEXT;
    };
    if !from_target(&ctx, cfg) {
        return TCX_NEXT;
    }
    if !lease::holds(cfg.deadline_ns, lease::SLOT_TC_EGRESS) {
        return TCX_NEXT;
    }
    let Some(counters) = NET_COUNTERS.get_ptr_mut(DIR_EGRESS) else {
        return TCX_NEXT;
    };
    // SAFETY: a per-CPU slot of this object's own map; nothing else writes it on this CPU now (the
    // cgroup egress program runs before the packet reaches a device, not during this run).
    let counters = unsafe { &mut *counters };
    if features & FEAT_TC_COUNTS_SEEN != 0 {
        counters.seen += 1;
    }
    // Headers are read only for a filter, or for a packet about to be corrupted; the random draws
    // come after the filter, so a packet it turns away costs none.
    let mut payload = 0u32;
    if features & FEAT_FILTER != 0 {
        let Some(peer) = headers(&ctx, features) else {
            return TCX_NEXT;
        };
        // (A partitioned peer's packets never get here: the cgroup egress program dropped them.)
        if !matches(cfg, &peer) {
            return TCX_NEXT;
        }
        payload = peer.payload;
    }
    if features & FEAT_TC_COUNTS_SEEN != 0 {
        counters.matched += 1;
    }
    let mangle = &cfg.mangle;
    let duplicate = features & FEAT_DUPLICATE != 0 && crate::chance(mangle.duplicate_threshold);
    let corrupt = features & FEAT_CORRUPT != 0 && crate::chance(mangle.corrupt_threshold);
    if corrupt && features & FEAT_FILTER == 0 {
        payload = headers(&ctx, features).map_or(0, |p| p.payload);
    }
    // As netem does: the copy leaves first, unharmed; then the original may be corrupted. The copy
    // comes back through this program without a socket, so it is never copied again.
    // SAFETY: the context pointer is valid for the whole run; ifindex is the device it runs on.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if duplicate && ctx.clone_redirect(ifindex, 0).is_ok() {
        counters.duplicated += 1;
    }
    if corrupt && flip_payload_bit(&ctx, payload) {
        counters.corrupted += 1;
    }
    TCX_NEXT
}

/// The packet's headers, read past whatever link header the device has; with `FEAT_CORRUPT`, where
/// its payload starts too.
#[inline(always)]
fn headers(ctx: &TcContext, features: u64) -> Option<packet::Peer> {
    packet::tc_network_offset(&ctx.skb)
        .and_then(|l3| packet::parse(&ctx.skb, true, l3, features & FEAT_CORRUPT != 0))
}

/// True when the socket that sent the packet is in a target cgroup or below one.
#[inline(always)]
fn from_target(ctx: &TcContext, cfg: &NetConfig) -> bool {
    let m = &cfg.mangle;
    let mut i = 0;
    while i < MAX_TARGET_LEVELS {
        let level = m.target_min_level + i;
        if level > m.target_max_level {
            return false;
        }
        // SAFETY: the helper reads the cgroup of the packet's socket; 0 without one, or when the
        // cgroup is shallower than `level` (so deeper levels can't match either).
        let id = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, level as i32) };
        if id == 0 {
            return false;
        }
        if is_target(m, id) {
            return true;
        }
        i += 1;
    }
    false
}

/// One cgroup id against the targets: four compares (no branch between them) for up to
/// `INLINE_TARGETS`, a hash lookup beyond.
#[inline(always)]
fn is_target(m: &MangleFault, id: u64) -> bool {
    if m.n_targets as usize <= INLINE_TARGETS {
        let t = &m.target_ids;
        (id == t[0]) | (id == t[1]) | (id == t[2]) | (id == t[3])
    } else {
        // SAFETY: a lookup in our own map; the value is not used.
        unsafe { NET_TARGETS.get(&id) }.is_some()
    }
}

/// `FEAT_*` bits of the ingress program (`FEAT_DELAY`, `FEAT_RATE`, `FEAT_RATE_PER_PEER`,
/// `FEAT_FILTER`, `FEAT_TC_COUNTS_SEEN`).
#[unsafe(no_mangle)]
static NET_TC_INGRESS_FEATURES: u64 = 0;

/// Delay and rate on the way into a target's own network namespace: linked to the egress of the
/// host-side end of its veth, which carries nothing but what enters that namespace, whose processes
/// are all targets (the loader checked). So no target lookup: every packet here is the target's.
#[classifier]
pub fn net_tc_ingress(ctx: TcContext) -> i32 {
    // SAFETY: a read-only global of this object, set before load.
    let features = unsafe { core::ptr::read_volatile(&NET_TC_INGRESS_FEATURES) };
    let Some(cfg) = NET_CONFIG.get(0) else {
        return TCX_NEXT;
    };
    // SAFETY: a helper without arguments; the delay and the rate need the precise clock anyway.
    let now = unsafe { bpf_ktime_get_ns() };
    if now >= cfg.deadline_ns {
        return TCX_NEXT;
    }
    let Some(counters) = NET_COUNTERS.get_ptr_mut(DIR_INGRESS) else {
        return TCX_NEXT;
    };
    // SAFETY: a per-CPU slot of this object's own map; the cgroup ingress program runs for this
    // packet later, inside the namespace, not during this run.
    let counters = unsafe { &mut *counters };
    if features & FEAT_TC_COUNTS_SEEN != 0 {
        counters.seen += 1;
    }
    // The rate counts IP bytes, so it needs where they start; the headers are read from there.
    let mut l3 = 0;
    if features & (FEAT_FILTER | FEAT_RATE) != 0 {
        let Some(offset) = packet::tc_network_offset(&ctx.skb) else {
            return TCX_NEXT;
        };
        l3 = offset;
    }
    // The peer is the packet's source: it comes from there into the target.
    if features & FEAT_FILTER != 0 {
        let Some(peer) = packet::parse(&ctx.skb, false, l3, false) else {
            return TCX_NEXT;
        };
        if !matches(cfg, &peer) {
            return TCX_NEXT;
        }
    }
    if features & FEAT_TC_COUNTS_SEEN != 0 {
        counters.matched += 1;
    }
    let fault = &cfg.ingress;
    if features & FEAT_DELAY != 0 && fault.delay_ns != 0 {
        // Uniform within ±jitter: the distribution table and correlation are the egress delay's.
        let delay = delay_ns(fault, &cfg.delay_shape, 0);
        let skb = ctx.skb.skb;
        // SAFETY: the kernel holds skb for the run; tstamp is writable from TC.
        unsafe { (*skb).tstamp = (*skb).tstamp.max(now) + delay };
        counters.delayed += 1;
        counters.delay_ns_total += delay;
    }
    if features & FEAT_RATE != 0
        && !pace(
            &ctx.skb,
            l3,
            DIR_INGRESS,
            features & FEAT_RATE_PER_PEER != 0,
            &cfg.rate,
            now,
            counters,
        )
    {
        return TC_ACT_SHOT;
    }
    TCX_NEXT
}

/// Not a fault: the floor `cargo xtask bench net` measures beside `net_tc_egress` (what a run of
/// any tcx program costs, bpf_stats' own clock reads included).
#[classifier]
pub fn noop_tc(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

/// Flips one random bit of the bytes from `payload` to the end of the packet; false when there are
/// none. Checksums are left as they are, as netem leaves them.
#[inline(always)]
fn flip_payload_bit(ctx: &TcContext, payload: u32) -> bool {
    let len = ctx.len();
    if payload == 0 || payload >= len {
        return false;
    }
    // SAFETY: a helper without arguments.
    let draw = unsafe { bpf_get_prandom_u32() } as u64;
    let offset = payload as u64 + ((draw * (len - payload) as u64) >> 32);
    let Ok(byte) = ctx.load::<u8>(offset as usize) else {
        return false;
    };
    // The draw's top bits chose the byte; its low bits choose the bit.
    let flipped = byte ^ (1u8 << (draw & 7));
    ctx.store(offset as usize, &flipped, 0).is_ok()
}
