//! Network faults on target cgroups: drop, EDT delay, partition (kernel side: chaos-ebpf/src/net.rs).

use std::{os::fd::AsFd as _, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use chaos_common::{
    DIR_EGRESS, DIR_INGRESS, DelayShape, DirectionFault, FEAT_CORRUPT, FEAT_DELAY,
    FEAT_DELAY_CORRELATION, FEAT_DELAY_TABLE, FEAT_DROP, FEAT_DUPLICATE, FEAT_FILTER,
    FEAT_LOSS_CHAIN, FEAT_RATE, FEAT_RATE_PER_PEER, FEAT_REORDER, FEAT_TC_COUNTS_SEEN, FILTER_DST,
    FILTER_PARTITION, LossChain, MAX_RATE_PEERS, MangleFault, NetConfig, NetCounters, PROTO_ANY,
    PROTO_ICMP, PROTO_TCP, PROTO_UDP, PacketFilter, PeerKey, RATE_SHIFT, RateLimit,
    percent_to_threshold,
};

use super::{delay::Distribution, loss::LossModel, peers::Peer};
use crate::{
    engine::journal::{Journal, Residue},
    engine::netns::NetnsRef,
    engine::qdisc::{self, FqInstall},
    engine::targets::Target,
    error::BadInput,
    units,
};

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// What the target sends (the default, as with netem).
    #[default]
    Egress,
    /// What the target receives.
    Ingress,
    /// Both.
    Both,
}

impl Direction {
    /// How a description says it: "egress", "ingress", "both ways".
    pub fn words(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
            Direction::Both => "both ways",
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

/// `kchaos net` options (also the shape of a net fault in a scenario).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NetArgs {
    /// Drop each matching packet with this probability, in percent (0-100, fractions allowed).
    #[arg(long, value_name = "PCT", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub percent: Option<f64>,
    /// The old spelling of --percent (deprecated: works for one release, with a warning).
    #[arg(long, value_name = "PCT", value_parser = units::parse_percent, allow_hyphen_values = true, hide = true, conflicts_with = "percent")]
    pub drop: Option<f64>,
    /// Make --percent (drop) bursty, as netem's `loss P% CORR%`: a packet repeats the previous packet's fate
    /// with this weight (0-100). The loss rate stays --percent; the mean burst grows to
    /// 1/((1-P)(1-CORR)).
    #[arg(long, value_name = "PCT", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub drop_correlation: Option<f64>,
    /// A loss model instead of --percent, in netem's order and percentages:
    /// gemodel:P[,R[,1-H[,1-K]]] (Gilbert-Elliott: P good->bad, R bad->good, 1-H loss in bad, 1-K
    /// loss in good) or 4state:P13[,P31[,P32[,P23[,P14]]]]. Left out: netem's defaults.
    #[arg(long, value_name = "MODEL", value_parser = parse_loss_model)]
    pub loss_model: Option<LossModel>,
    /// Delay each matching packet the target sends (EDT; needs sch_fq, which kchaos installs).
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration, allow_hyphen_values = true)]
    pub delay: Option<Duration>,
    /// Vary the delay: uniformly within ±DUR, or with --delay-distribution, DUR being its standard
    /// deviation.
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration, allow_hyphen_values = true)]
    pub jitter: Option<Duration>,
    /// How the jitter is distributed: uniform (the default), normal, pareto or paretonormal
    /// (netem's); --delay is the mean and --jitter the standard deviation of the last three.
    #[arg(long, value_enum, value_name = "DIST")]
    pub delay_distribution: Option<Distribution>,
    /// Make each delay lean on the last one with this weight, 0-100 (netem's delay correlation).
    #[arg(long, value_name = "PCT", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub delay_correlation: Option<f64>,
    /// With --delay: send this share of packets at once instead, so they overtake delayed ones
    /// (netem's reorder), 0-100.
    #[arg(long, value_name = "PCT", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub reorder: Option<f64>,
    /// With --reorder: only a packet after N-1 delayed ones in a row may go at once (netem's gap;
    /// default 1: any packet may).
    #[arg(long, value_name = "N", value_parser = units::parse_whole::<u32>, allow_hyphen_values = true)]
    pub reorder_gap: Option<u32>,
    /// Limit what the target sends (or receives, with --direction) to this bandwidth, all its
    /// packets together (EDT pacing; needs sch_fq, which kchaos installs): 10mbit, 1.5gbit, 100kbit
    /// (tc's units; mbps means megabytes). Counted as IP bytes, each segment with its headers. On
    /// ingress the target needs a network namespace of its own (a container).
    #[arg(long, value_name = "RATE", value_parser = parse_rate, allow_hyphen_values = true)]
    pub rate: Option<u64>,
    /// With --rate: give each peer address its own bucket of RATE, instead of one for all peers
    /// together (with --dst: each address in those CIDRs).
    #[arg(long)]
    pub rate_per_peer: bool,
    /// With --rate: how much may leave at once after an idle spell (a token bucket's depth): 64k,
    /// 1m (default 0: every packet waits for its turn, as netem's rate).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size, allow_hyphen_values = true)]
    pub burst: Option<u64>,
    /// Send a second copy of each matching packet the target sends, with this probability in percent
    /// (0-100), as netem's `duplicate`. Done by a tcx program on the devices of the target's network
    /// namespace (kernel 6.6+).
    #[arg(long, value_name = "PCT", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub duplicate: Option<f64>,
    /// Flip one random bit in the payload of each matching packet the target sends, with this
    /// probability in percent, as netem's `corrupt`; checksums are left as they are. tcx, as
    /// --duplicate.
    #[arg(long, value_name = "PCT", value_parser = units::parse_percent, allow_hyphen_values = true)]
    pub corrupt: Option<f64>,
    /// Cut the target off from these peers, both ways: CIDR[:PORT], repeatable
    /// (10.0.0.0/24, 10.0.0.5:80, [2001:db8::1]:443).
    #[arg(long = "partition", value_name = "CIDR[:PORT]")]
    pub partitions: Vec<String>,
    /// Only packets to/from peers in this CIDR (repeatable).
    #[arg(long = "dst", value_name = "CIDR")]
    pub dsts: Vec<String>,
    /// Only packets with this local or peer port (TCP/UDP).
    #[arg(long, value_name = "N", value_parser = units::parse_port, allow_hyphen_values = true)]
    pub port: Option<u16>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// Which way drop, loss models, delay and rate apply: egress (what the target sends; the
    /// default, as netem), ingress (what it receives; a delay or a rate there needs the target in a
    /// network namespace of its own, a container) or both. A partition is always both ways;
    /// duplicate and corrupt are egress only.
    #[arg(long, value_enum, default_value_t)]
    pub direction: Direction,
}

/// A validated network fault.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct NetSpec {
    /// None: no drop fault (programs for it are not attached); Some(0.0) attaches them idle, as a ramp
    /// starting at 0 needs.
    pub drop_percent: Option<f64>,
    /// With `drop_percent`: bursty loss at the same rate.
    pub drop_correlation: Option<f64>,
    pub loss_model: Option<LossModel>,
    pub delay: Duration,
    pub jitter: Duration,
    pub delay_distribution: Distribution,
    pub delay_correlation: Option<f64>,
    /// With `reorder_gap` (1 when not given).
    pub reorder: Option<f64>,
    pub reorder_gap: u32,
    /// Bits per second, with the bucket's depth in bytes.
    pub rate: Option<u64>,
    pub burst: u64,
    /// A bucket per peer address rather than one for all.
    pub rate_per_peer: bool,
    /// None: no TC program for it; Some(0.0) attaches it idle (a ramp from 0).
    pub duplicate: Option<f64>,
    pub corrupt: Option<f64>,
    pub partitions: Vec<Peer>,
    pub dsts: Vec<Peer>,
    pub port: Option<u16>,
    pub proto: Option<Proto>,
    pub direction: Direction,
}

impl NetSpec {
    pub fn from_args(a: &NetArgs) -> Result<Self, BadInput> {
        let drop = a.percent.or(a.drop);
        let partitions = a
            .partitions
            .iter()
            .map(|p| Peer::parse(p, "--partition", true))
            .collect::<Result<Vec<_>, _>>()?;
        let dsts = a
            .dsts
            .iter()
            .map(|p| Peer::parse(p, "--dst", false))
            .collect::<Result<Vec<_>, _>>()?;
        if let (Some(jitter), None) = (a.jitter, a.delay) {
            return Err(BadInput::new(format!(
                "--jitter {} needs --delay: jitter varies a delay, e.g. --delay 50ms --jitter 10ms",
                units::format_duration(jitter)
            )));
        }
        let jittered = a.jitter.is_some_and(|j| !j.is_zero());
        if let (Some(d), false) = (a.delay_distribution, jittered) {
            return Err(BadInput::new(format!(
                "--delay-distribution {} needs --jitter: it shapes how the delay varies, e.g. --delay \
                 50ms --jitter 10ms --delay-distribution {}",
                d.name(),
                d.name()
            )));
        }
        if let (Some(c), false) = (a.delay_correlation, jittered) {
            return Err(BadInput::new(format!(
                "--delay-correlation {c} needs --jitter: it makes a varying delay drift, e.g. --delay \
                 50ms --jitter 10ms --delay-correlation 25"
            )));
        }
        if let (Some(r), None) = (a.reorder, a.delay) {
            return Err(BadInput::new(format!(
                "--reorder {r} needs --delay: reordered packets skip the delay the others wait, e.g. \
                 --delay 10ms --reorder 25"
            )));
        }
        match (a.reorder_gap, a.reorder) {
            (Some(g), None) => {
                return Err(BadInput::new(format!(
                    "--reorder-gap {g} needs --reorder PCT: e.g. --delay 10ms --reorder 50 \
                     --reorder-gap 5"
                )));
            }
            (Some(0), _) => {
                return Err(BadInput::new(
                    "--reorder-gap 0 is not allowed: 1 or more (1: any packet may go at once)",
                ));
            }
            _ => {}
        }
        if let (Some(c), None) = (a.drop_correlation, drop) {
            return Err(BadInput::new(format!(
                "--drop-correlation {c} needs --percent: it makes a loss rate bursty, e.g. --percent 5 \
                 --drop-correlation 25"
            )));
        }
        if let (Some(m), Some(d)) = (a.loss_model, drop) {
            return Err(BadInput::new(format!(
                "--loss-model {m} and --percent {d} both decide loss: give one (a loss model sets its \
                 own rate)"
            )));
        }
        if let (Some(b), None) = (a.burst, a.rate) {
            return Err(BadInput::new(format!(
                "--burst {b} needs --rate: it is the rate limit's bucket, e.g. --rate 10mbit --burst 64k"
            )));
        }
        if a.rate_per_peer && a.rate.is_none() {
            return Err(BadInput::new(
                "--rate-per-peer needs --rate: it gives each peer a bucket of that rate, e.g. --rate \
                 1mbit --rate-per-peer",
            ));
        }
        let mangles = a.duplicate.is_some() || a.corrupt.is_some();
        if drop.is_none()
            && a.loss_model.is_none()
            && a.delay.is_none()
            && a.rate.is_none()
            && partitions.is_empty()
            && !mangles
        {
            return Err(BadInput::new(
                "nothing to inject: give --percent PCT (drop), --loss-model MODEL, --delay DUR, \
                 --rate RATE, --duplicate PCT, --corrupt PCT or --partition CIDR[:PORT]",
            ));
        }
        if let Some(r) = a.rate
            && r > MAX_RATE
        {
            return Err(BadInput::new(format!(
                "--rate {}: allowed is up to {}",
                units::format_rate(r as f64),
                units::format_rate(MAX_RATE as f64)
            )));
        }
        if a.burst.is_some_and(|b| b > MAX_BURST) {
            return Err(BadInput::new(format!(
                "--burst {}: allowed is up to 1G (a bucket deeper than that is no limit)",
                a.burst.unwrap_or_default()
            )));
        }
        // A zero delay alone would attach programs that do nothing and report success.
        if drop.is_none()
            && a.loss_model.is_none()
            && partitions.is_empty()
            && !mangles
            && a.rate.is_none()
            && a.delay.is_some_and(|d| d.is_zero())
        {
            return Err(BadInput::new(
                "--delay 0s injects nothing: give e.g. --delay 50ms, or add --percent PCT or --partition",
            ));
        }
        let shaped = a
            .delay_distribution
            .is_some_and(|d| d != Distribution::Uniform)
            || a.delay_correlation.is_some()
            || a.reorder.is_some();
        if shaped && a.direction != Direction::Egress {
            return Err(BadInput::new(
                "--delay-distribution, --delay-correlation and --reorder shape the delay of what the \
                 target sends; on ingress the delay varies uniformly within ±jitter: use \
                 --direction egress with them",
            ));
        }
        if mangles && a.direction == Direction::Ingress {
            return Err(BadInput::new(
                "--duplicate and --corrupt apply to what the target sends (a TC egress program on its \
                 devices); drop --direction ingress",
            ));
        }
        let delay = a.delay.unwrap_or_default();
        let jitter = a.jitter.unwrap_or_default();
        if delay > Duration::from_secs(5) || jitter > delay {
            return Err(BadInput::new(format!(
                "--delay {} --jitter {}: allowed is a delay up to 5s (sch_fq's horizon drops later packets) \
                 and a jitter no larger than the delay",
                units::format_duration(delay),
                units::format_duration(jitter)
            )));
        }
        Ok(Self {
            drop_percent: drop,
            drop_correlation: a.drop_correlation,
            loss_model: a.loss_model,
            delay,
            jitter,
            delay_distribution: a.delay_distribution.unwrap_or_default(),
            delay_correlation: a.delay_correlation,
            reorder: a.reorder,
            reorder_gap: a.reorder_gap.unwrap_or(1),
            rate: a.rate,
            burst: a.burst.unwrap_or(0),
            rate_per_peer: a.rate_per_peer,
            duplicate: a.duplicate,
            corrupt: a.corrupt,
            partitions,
            dsts,
            port: a.port,
            proto: a.proto,
            direction: a.direction,
        })
    }

    /// The loss chain, when loss is a model rather than independent drops.
    pub fn loss_chain(&self) -> Option<LossChain> {
        let model = match (self.loss_model, self.drop_percent, self.drop_correlation) {
            (Some(m), _, _) => m,
            (None, Some(percent), Some(correlation)) => LossModel::Correlated {
                percent,
                correlation,
            },
            _ => return None,
        };
        Some(model.chain())
    }

    /// The `FEAT_*` bits of the egress and the ingress program: what each must do per packet. The
    /// verifier removes the code of every other feature.
    pub fn features(&self) -> (u64, u64) {
        let mut common = 0;
        if !self.partitions.is_empty()
            || !self.dsts.is_empty()
            || self.port.is_some()
            || self.proto.is_some()
        {
            common |= FEAT_FILTER;
        }
        let mut loss = 0;
        if self.loss_chain().is_some() {
            loss |= FEAT_LOSS_CHAIN;
        } else if self.drop_percent.is_some() {
            loss |= FEAT_DROP;
        }
        let mut egress = common;
        let mut ingress = common;
        if self.direction != Direction::Ingress {
            egress |= loss;
        }
        if self.direction != Direction::Egress {
            ingress |= loss;
        }
        if !self.delay.is_zero() && self.direction != Direction::Ingress {
            egress |= FEAT_DELAY;
            if self.delay_distribution != Distribution::Uniform {
                egress |= FEAT_DELAY_TABLE;
            }
            if self.delay_correlation.is_some() {
                egress |= FEAT_DELAY_CORRELATION;
            }
            if self.reorder.is_some() {
                egress |= FEAT_REORDER;
            }
        }
        if self.rate.is_some() && self.direction != Direction::Ingress {
            egress |= FEAT_RATE;
            if self.rate_per_peer {
                egress |= FEAT_RATE_PER_PEER;
            }
        }
        (egress, ingress)
    }

    /// The kernel's form of `--rate`/`--burst` (all zero without a rate).
    pub fn rate_limit(&self) -> RateLimit {
        let Some(rate) = self.rate else {
            return RateLimit::default();
        };
        let ns_per_byte = 8e9 / rate as f64;
        RateLimit {
            ns_per_byte: (ns_per_byte * (1u64 << RATE_SHIFT) as f64).round() as u64,
            burst_ns: (self.burst as f64 * ns_per_byte).round() as u64,
            queue_ns: RATE_QUEUE.as_nanos() as u64,
        }
    }

    /// True when packets wait in fq (a delay or a rate).
    pub fn needs_fq(&self) -> bool {
        !self.delay.is_zero() || self.rate.is_some()
    }

    /// True when packets wait: for a departure time on the way out of the target (egress), or on
    /// the way in (ingress, the TC program on the host-side veths).
    fn waits(&self, direction: Direction) -> bool {
        (!self.delay.is_zero() || self.rate.is_some())
            && (self.direction == direction || self.direction == Direction::Both)
    }

    /// True when what the target sends waits in fq in its own namespaces.
    fn needs_fq_in_targets(&self) -> bool {
        self.waits(Direction::Egress)
    }

    /// True when a delay or a rate applies on the way in: the TC program on the host-side veths.
    pub fn needs_ingress_tc(&self) -> bool {
        self.waits(Direction::Ingress)
    }

    /// The `FEAT_*` bits of the ingress TC program.
    pub fn ingress_tc_features(&self) -> u64 {
        if !self.needs_ingress_tc() {
            return 0;
        }
        let mut f = 0;
        if !self.delay.is_zero() {
            f |= FEAT_DELAY;
        }
        if !self.dsts.is_empty() || self.port.is_some() || self.proto.is_some() {
            f |= FEAT_FILTER;
        }
        if self.rate.is_some() {
            f |= FEAT_RATE;
            if self.rate_per_peer {
                f |= FEAT_RATE_PER_PEER;
            }
        }
        if !self.needs_ingress() {
            f |= FEAT_TC_COUNTS_SEEN;
        }
        f
    }

    /// True when the TC egress program is needed (`--duplicate`, `--corrupt`).
    pub fn needs_tc(&self) -> bool {
        self.duplicate.is_some() || self.corrupt.is_some()
    }

    /// The `FEAT_*` bits of the TC egress program.
    pub fn tc_features(&self) -> u64 {
        let mut f = 0;
        if self.duplicate.is_some() {
            f |= FEAT_DUPLICATE;
        }
        if self.corrupt.is_some() {
            f |= FEAT_CORRUPT;
        }
        // Partitions are the cgroup programs' (their packets never reach a device).
        if !self.dsts.is_empty() || self.port.is_some() || self.proto.is_some() {
            f |= FEAT_FILTER;
        }
        if f != 0 && !self.needs_egress() {
            f |= FEAT_TC_COUNTS_SEEN;
        }
        f
    }

    /// The kernel's view of this spec, not yet armed (deadline 0).
    pub fn config(&self) -> NetConfig {
        let chain = self.loss_chain();
        let drop = if chain.is_some() {
            0
        } else {
            percent_to_threshold(self.drop_percent.unwrap_or(0.0))
        };
        let chain = chain.unwrap_or_default();
        let egress_on = self.direction != Direction::Ingress;
        let ingress_on = self.direction != Direction::Egress;
        let proto = match self.proto {
            None => PROTO_ANY,
            Some(Proto::Tcp) => PROTO_TCP,
            Some(Proto::Udp) => PROTO_UDP,
            Some(Proto::Icmp) => PROTO_ICMP,
        };
        let mut flags = 0;
        if !self.dsts.is_empty() {
            flags |= FILTER_DST;
        }
        if !self.partitions.is_empty() {
            flags |= FILTER_PARTITION;
        }
        let port = self.port.unwrap_or(0);
        NetConfig {
            deadline_ns: 0,
            egress: DirectionFault {
                drop_threshold: if egress_on { drop } else { 0 },
                delay_ns: if egress_on {
                    self.delay.as_nanos() as u64
                } else {
                    0
                },
                jitter_ns: if egress_on {
                    self.jitter.as_nanos() as u64
                } else {
                    0
                },
                loss: chain,
            },
            ingress: DirectionFault {
                drop_threshold: if ingress_on { drop } else { 0 },
                delay_ns: if ingress_on {
                    self.delay.as_nanos() as u64
                } else {
                    0
                },
                jitter_ns: if ingress_on {
                    self.jitter.as_nanos() as u64
                } else {
                    0
                },
                loss: chain,
            },
            filter: PacketFilter {
                proto,
                flags,
                port,
                reserved: 0,
            },
            rate: self.rate_limit(),
            delay_shape: DelayShape {
                correlation: percent_to_threshold(self.delay_correlation.unwrap_or(0.0)),
                reorder_threshold: percent_to_threshold(self.reorder.unwrap_or(0.0)),
                reorder_gap: self.reorder_gap,
                reserved: 0,
            },
            // The target levels are the loader's to fill, from the resolved targets.
            mangle: MangleFault {
                duplicate_threshold: percent_to_threshold(self.duplicate.unwrap_or(0.0)),
                corrupt_threshold: percent_to_threshold(self.corrupt.unwrap_or(0.0)),
                ..MangleFault::default()
            },
        }
    }

    fn needs_egress(&self) -> bool {
        !self.partitions.is_empty()
            || self.waits(Direction::Egress)
            || ((self.drop_percent.is_some() || self.loss_model.is_some())
                && self.direction != Direction::Ingress)
    }

    fn needs_ingress(&self) -> bool {
        !self.partitions.is_empty()
            || ((self.drop_percent.is_some() || self.loss_model.is_some())
                && self.direction != Direction::Egress)
    }

    /// One line saying what this fault does.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(drop) = self.drop_percent {
            let mut d = format!("drop {drop}%");
            if let Some(c) = self.drop_correlation {
                d += &format!(" correlation {c}%");
            }
            parts.push(format!("{d} ({:?})", self.direction).to_lowercase());
        }
        if let Some(m) = self.loss_model {
            parts.push(format!("{m} ({:?})", self.direction).to_lowercase());
        }
        if let Some(chain) = self.loss_chain() {
            let th = super::loss::theory(&chain);
            parts.push(format!(
                "expected loss {:.2}%, mean burst {:.2} packets",
                th.loss * 100.0,
                th.mean_burst
            ));
        }
        if !self.delay.is_zero() {
            let mut d = format!("delay {}", units::format_duration(self.delay));
            if !self.jitter.is_zero() {
                d += &format!(" ±{}", units::format_duration(self.jitter));
                if self.delay_distribution != Distribution::Uniform {
                    d += &format!(" {}", self.delay_distribution.name());
                }
                if let Some(c) = self.delay_correlation {
                    d += &format!(" correlation {c}%");
                }
            }
            if let Some(r) = self.reorder {
                d += &format!(", reorder {r}%");
                if self.reorder_gap > 1 {
                    d += &format!(" gap {}", self.reorder_gap);
                }
            }
            parts.push(d + &format!(" ({})", self.direction.words()));
        }
        if let Some(r) = self.rate {
            let mut d = format!("rate {}", units::format_rate(r as f64));
            if self.burst > 0 {
                d += &format!(" burst {}B", self.burst);
            }
            if self.rate_per_peer {
                d += " per peer";
            }
            parts.push(d + &format!(" ({})", self.direction.words()));
        }
        if let Some(p) = self.duplicate {
            parts.push(format!("duplicate {p}% (egress)"));
        }
        if let Some(p) = self.corrupt {
            parts.push(format!("corrupt {p}% (egress)"));
        }
        if !self.partitions.is_empty() {
            let peers: Vec<String> = self.partitions.iter().map(ToString::to_string).collect();
            parts.push(format!("partition from {}", peers.join(", ")));
        }
        let mut filter = Vec::new();
        if !self.dsts.is_empty() {
            filter.push(format!(
                "peer in {}",
                self.dsts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if let Some(p) = self.port {
            filter.push(format!("port {p}"));
        }
        if let Some(p) = self.proto {
            filter.push(format!("{p:?}").to_lowercase());
        }
        let mut s = parts.join(", ");
        if !filter.is_empty() {
            s += &format!(" [only {}]", filter.join(" "));
        }
        s
    }
}

/// Counters of both directions, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetTotals {
    pub egress: NetCounters,
    pub ingress: NetCounters,
}

/// An attached network fault. Dropping it detaches every program (fd-owned links) and restores qdiscs.
pub struct NetFault {
    spec: NetSpec,
    config: NetConfig,
    ebpf: Ebpf,
    fq: Vec<FqInstall>,
    /// Human-readable list of what was attached where.
    pub attachments: Vec<String>,
}

impl NetFault {
    /// Checks what the spec needs from the kernel before anything is attached.
    pub fn preflight(spec: &NetSpec, target_list: &[Target]) -> Result<(), BadInput> {
        let targets = target_list.len();
        // Why ingress delay can't be held to the targets comes before what the kernel lacks.
        if spec.needs_ingress_tc() {
            super::ingress::plan(target_list)?;
        }
        // A link per target and direction, each an fd for the fault's life.
        let directions = usize::from(spec.needs_egress()) + usize::from(spec.needs_ingress());
        crate::engine::fds::reserve_links(
            (directions * targets) as u64,
            &format!("{directions} cgroup_skb hook(s) on {targets} target(s)"),
        )?;
        if spec.needs_tc() {
            super::tc::preflight()?;
        }
        if spec.needs_fq() && !qdisc::kernel_has_fq() {
            return Err(BadInput::new(
                "--delay and --rate need the sch_fq qdisc (CONFIG_NET_SCH_FQ), which this kernel lacks: EDT \
                 departure times are honoured only by fq. `kchaos probe` lists what this kernel offers",
            ));
        }
        Ok(())
    }

    /// Loads and attaches the programs to every target, unarmed; `arm` starts injecting. On error,
    /// whatever was attached is detached again (dropping `Ebpf` closes the links) and qdiscs restored.
    pub fn attach(spec: NetSpec, targets: &[Target], journal: &mut Journal) -> Result<Self> {
        Self::preflight(&spec, targets)?;
        let (egress_features, ingress_features) = spec.features();
        let levels = if spec.needs_tc() {
            let levels = crate::engine::targets::levels(targets)?;
            crate::engine::targets::check_level_span(&levels, "--duplicate and --corrupt")?;
            levels
        } else {
            Vec::new()
        };
        let table = spec.delay_distribution.table();
        let mut ebpf = crate::engine::ebpf::load_sized(
            &[
                ("NET_EGRESS_FEATURES", egress_features),
                ("NET_INGRESS_FEATURES", ingress_features),
                ("NET_TC_FEATURES", spec.tc_features()),
                ("NET_TC_INGRESS_FEATURES", spec.ingress_tc_features()),
            ],
            &[
                ("NET_TARGETS", levels.len().max(1) as u32),
                // A fault without a distribution keeps one entry, not 16 KiB.
                (
                    "NET_DELAY_TABLE",
                    table.as_ref().map_or(1, |t| t.len() as u32),
                ),
                (
                    "NET_RATE_PEERS",
                    if spec.rate_per_peer {
                        MAX_RATE_PEERS
                    } else {
                        1
                    },
                ),
            ],
        )?;
        if let Some(table) = &table {
            let mut map = Array::<_, i32>::try_from(
                ebpf.map_mut("NET_DELAY_TABLE")
                    .context("map NET_DELAY_TABLE")?,
            )?;
            for (i, &v) in table.iter().enumerate() {
                map.set(i as u32, v, 0)
                    .context("writing the delay distribution")?;
            }
        }
        let mut config = spec.config();
        config.mangle.target_min_level = levels.iter().map(|&(_, l)| l).min().unwrap_or(0);
        config.mangle.target_max_level = levels.iter().map(|&(_, l)| l).max().unwrap_or(0);
        config.mangle.n_targets = levels.len() as u64;
        for (slot, &(id, _)) in config.mangle.target_ids.iter_mut().zip(&levels) {
            *slot = id;
        }
        Array::<_, NetConfig>::try_from(ebpf.map_mut("NET_CONFIG").context("map NET_CONFIG")?)?
            .set(0, config, 0)
            .context("writing the net config")?;
        fill_peers(&mut ebpf, "NET_PARTITION", &spec.partitions)?;
        fill_peers(&mut ebpf, "NET_DST", &spec.dsts)?;

        let mut attachments = Vec::new();
        let hooks = [
            (
                "net_egress",
                CgroupSkbAttachType::Egress,
                spec.needs_egress(),
            ),
            (
                "net_ingress",
                CgroupSkbAttachType::Ingress,
                spec.needs_ingress(),
            ),
        ];
        for (name, attach_type, wanted) in hooks {
            if !wanted {
                continue;
            }
            let prog: &mut CgroupSkb = ebpf.program_mut(name).context(name)?.try_into()?;
            prog.load()
                .with_context(|| format!("loading the {name} program"))?;
            for t in targets {
                let dir = std::fs::File::open(&t.path)
                    .with_context(|| format!("opening {}", t.path.display()))?;
                // A link (5.7+) always coexists with other programs; it takes no mode flags (the kernel
                // answers EINVAL to BPF_F_ALLOW_MULTI on link_create).
                prog.attach(dir.as_fd(), attach_type, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {name} to {}", t.path.display()))?;
                attachments.push(format!(
                    "cgroup_skb/{} -> {} (link, fd-owned)",
                    name.trim_start_matches("net_"),
                    t.path.display()
                ));
            }
        }
        if spec.needs_tc() {
            let namespaces = super::tc::target_namespaces(targets)?;
            attachments.extend(super::tc::attach(&mut ebpf, &levels, &namespaces)?);
        }
        let ingress_devices = if spec.needs_ingress_tc() {
            let devices = super::ingress::plan(targets)?;
            attachments.extend(super::tc::attach_here(
                &mut ebpf,
                super::ingress::PROGRAM,
                &devices,
            )?);
            devices
        } else {
            Vec::new()
        };
        let mut fault = Self {
            spec,
            config,
            ebpf,
            fq: Vec::new(),
            attachments,
        };
        if fault.spec.needs_fq() {
            fault.install_fq(targets, &ingress_devices, journal)?;
        }
        Ok(fault)
    }

    /// fq on every device of every namespace a target process lives in (the host's if none), for
    /// what it sends, and on `ingress_devices` of kchaos's own namespace, for what it receives.
    fn install_fq(
        &mut self,
        targets: &[Target],
        ingress_devices: &[String],
        journal: &mut Journal,
    ) -> Result<()> {
        let mut plan = Vec::new();
        if self.spec.needs_fq_in_targets() {
            for ns in &super::tc::target_namespaces(targets)? {
                let path = ns
                    .locate()
                    .context("a target's network namespace vanished")?;
                plan.extend(qdisc::plan(ns, &path, |_| true)?);
            }
        }
        if !ingress_devices.is_empty() {
            let own = NetnsRef::own()?;
            let path = own.locate().context("kchaos's own network namespace")?;
            for fq in qdisc::plan(&own, &path, |dev| ingress_devices.iter().any(|d| d == dev))? {
                if !plan.contains(&fq) {
                    plan.push(fq);
                }
            }
        }
        for fq in plan {
            let residue = Residue::Fq(fq.clone());
            journal.add(residue.clone())?;
            if let Err(e) = qdisc::install(&fq) {
                journal.remove(&residue)?;
                // The error names the device and what was tried.
                return Err(e.into());
            }
            self.attachments.push(format!(
                "qdisc fq on {} (was {}; restored at the end)",
                fq.dev, fq.previous
            ));
            self.fq.push(fq);
        }
        Ok(())
    }

    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }

    /// Arms (or re-arms) the fault until `deadline_ns` (CLOCK_MONOTONIC).
    pub fn arm(&mut self, deadline_ns: u64) -> Result<()> {
        self.config.deadline_ns = deadline_ns;
        self.write_config()
    }

    /// Changes the drop rate while running (ramps).
    pub fn set_drop_percent(&mut self, percent: f64) -> Result<()> {
        self.spec.drop_percent = Some(percent);
        let fresh = self.spec.config();
        self.config.egress.drop_threshold = fresh.egress.drop_threshold;
        self.config.ingress.drop_threshold = fresh.ingress.drop_threshold;
        self.config.egress.loss = fresh.egress.loss;
        self.config.ingress.loss = fresh.ingress.loss;
        self.write_config()
    }

    /// Changes the delay while running (ramps); jitter is kept within the new delay.
    pub fn set_delay(&mut self, delay: Duration) -> Result<()> {
        let ns = delay.as_nanos() as u64;
        for (on, fault) in [
            (
                self.spec.direction != Direction::Ingress,
                &mut self.config.egress,
            ),
            (
                self.spec.direction != Direction::Egress,
                &mut self.config.ingress,
            ),
        ] {
            if on {
                fault.delay_ns = ns;
                fault.jitter_ns = fault.jitter_ns.min(ns);
            }
        }
        self.spec.delay = delay;
        self.write_config()
    }

    /// Changes the reorder share while running (ramps).
    pub fn set_reorder_percent(&mut self, percent: f64) -> Result<()> {
        self.spec.reorder = Some(percent);
        self.config.delay_shape.reorder_threshold = percent_to_threshold(percent);
        self.write_config()
    }

    /// Changes the rate limit while running (ramps); the bucket keeps its depth in bytes.
    pub fn set_rate(&mut self, bits_per_s: u64) -> Result<()> {
        self.spec.rate = Some(bits_per_s.clamp(1, MAX_RATE));
        self.config.rate = self.spec.rate_limit();
        self.write_config()
    }

    /// Changes the duplicate rate while running (ramps).
    pub fn set_duplicate_percent(&mut self, percent: f64) -> Result<()> {
        self.spec.duplicate = Some(percent);
        self.config.mangle.duplicate_threshold = percent_to_threshold(percent);
        self.write_config()
    }

    /// Changes the corrupt rate while running (ramps).
    pub fn set_corrupt_percent(&mut self, percent: f64) -> Result<()> {
        self.spec.corrupt = Some(percent);
        self.config.mangle.corrupt_threshold = percent_to_threshold(percent);
        self.write_config()
    }

    fn write_config(&mut self) -> Result<()> {
        Array::<_, NetConfig>::try_from(self.ebpf.map_mut("NET_CONFIG").context("map NET_CONFIG")?)?
            .set(0, self.config, 0)
            .context("writing the net config")
    }

    /// Which directions have a program attached: (egress, ingress).
    pub fn directions(&self) -> (bool, bool) {
        (
            self.spec.needs_egress() || self.spec.needs_tc(),
            self.spec.needs_ingress() || self.spec.needs_ingress_tc(),
        )
    }

    /// The kernel's counters, summed over CPUs.
    pub fn totals(&self) -> Result<NetTotals> {
        let map = PerCpuArray::<_, NetCounters>::try_from(
            self.ebpf.map("NET_COUNTERS").context("map NET_COUNTERS")?,
        )?;
        let sum = |dir: u32| -> Result<NetCounters> {
            let mut total = NetCounters::default();
            for c in map.get(&dir, 0)?.iter() {
                total.accumulate(c);
            }
            Ok(total)
        };
        Ok(NetTotals {
            egress: sum(DIR_EGRESS)?,
            ingress: sum(DIR_INGRESS)?,
        })
    }

    /// Detaches now, reporting errors (Drop does the same silently).
    pub fn detach(mut self, journal: &mut Journal) -> Result<()> {
        self.config.deadline_ns = 0;
        let _ = self.write_config();
        let fq = std::mem::take(&mut self.fq);
        drop(self); // closes the links: the programs stop running
        let mut first_err = None;
        for f in fq {
            match qdisc::restore(&f) {
                Ok(()) => journal.remove(&Residue::Fq(f))?,
                Err(e) => {
                    first_err = first_err.or(Some(anyhow::anyhow!(
                        "restoring the qdisc of {}: {e}",
                        f.dev
                    )))
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for NetFault {
    fn drop(&mut self) {
        for f in &self.fq {
            if let Err(e) = qdisc::restore(f) {
                tracing::error!(
                    "restoring the qdisc of {}: {e}; `kchaos stop` will retry",
                    f.dev
                );
            }
        }
    }
}

/// The highest `--rate`: 1 Tbit/s (a faster link is no limit).
pub const MAX_RATE: u64 = 1_000_000_000_000;
/// The deepest `--burst`: 1 GiB.
const MAX_BURST: u64 = 1 << 30;
/// How long a packet may wait for its turn under `--rate` before it is dropped: the limit's queue.
/// A TCP sender never gets near it (its small-queue limit keeps a few packets in the qdisc); a UDP
/// sender faster than the rate loses what would wait longer, as from netem's full queue.
pub const RATE_QUEUE: Duration = Duration::from_secs(1);

/// clap's error line already names the flag and the value: keep only why.
fn parse_rate(text: &str) -> Result<u64, String> {
    units::parse_rate(text).map_err(|e| e.0)
}

/// clap's error line already names the flag and the value: keep only why.
fn parse_loss_model(text: &str) -> Result<LossModel, String> {
    LossModel::parse(text).map_err(|e| {
        let prefix = format!("--loss-model {text}: ");
        e.0.strip_prefix(&prefix).unwrap_or(&e.0).to_owned()
    })
}

fn fill_peers(ebpf: &mut Ebpf, map: &str, peers: &[Peer]) -> Result<()> {
    let mut trie = LpmTrie::<_, PeerKey, u8>::try_from(
        ebpf.map_mut(map).with_context(|| format!("map {map}"))?,
    )?;
    for p in peers {
        let (bits, key) = p.key();
        trie.insert(&Key::new(bits, key), 1, 0)
            .with_context(|| format!("adding {p} to {map}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> NetArgs {
        NetArgs::default()
    }

    #[test]
    fn needs_a_fault() {
        assert!(
            NetSpec::from_args(&args())
                .unwrap_err()
                .to_string()
                .contains("nothing to inject")
        );
    }

    #[test]
    fn drop_follows_direction() {
        let mut a = args();
        a.percent = Some(50.0);
        let c = NetSpec::from_args(&a).unwrap().config();
        assert_eq!(
            (c.egress.drop_threshold, c.ingress.drop_threshold),
            (1 << 31, 0)
        );
        a.direction = Direction::Both;
        let c = NetSpec::from_args(&a).unwrap().config();
        assert_eq!(
            (c.egress.drop_threshold, c.ingress.drop_threshold),
            (1 << 31, 1 << 31)
        );
        assert_eq!(
            NetSpec::from_args(&a).unwrap().features().0 & FEAT_FILTER,
            0,
            "a bare drop parses no headers"
        );
        assert_eq!(c.deadline_ns, 0, "not armed until the loader arms it");
    }

    #[test]
    fn filters_set_flags() {
        let mut a = args();
        a.partitions = vec!["10.0.0.1:80".into()];
        a.dsts = vec!["10.0.0.0/8".into()];
        a.proto = Some(Proto::Udp);
        let s = NetSpec::from_args(&a).unwrap();
        let c = s.config();
        assert_eq!(c.filter.flags, FILTER_DST | FILTER_PARTITION);
        assert_eq!(c.filter.proto, PROTO_UDP);
        assert_ne!(s.features().0 & FEAT_FILTER, 0, "a filter parses headers");
        assert!(s.needs_egress() && s.needs_ingress());
    }

    #[test]
    fn an_effect_free_fault_is_bad_input() {
        let mut a = args();
        a.delay = Some(Duration::ZERO);
        assert_eq!(
            NetSpec::from_args(&a).unwrap_err().to_string(),
            "--delay 0s injects nothing: give e.g. --delay 50ms, or add --percent PCT or --partition"
        );
        a.jitter = Some(Duration::ZERO);
        assert!(
            NetSpec::from_args(&a).is_err(),
            "a zero jitter adds nothing"
        );
        // With another effect a zero delay is harmless; --percent 0 attaches idle, as documented.
        a.percent = Some(0.0);
        assert!(NetSpec::from_args(&a).is_ok());
        let mut a = args();
        a.jitter = Some(Duration::from_millis(5));
        assert!(
            NetSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .starts_with("--jitter 5ms needs --delay")
        );
    }

    #[test]
    fn features_are_what_the_spec_uses() {
        let mut a = args();
        a.percent = Some(1.0);
        assert_eq!(NetSpec::from_args(&a).unwrap().features(), (FEAT_DROP, 0));
        a.drop_correlation = Some(25.0);
        let s = NetSpec::from_args(&a).unwrap();
        assert_eq!(s.features(), (FEAT_LOSS_CHAIN, 0));
        assert_eq!(s.config().egress.drop_threshold, 0, "the chain decides");
        let mut a = args();
        a.loss_model = Some(LossModel::parse("gemodel:1,30").unwrap());
        a.direction = Direction::Both;
        a.proto = Some(Proto::Udp);
        a.delay = Some(Duration::from_millis(5));
        let s = NetSpec::from_args(&a).unwrap();
        assert_eq!(
            s.features(),
            (
                FEAT_FILTER | FEAT_LOSS_CHAIN | FEAT_DELAY,
                FEAT_FILTER | FEAT_LOSS_CHAIN
            )
        );
        assert!(s.needs_egress() && s.needs_ingress());
        a.percent = Some(1.0);
        assert!(
            NetSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .contains("both decide loss")
        );
    }

    #[test]
    fn delay_rules() {
        let mut a = args();
        a.delay = Some(Duration::from_millis(10));
        // On ingress: the TC program on the host side of the target's veth, no cgroup program.
        a.direction = Direction::Ingress;
        let s = NetSpec::from_args(&a).unwrap();
        let c = s.config();
        assert_eq!((c.egress.delay_ns, c.ingress.delay_ns), (0, 10_000_000));
        assert!(s.needs_ingress_tc() && !s.needs_egress() && !s.needs_ingress());
        assert_eq!(s.features(), (0, 0));
        assert_eq!(s.ingress_tc_features(), FEAT_DELAY | FEAT_TC_COUNTS_SEEN);
        a.direction = Direction::Both;
        let c = NetSpec::from_args(&a).unwrap().config();
        assert_eq!(
            (c.egress.delay_ns, c.ingress.delay_ns),
            (10_000_000, 10_000_000)
        );
        a.reorder = Some(5.0);
        assert!(
            NetSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .contains("use --direction egress with them")
        );
        a.reorder = None;
        a.direction = Direction::Egress;
        a.jitter = Some(Duration::from_millis(20));
        assert!(NetSpec::from_args(&a).is_err());
        a.jitter = Some(Duration::from_millis(2));
        let c = NetSpec::from_args(&a).unwrap().config();
        assert_eq!(
            (c.egress.delay_ns, c.egress.jitter_ns, c.ingress.delay_ns),
            (10_000_000, 2_000_000, 0)
        );
    }

    #[test]
    fn shape_rules_and_features() {
        let mut a = args();
        a.delay = Some(Duration::from_millis(50));
        a.delay_distribution = Some(Distribution::Normal);
        assert!(
            NetSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .starts_with("--delay-distribution normal needs --jitter")
        );
        a.jitter = Some(Duration::from_millis(10));
        a.delay_correlation = Some(25.0);
        a.reorder = Some(5.0);
        a.reorder_gap = Some(3);
        let s = NetSpec::from_args(&a).unwrap();
        assert_eq!(
            s.features().0,
            FEAT_DELAY | FEAT_DELAY_TABLE | FEAT_DELAY_CORRELATION | FEAT_REORDER
        );
        let c = s.config();
        assert_eq!(c.delay_shape.reorder_gap, 3);
        assert_eq!(c.delay_shape.correlation, percent_to_threshold(25.0));
        assert!(
            s.describe()
                .contains("±10ms normal correlation 25%, reorder 5% gap 3")
        );
        a.reorder_gap = Some(0);
        assert!(
            NetSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .contains("--reorder-gap 0")
        );
        let mut a = args();
        a.percent = Some(1.0);
        a.reorder = Some(5.0);
        assert!(
            NetSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .starts_with("--reorder 5 needs --delay")
        );
    }

    #[test]
    fn rate_rules_and_config() {
        let mut a = args();
        a.burst = Some(1000);
        assert!(
            NetSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .starts_with("--burst 1000 needs --rate")
        );
        a.rate = Some(8_000_000);
        let s = NetSpec::from_args(&a).unwrap();
        assert_eq!(s.features().0, FEAT_RATE);
        assert!(s.needs_fq());
        let r = s.config().rate;
        // 8 Mbit/s: a microsecond a byte; a 1000-byte bucket is a millisecond.
        assert_eq!(r.ns_per_byte, 1000 << RATE_SHIFT);
        assert_eq!(r.burst_ns, 1_000_000);
        assert_eq!(r.queue_ns, 1_000_000_000);
        // On ingress the TC program on the host-side veth paces, not the cgroup program.
        a.direction = Direction::Ingress;
        let s = NetSpec::from_args(&a).unwrap();
        assert_eq!(s.features(), (0, 0));
        assert!(s.needs_ingress_tc() && !s.needs_fq_in_targets());
        assert_eq!(
            s.ingress_tc_features() & (FEAT_RATE | FEAT_DELAY),
            FEAT_RATE
        );
        // Both ways: each direction its own bucket; per peer parses the headers for the address.
        a.direction = Direction::Both;
        a.rate_per_peer = true;
        let s = NetSpec::from_args(&a).unwrap();
        assert_eq!(s.features().0, FEAT_RATE | FEAT_RATE_PER_PEER);
        assert_eq!(
            s.ingress_tc_features() & (FEAT_RATE | FEAT_RATE_PER_PEER | FEAT_FILTER),
            FEAT_RATE | FEAT_RATE_PER_PEER
        );
        assert!(s.describe().contains("per peer (both ways)"));
        a.direction = Direction::Egress;
        a.rate = None;
        a.burst = None;
        assert!(
            NetSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .starts_with("--rate-per-peer needs --rate")
        );
        a.rate_per_peer = false;
        a.rate = Some(MAX_RATE + 1);
        assert!(
            NetSpec::from_args(&a)
                .unwrap_err()
                .to_string()
                .contains("allowed is up to")
        );
    }
}
