//! Network faults at the target cgroup's sockets: random drop, EDT delay, partition.
//!
//! cgroup_skb runs where the socket (and so the cgroup) is known in both directions, in whatever netns
//! the socket lives: at egress before the packet reaches any device, at ingress after the socket lookup.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{cgroup_skb, map},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{SkBuffContext, sk_buff::SkBuff},
};
use chaos_common::{
    DELAY_STATE_LAST_DRAW, DELAY_STATE_SINCE_REORDER, DELAY_TABLE_SHIFT, DELAY_TABLE_SIZE,
    DIR_COUNT, DIR_EGRESS, DIR_INGRESS, DelayShape, DirectionFault, FEAT_DELAY,
    FEAT_DELAY_CORRELATION, FEAT_DELAY_TABLE, FEAT_DROP, FEAT_FILTER, FEAT_LOSS_CHAIN, FEAT_RATE,
    FEAT_RATE_PER_PEER, FEAT_REORDER, FILTER_DST, FILTER_PARTITION, LossChain, MAX_RATE_PEERS,
    NetConfig, NetCounters, PEER_KEY_PORT_BITS, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PeerKey,
    RATE_SHIFT, RateLimit, RatePeerKey,
};

use crate::{
    lease,
    packet::{self, Peer},
};

/// Egress verdicts of an egress-typed cgroup_skb program: bit 0 = let it through, bit 1 = congestion
/// notification. 2 drops it while sendmsg() reports success, as a lossy link would.
const EGRESS_PASS: i32 = 1;
const EGRESS_DROP_SILENTLY: i32 = 2;
const INGRESS_PASS: i32 = 1;
const INGRESS_DROP: i32 = 0;

/// Peer sets hold at most this many CIDR[:PORT] entries each.
pub const MAX_PEERS: u32 = 1024;

/// `FEAT_*` bits of the egress program, set by the loader (read-only: the verifier drops the code of
/// every feature left out, so an unconfigured fault costs nothing per packet).
#[unsafe(no_mangle)]
static NET_EGRESS_FEATURES: u64 = 0;
/// `FEAT_*` bits of the ingress program.
#[unsafe(no_mangle)]
static NET_INGRESS_FEATURES: u64 = 0;

#[map]
pub(crate) static NET_CONFIG: Array<NetConfig> = Array::with_max_entries(1, 0);

/// The current state of each direction's loss chain. One shared value (not per CPU): the target's
/// packets form one sequence, as they do through netem's one qdisc. Concurrent senders may race on
/// it; each step still moves from a state the chain was in.
#[map]
static NET_LOSS_STATE: Array<u32> = Array::with_max_entries(DIR_COUNT, 0);

/// The delay distribution as an inverse CDF: entry i is the standard score of quantile
/// (i + 0.5) / 4096, times 2^16. The loader fills it (and sizes it to 1 when unused).
#[map]
static NET_DELAY_TABLE: Array<i32> = Array::with_max_entries(DELAY_TABLE_SIZE, 0);

/// `DELAY_STATE_*`: the last correlated draw, and the packets delayed since one was reordered. Shared
/// by all CPUs like the loss state: one sequence, as through netem's qdisc.
#[map]
static NET_DELAY_STATE: Array<u32> = Array::with_max_entries(2, 0);

/// The rate limit's bucket of each direction: the virtual time (CLOCK_MONOTONIC ns) at which the
/// link finishes what it was given. One value for all the target's packets, as one link would carry
/// them.
#[map]
static NET_RATE_STATE: Array<u64> = Array::with_max_entries(DIR_COUNT, 0);

/// With `FEAT_RATE_PER_PEER`: each peer's bucket, as `NET_RATE_STATE` holds the aggregate's. LRU: a
/// peer not heard from for long is forgotten, and starts a fresh bucket. The loader sizes it to 1
/// when unused.
#[map]
static NET_RATE_PEERS: LruHashMap<RatePeerKey, u64> =
    LruHashMap::with_max_entries(MAX_RATE_PEERS, 0);

#[map]
pub(crate) static NET_COUNTERS: PerCpuArray<NetCounters> =
    PerCpuArray::with_max_entries(DIR_COUNT, 0);

/// Peers that `--dst` narrows matching packets to.
#[map]
static NET_DST: LpmTrie<PeerKey, u8> = LpmTrie::with_max_entries(MAX_PEERS, 0);

/// Peers cut off by `--partition`, in both directions.
#[map]
static NET_PARTITION: LpmTrie<PeerKey, u8> = LpmTrie::with_max_entries(MAX_PEERS, 0);

#[cgroup_skb(egress)]
pub fn net_egress(ctx: SkBuffContext) -> i32 {
    if fault_verdict(&ctx, DIR_EGRESS) {
        EGRESS_DROP_SILENTLY
    } else {
        EGRESS_PASS
    }
}

#[cgroup_skb(ingress)]
pub fn net_ingress(ctx: SkBuffContext) -> i32 {
    if fault_verdict(&ctx, DIR_INGRESS) {
        INGRESS_DROP
    } else {
        INGRESS_PASS
    }
}

/// Not a fault: the floor `cargo xtask bench net` measures beside `net_egress` (what a run of any
/// cgroup_skb program costs, bpf_stats' own clock reads included).
#[cgroup_skb(egress)]
pub fn noop_skb_egress(_ctx: SkBuffContext) -> i32 {
    EGRESS_PASS
}

/// Returns true when the packet is to be dropped; stamps a later departure time when it is delayed.
#[inline(always)]
fn fault_verdict(ctx: &SkBuffContext, dir: u32) -> bool {
    // SAFETY: read-only globals of this object, set before load.
    let features = unsafe {
        if dir == DIR_EGRESS {
            core::ptr::read_volatile(&NET_EGRESS_FEATURES)
        } else {
            core::ptr::read_volatile(&NET_INGRESS_FEATURES)
        }
    };
    let Some(cfg) = NET_CONFIG.get(0) else {
        return false;
    };
    // A delay or a rate needs the precise clock, which then checks the lease too; without them the
    // lease is checked at a tick's precision, with no clock call on most packets (lease.rs).
    let now = if features & (FEAT_DELAY | FEAT_RATE) != 0 {
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        if now >= cfg.deadline_ns {
            return false;
        }
        now
    } else {
        let slot = if dir == DIR_EGRESS {
            lease::SLOT_CGROUP_EGRESS
        } else {
            lease::SLOT_CGROUP_INGRESS
        };
        if !lease::holds(cfg.deadline_ns, slot) {
            return false;
        }
        0
    };
    let Some(counters) = NET_COUNTERS.get_ptr_mut(dir) else {
        return false;
    };
    // SAFETY: a per-CPU slot of this program's own map; nothing else writes it on this CPU now.
    let counters = unsafe { &mut *counters };
    counters.seen += 1;
    let egress = dir == DIR_EGRESS;

    if features & FEAT_FILTER != 0 {
        let filter = &cfg.filter;
        let Some(peer) = packet::parse(&ctx.skb, egress, 0, false) else {
            return false;
        };
        if filter.flags & FILTER_PARTITION != 0 && in_peer_set(&NET_PARTITION, &peer, true) {
            counters.partitioned += 1;
            return true;
        }
        if !matches(cfg, &peer) {
            return false;
        }
    }
    counters.matched += 1;

    let fault = if egress { &cfg.egress } else { &cfg.ingress };
    if (features & FEAT_DROP != 0 && crate::chance(fault.drop_threshold))
        || (features & FEAT_LOSS_CHAIN != 0 && chain_loses(&fault.loss, dir))
    {
        counters.dropped += 1;
        return true;
    }
    if features & FEAT_DELAY != 0 && fault.delay_ns != 0 {
        if features & FEAT_REORDER != 0 && goes_at_once(&cfg.delay_shape) {
            counters.reordered += 1;
        } else {
            let delay = delay_ns(fault, &cfg.delay_shape, features);
            // SAFETY: tstamp is writable from cgroup_skb with CAP_BPF; the kernel holds skb for the
            // run.
            unsafe {
                let skb = ctx.skb.skb;
                let base = if (*skb).tstamp > now {
                    (*skb).tstamp
                } else {
                    now
                };
                (*skb).tstamp = base + delay;
            }
            counters.delayed += 1;
            counters.delay_ns_total += delay;
        }
    }
    features & FEAT_RATE != 0
        && !pace(
            &ctx.skb,
            0,
            dir,
            features & FEAT_RATE_PER_PEER != 0,
            &cfg.rate,
            now,
            counters,
        )
}

/// The bucket a packet draws on: its direction's, or `per_peer` its peer's (made on its first
/// packet). The headers are read here, not kept from the filter: a buffer for the address would
/// cost every packet of every other fault an initialisation.
#[inline(always)]
fn rate_bucket(skb: &SkBuff, l3: usize, dir: u32, per_peer: bool) -> Option<*mut u64> {
    if !per_peer {
        return NET_RATE_STATE.get_ptr_mut(dir);
    }
    let peer = packet::parse(skb, dir == DIR_EGRESS, l3, false)?;
    let key = RatePeerKey {
        addr: peer.addr,
        dir,
    };
    if let Some(finish) = NET_RATE_PEERS.get_ptr_mut(&key) {
        return Some(finish);
    }
    // A racing CPU may have made it first (NOEXIST fails then); either way it is there now.
    let _ = NET_RATE_PEERS.insert(&key, &0, BPF_NOEXIST as u64);
    NET_RATE_PEERS.get_ptr_mut(&key)
}

/// Gives the packet its turn at the rate: a departure time after what the link was given before it,
/// less the bucket's credit. False when that turn is further off than the queue holds (drop it).
/// `l3` is where the IP header starts (0 at a cgroup hook, the link header's length at TC).
#[inline(always)]
pub(crate) fn pace(
    skb: &SkBuff,
    l3: usize,
    dir: u32,
    per_peer: bool,
    rate: &RateLimit,
    now: u64,
    counters: &mut NetCounters,
) -> bool {
    let Some(finish) = rate_bucket(skb, l3, dir, per_peer) else {
        return true;
    };
    let bytes = wire_bytes(skb, l3);
    let tx = (bytes * rate.ns_per_byte) >> RATE_SHIFT;
    let skb = skb.skb;
    // SAFETY: the kernel holds skb for the run; tstamp is readable and (CAP_BPF) writable here.
    let t = unsafe { (*skb).tstamp }.max(now);
    // SAFETY: an entry of this program's own map, shared by every CPU. Racing senders may read the
    // same finish time and share a turn; the later write wins (as in Cilium's EDT), so the rate can
    // overshoot by a packet per race, never stall.
    let f = unsafe { *finish };
    let depart = t.max(f.saturating_sub(rate.burst_ns));
    if depart - t > rate.queue_ns {
        counters.rate_dropped += 1;
        return false;
    }
    // SAFETY: as above.
    unsafe { *finish = f.max(t) + tx };
    if depart > t {
        // SAFETY: as above.
        unsafe { (*skb).tstamp = depart };
        counters.paced += 1;
    }
    counters.rate_bytes += bytes;
    true
}

/// The bytes the packet puts on the link at the IP layer: a GSO packet becomes `gso_segs` segments,
/// each with its own copy of the headers.
#[inline(always)]
fn wire_bytes(skb: &SkBuff, l3: usize) -> u64 {
    let len = (skb.len() as u64).saturating_sub(l3 as u64);
    // SAFETY: the context pointer is valid for the whole run.
    let segs = unsafe { (*skb.skb).gso_segs } as u64;
    if segs <= 1 {
        return len;
    }
    // The headers are the same in either direction: `egress` only picks which address is the peer.
    let headers = packet::parse(skb, true, l3, true)
        .map_or(0, |p| (p.payload as u64).saturating_sub(l3 as u64));
    len + (segs - 1) * headers
}

/// One step of the loss chain: draws the next state, then whether the packet is lost in it. The next
/// state is the count of thresholds the draw reached, so no branch depends on the state.
#[inline(always)]
fn chain_loses(chain: &LossChain, dir: u32) -> bool {
    let Some(state) = NET_LOSS_STATE.get_ptr_mut(dir) else {
        return false;
    };
    // SAFETY: an entry of this program's own map; a racing writer stores a valid state too, and the
    // mask keeps any value an index.
    let s = (unsafe { *state } as usize) & 3;
    // SAFETY: a helper without arguments.
    let draw = unsafe { bpf_get_prandom_u32() } as u64;
    let next = &chain.next[s];
    let n = (draw >= next[0]) as usize + (draw >= next[1]) as usize + (draw >= next[2]) as usize;
    // The entry is shared by every CPU: written only when the state changes (rarely, in a bursty
    // chain), so the common packet does not take the cache line from the other CPUs.
    if n != s {
        // SAFETY: as above.
        unsafe { *state = n as u32 };
    }
    crate::chance(chain.lose[n & 3])
}

/// The configured delay, varied by the jitter: uniformly over ±jitter (a multiply-shift instead of a
/// division), or by the distribution table, `jitter` being its standard deviation.
#[inline(always)]
pub(crate) fn delay_ns(fault: &DirectionFault, shape: &DelayShape, features: u64) -> u64 {
    if fault.jitter_ns == 0 {
        return fault.delay_ns;
    }
    // SAFETY: a helper without arguments.
    let mut draw = unsafe { bpf_get_prandom_u32() };
    if features & FEAT_DELAY_CORRELATION != 0 {
        draw = correlated(draw, shape.correlation);
    }
    if features & FEAT_DELAY_TABLE != 0 {
        let Some(&score) = NET_DELAY_TABLE.get(draw >> 20) else {
            return fault.delay_ns;
        };
        let offset = (score as i64 * fault.jitter_ns as i64) >> DELAY_TABLE_SHIFT;
        // A long left tail may reach below zero: no packet leaves before it was sent.
        return (fault.delay_ns as i64 + offset).max(0) as u64;
    }
    let span = 2 * fault.jitter_ns + 1;
    let offset = ((draw as u64) * span) >> 32;
    (fault.delay_ns + offset).saturating_sub(fault.jitter_ns)
}

/// netem's correlated draw: the new draw weighted by 1 - rho, the last by rho (on the 2^32 scale).
#[inline(always)]
fn correlated(draw: u32, rho: u64) -> u32 {
    let Some(last) = NET_DELAY_STATE.get_ptr_mut(DELAY_STATE_LAST_DRAW) else {
        return draw;
    };
    // SAFETY: an entry of this program's own map; a racing CPU stores a draw too.
    let value =
        ((draw as u64 * ((1u64 << 32) - rho) + (unsafe { *last }) as u64 * rho) >> 32) as u32;
    // SAFETY: as above.
    unsafe { *last = value };
    value
}

/// Reorder as netem has it: once `reorder_gap - 1` packets in a row were delayed, the next goes at
/// once with the reorder probability (and the count starts again); otherwise it is delayed.
#[inline(always)]
fn goes_at_once(shape: &DelayShape) -> bool {
    let Some(since) = NET_DELAY_STATE.get_ptr_mut(DELAY_STATE_SINCE_REORDER) else {
        return false;
    };
    // SAFETY: an entry of this program's own map; a racing CPU stores a count too.
    let n = unsafe { *since };
    let at_once =
        n >= shape.reorder_gap.saturating_sub(1) && crate::chance(shape.reorder_threshold);
    // SAFETY: as above.
    unsafe { *since = if at_once { 0 } else { n.saturating_add(1) } };
    at_once
}

#[inline(always)]
pub(crate) fn matches(cfg: &NetConfig, peer: &Peer) -> bool {
    let f = &cfg.filter;
    let proto_ok = f.proto == PROTO_ANY
        || f.proto == peer.proto
        || (f.proto == PROTO_ICMP && peer.proto == PROTO_ICMPV6);
    let port_ok = f.port == 0 || f.port == peer.peer_port || f.port == peer.local_port;
    let dst_ok = f.flags & FILTER_DST == 0 || in_peer_set(&NET_DST, peer, false);
    proto_ok && port_ok && dst_ok
}

/// Looks the peer up with its port (entries for CIDR:PORT) and with port 0 (entries for a whole CIDR).
#[inline(always)]
fn in_peer_set(set: &LpmTrie<PeerKey, u8>, peer: &Peer, with_port: bool) -> bool {
    let any_port = Key::new(
        PEER_KEY_PORT_BITS + 128,
        PeerKey {
            port: [0, 0],
            addr: peer.addr,
        },
    );
    if set.get(&any_port).is_some() {
        return true;
    }
    if !with_port || peer.peer_port == 0 {
        return false;
    }
    let this_port = Key::new(
        PEER_KEY_PORT_BITS + 128,
        PeerKey {
            port: peer.peer_port.to_be_bytes(),
            addr: peer.addr,
        },
    );
    set.get(&this_port).is_some()
}
