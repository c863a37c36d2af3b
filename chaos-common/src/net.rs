//! Network faults: the config the loader writes, the peer keys it fills, the counters the kernel writes.

/// Index of the egress half in [`NetConfig`]-derived per-direction arrays (counters).
pub const DIR_EGRESS: u32 = 0;
/// Index of the ingress half.
pub const DIR_INGRESS: u32 = 1;
/// Number of directions (size of the counters array).
pub const DIR_COUNT: u32 = 2;

/// `PacketFilter::flags`: only packets whose peer address is in the `NET_DST` trie match.
pub const FILTER_DST: u8 = 1 << 0;
/// `PacketFilter::flags`: the `NET_PARTITION` trie holds peers to cut off.
pub const FILTER_PARTITION: u8 = 1 << 1;

/// Protocol numbers as they appear in the IP header.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Bits of the read-only globals `NET_EGRESS_FEATURES` / `NET_INGRESS_FEATURES`, set by the loader
/// before the object is loaded. The verifier sees them as constants and removes the code of every
/// feature a fault does not use, so a packet pays only for what is configured.
///
/// Parse the headers (`--dst/--port/--proto`, `--partition`).
pub const FEAT_FILTER: u64 = 1 << 0;
/// Independent random drop (`drop_threshold`).
pub const FEAT_DROP: u64 = 1 << 1;
/// A loss model: a Markov chain in `DirectionFault::loss`, its state in `NET_LOSS_STATE`.
pub const FEAT_LOSS_CHAIN: u64 = 1 << 2;
/// EDT delay (egress): the only feature that reads the precise clock.
pub const FEAT_DELAY: u64 = 1 << 3;
/// A rate limit on what the target sends (EDT pacing, `RateLimit`); reads the precise clock too.
pub const FEAT_RATE: u64 = 1 << 7;
/// The delay is drawn from the `NET_DELAY_TABLE` distribution (normal, pareto, paretonormal)
/// instead of uniformly within ±jitter.
pub const FEAT_DELAY_TABLE: u64 = 1 << 8;
/// Each delay's draw leans on the last one (`DelayShape::correlation`), as netem's correlation.
pub const FEAT_DELAY_CORRELATION: u64 = 1 << 9;
/// Reorder: some packets skip the delay (`DelayShape::reorder_threshold`, `reorder_gap`).
pub const FEAT_REORDER: u64 = 1 << 10;
/// With `FEAT_RATE`: each peer address has a bucket of its own (`NET_RATE_PEERS`), found from the
/// packet's headers.
pub const FEAT_RATE_PER_PEER: u64 = 1 << 11;
/// Bits of `NET_TC_FEATURES`, the TC egress program's (`--duplicate`, `--corrupt`): it shares
/// `FEAT_FILTER` with the cgroup programs.
///
/// Send a copy of the packet out of the same device (`bpf_clone_redirect`).
pub const FEAT_DUPLICATE: u64 = 1 << 4;
/// Flip one random bit of the packet's payload (`bpf_skb_store_bytes`).
pub const FEAT_CORRUPT: u64 = 1 << 5;
/// No cgroup egress program runs, so the TC program counts `seen` and `matched` itself.
pub const FEAT_TC_COUNTS_SEEN: u64 = 1 << 6;

/// States a loss model's chain may have.
pub const LOSS_STATES: usize = 4;
/// The threshold that a u32 draw is always below: probability 1.
pub const ALWAYS: u64 = 1 << 32;

/// A loss model as a Markov chain over at most four states, one step per packet: the packet draws
/// the next state from the current one, then is lost with the new state's loss probability. Every
/// netem loss model fits: correlated loss (kept/lost), Gilbert-Elliott (good/bad) and the 4-state
/// model (netem's states 1-4 as 0-3). State 0 is where a chain starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossChain {
    /// `next[s]`: cumulative thresholds on a u32 draw; the next state is the number of the three
    /// thresholds the draw is not below (so no branch decides it). Unused states hold `ALWAYS`.
    pub next: [[u64; LOSS_STATES - 1]; LOSS_STATES],
    /// `lose[s]`: a packet entering state s is lost when a draw is below it (0 never, `ALWAYS` always,
    /// neither costs a draw).
    pub lose: [u64; LOSS_STATES],
}

/// What one direction does to a matching packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionFault {
    /// A packet is dropped when `bpf_get_prandom_u32() < drop_threshold`. It is a u64 so that 100 %
    /// (2^32) is exact; 0 disables the drop without a random draw.
    pub drop_threshold: u64,
    /// Added to the packet's departure time (EDT, honoured by sch_fq). Egress only.
    pub delay_ns: u64,
    /// The delay varies uniformly in `[delay - jitter, delay + jitter]`.
    pub jitter_ns: u64,
    /// The loss model (with `FEAT_LOSS_CHAIN`).
    pub loss: LossChain,
}

/// Narrows which packets the drop and delay faults apply to. A partition ignores it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketFilter {
    /// `PROTO_*`; `PROTO_ICMP` matches ICMPv6 too.
    pub proto: u8,
    /// `FILTER_*` bits.
    pub flags: u8,
    /// Matches when either the local or the peer port equals it (like tcpdump's `port N`); 0 = any.
    pub port: u16,
    /// Zero: keeps the struct free of implicit padding. (Whether headers are parsed at all is the
    /// `FEAT_FILTER` bit, a constant to the verifier.)
    pub reserved: u32,
}

/// Entries of the delay distribution table: a draw's top 12 bits pick one.
pub const DELAY_TABLE_SIZE: u32 = 4096;
/// Fixed-point shift of the table's values: a value is a standard score (mean 0, standard deviation
/// 1) times 2^16, so the delay is `delay + (value * jitter) >> 16`.
pub const DELAY_TABLE_SHIFT: u32 = 16;
/// Index in `NET_DELAY_STATE` of the last correlated draw.
pub const DELAY_STATE_LAST_DRAW: u32 = 0;
/// Index in `NET_DELAY_STATE` of the packets delayed since the last one sent at once (reorder gap).
pub const DELAY_STATE_SINCE_REORDER: u32 = 1;

/// How the egress delay varies and which packets skip it (netem's delay correlation, distribution
/// and reorder).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayShape {
    /// Weight of the last draw in the next, on the 2^32 scale (netem's correlation).
    pub correlation: u64,
    /// A packet whose turn has come (see `reorder_gap`) goes at once when a draw is below this.
    pub reorder_threshold: u64,
    /// With `FEAT_REORDER`: the packets after one sent at once that are always delayed, plus one
    /// (netem's gap; 1: every packet may go at once).
    pub reorder_gap: u32,
    pub reserved: u32,
}

/// Fixed-point shift of `RateLimit::ns_per_byte`: ns per byte × 2^20, so 100 Gbit/s (0.08 ns a byte)
/// keeps 5 significant digits and a 64 KiB packet at 1 kbit/s does not overflow.
pub const RATE_SHIFT: u32 = 20;

/// A bandwidth limit on all the target's packets of a direction together (or on each peer's), by departure times (EDT, as
/// Cilium's bandwidth manager paces pods): a token bucket whose state is the virtual time the link
/// finishes what it was given (`NET_RATE_STATE`, or `NET_RATE_PEERS` per peer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Transmission time of one byte at the rate, in ns << `RATE_SHIFT`. 0: no limit.
    pub ns_per_byte: u64,
    /// The bucket's depth as time at the rate: how far the link may run ahead of its pace after an
    /// idle spell (`--burst`).
    pub burst_ns: u64,
    /// A packet that would wait longer than this for its turn is dropped (the queue's limit), as
    /// netem's limit drops what would overflow its queue.
    pub queue_ns: u64,
}

/// Peers the per-peer rate keeps a bucket for at once: the least recently used is forgotten (its next
/// packet starts a fresh bucket).
pub const MAX_RATE_PEERS: u32 = 4096;

/// Key of a per-peer rate bucket: the peer address (IPv4 mapped as in [`PeerKey`]) and the direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RatePeerKey {
    pub addr: [u8; 16],
    pub dir: u32,
}

/// Targets the TC program compares with inline, without a hash lookup (most faults have one).
pub const INLINE_TARGETS: usize = 4;

/// What the TC egress program does to a target's matching packet, and how it knows a target: a TC
/// program runs for every packet on its device, so it asks the socket's cgroup ancestry at each level
/// from `target_min_level` to `target_max_level` whether it is a target: one of `target_ids` when
/// there are at most `INLINE_TARGETS`, else one of the `NET_TARGETS` hash's keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MangleFault {
    /// A packet is duplicated when a draw is below it (the scale of `drop_threshold`).
    pub duplicate_threshold: u64,
    /// A packet has one payload bit flipped when a draw is below it.
    pub corrupt_threshold: u64,
    pub target_min_level: u32,
    pub target_max_level: u32,
    /// How many targets there are; with more than `INLINE_TARGETS` the hash decides.
    pub n_targets: u64,
    /// The targets' cgroup ids; unused slots are 0, which no cgroup has.
    pub target_ids: [u64; INLINE_TARGETS],
}

/// The single entry of the `NET_CONFIG` array map. The loader rewrites it whole to change intensity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// CLOCK_MONOTONIC time (ns) after which the programs stop injecting. The loader keeps pushing it
    /// forward while it is alive (a lease), so a stopped or killed loader can't leave faults behind
    /// even where an attachment outlives it. 0 means "not armed": nothing is injected.
    pub deadline_ns: u64,
    pub egress: DirectionFault,
    pub ingress: DirectionFault,
    pub filter: PacketFilter,
    pub mangle: MangleFault,
    pub rate: RateLimit,
    pub delay_shape: DelayShape,
}

/// Bits in an LPM key that precede the address: the peer port, big-endian.
pub const PEER_KEY_PORT_BITS: u32 = 16;
/// Bits an IPv4 address is shifted by when mapped into IPv6 (`::ffff:a.b.c.d`).
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// Data of an LPM-trie key: the peer port then the peer address (IPv4 as `::ffff:a.b.c.d`).
///
/// Putting the port first lets one trie hold both "this CIDR, any port" entries (port bytes 0) and
/// "this CIDR, port P" entries; the prefix length is 16 + the address prefix (IPv4: + 96). The program
/// looks up once with port 0 and once with the packet's peer port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerKey {
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Per-direction, per-CPU counters the programs write; the loader sums them over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct NetCounters {
    /// Packets of a target cgroup that reached the program while the fault was armed.
    pub seen: u64,
    /// Of those, packets that passed the filter (`--dst/--port/--proto`).
    pub matched: u64,
    /// Dropped by the random drop.
    pub dropped: u64,
    /// Dropped because the peer is partitioned away.
    pub partitioned: u64,
    /// Given a later departure time.
    pub delayed: u64,
    /// Sum of the delays given, for the mean.
    pub delay_ns_total: u64,
    /// Sent twice (the TC program's copy).
    pub duplicated: u64,
    /// Given one flipped payload bit.
    pub corrupted: u64,
    /// Given a later departure time by the rate limit (the others left at once, on credit).
    pub paced: u64,
    /// Dropped by the rate limit: the wait for their turn was longer than its queue.
    pub rate_dropped: u64,
    /// Bytes the rate limit counted (each segment's IP header and payload).
    pub rate_bytes: u64,
    /// Sent at once instead of delayed (reorder).
    pub reordered: u64,
}

impl NetCounters {
    /// Adds another CPU's counters (the loader sums the per-CPU copies).
    pub fn accumulate(&mut self, other: &NetCounters) {
        self.seen += other.seen;
        self.matched += other.matched;
        self.dropped += other.dropped;
        self.partitioned += other.partitioned;
        self.delayed += other.delayed;
        self.delay_ns_total += other.delay_ns_total;
        self.duplicated += other.duplicated;
        self.corrupted += other.corrupted;
        self.paced += other.paced;
        self.rate_dropped += other.rate_dropped;
        self.rate_bytes += other.rate_bytes;
        self.reordered += other.reordered;
    }
}

/// Converts a probability in percent (0..=100) to the `drop_threshold` scale (2^32 = always).
pub fn percent_to_threshold(percent: f64) -> u64 {
    let p = if percent.is_nan() {
        0.0
    } else {
        percent.clamp(0.0, 100.0)
    };
    // `as` saturates and truncates; adding 0.5 rounds (no_std has no f64::round).
    ((p / 100.0) * 4_294_967_296.0 + 0.5) as u64
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, made only of integers and byte arrays, with no padding.
    unsafe impl aya::Pod for super::NetConfig {}
    unsafe impl aya::Pod for super::NetCounters {}
    unsafe impl aya::Pod for super::PeerKey {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<LossChain>(), 8 * (12 + 4));
        assert_eq!(size_of::<DirectionFault>(), 24 + 128);
        assert_eq!(size_of::<PacketFilter>(), 8);
        assert_eq!(size_of::<MangleFault>(), 24 + 8 + 32);
        assert_eq!(size_of::<RateLimit>(), 24);
        assert_eq!(size_of::<DelayShape>(), 24);
        assert_eq!(size_of::<NetConfig>(), 8 + 152 + 152 + 8 + 64 + 24 + 24);
        assert_eq!(size_of::<PeerKey>(), 18);
        assert_eq!(size_of::<NetCounters>(), 96);
    }

    #[test]
    fn thresholds() {
        assert_eq!(percent_to_threshold(0.0), 0);
        assert_eq!(percent_to_threshold(100.0), 1 << 32);
        assert_eq!(percent_to_threshold(50.0), 1 << 31);
        assert_eq!(percent_to_threshold(250.0), 1 << 32);
        assert_eq!(percent_to_threshold(-1.0), 0);
        assert_eq!(percent_to_threshold(f64::NAN), 0);
        // 0.001 % is still a non-zero chance.
        assert!(percent_to_threshold(0.001) > 0);
    }

    #[test]
    fn counters_accumulate() {
        let mut a = NetCounters {
            seen: 1,
            matched: 2,
            dropped: 3,
            partitioned: 4,
            delayed: 5,
            delay_ns_total: 6,
            duplicated: 7,
            corrupted: 8,
            paced: 9,
            rate_dropped: 10,
            rate_bytes: 11,
            reordered: 12,
        };
        a.accumulate(&a.clone());
        assert_eq!(
            a,
            NetCounters {
                seen: 2,
                matched: 4,
                dropped: 6,
                partitioned: 8,
                delayed: 10,
                delay_ns_total: 12,
                duplicated: 14,
                corrupted: 16,
                paced: 18,
                rate_dropped: 20,
                rate_bytes: 22,
                reordered: 24,
            }
        );
    }
}
