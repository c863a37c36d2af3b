//! The `net` kind: drop, EDT delay and partitions on the target cgroups' traffic (cgroup_skb programs;
//! kernel side in chaos-ebpf/src/net.rs), duplicate and corrupt (a tcx program on the target's
//! devices: chaos-ebpf/src/net_tc.rs).

pub mod delay;
pub mod fault;
pub mod ingress;
pub mod loss;
pub mod peers;
pub mod tc;
mod yaml;

pub use self::fault::{Direction, NetArgs, NetFault, NetSpec, NetTotals, Proto};

use std::{path::Path, time::Duration};

use anyhow::Result;
use chaos_common::NetCounters;

use crate::{
    engine::journal::Journal,
    engine::targets::Target,
    error::BadInput,
    experiment::{fields::Ctx, review::Risk, yaml::Node},
    kind::{Active, Counters, Kind, MetricMap, MonkeyCaps, TargetFinding, Unit},
    units::pct,
};

pub const EXAMPLES: &str = "Examples:\n  kchaos net --cgroup /sys/fs/cgroup/app --percent 30 --duration 10s\n  \
kchaos net --cgroup app --percent 1.5 --proto udp --port 53 --direction both\n  \
kchaos net --cgroup app --percent 5 --drop-correlation 50   (bursty loss, same rate)\n  \
kchaos net --cgroup app --loss-model gemodel:1,30   (Gilbert-Elliott: bursts of 1/0.3 packets)\n  \
kchaos net --cgroup app --delay 50ms --jitter 10ms --dst 10.0.0.0/8   (needs sch_fq)\n  \
kchaos net --cgroup app --delay 100ms --jitter 20ms --delay-distribution pareto --reorder 5\n  \
kchaos net --cgroup app --duplicate 1 --corrupt 0.1 --proto tcp   (tcx, kernel 6.6+)\n  \
kchaos net --cgroup app --rate 10mbit --burst 64k   (a 10 Mbit/s link; needs sch_fq)\n  \
kchaos net --pid 4242 --partition 10.0.0.7:5432 --partition 10.0.1.0/24";

impl Kind for NetSpec {
    const YAML_FIELDS: &'static [&'static str] = yaml::NET_FIELDS;
    const NAME: &'static str = "net";
    const PARAMS: &'static [(&'static str, Unit)] = &[
        ("percent", Unit::Percent),
        ("delay", Unit::Duration),
        ("duplicate", Unit::Percent),
        ("corrupt", Unit::Percent),
        ("rate", Unit::Rate),
        ("reorder", Unit::Percent),
    ];
    const RENAMED: &'static [(&'static str, &'static str)] = &[("drop", "percent")];
    const MONKEY_TYPES: &'static [&'static str] = &["net-drop", "net-delay", "net-partition"];
    const METRICS: &'static [MetricMap] = &[
        MetricMap::counter(
            "direction",
            "seen",
            "net_packets_seen",
            "Packets of the target cgroups the fault's programs saw, per direction.",
        ),
        MetricMap::counter(
            "direction",
            "matched",
            "net_packets_matched",
            "Packets that matched the fault's filter (peers, ports), per direction.",
        ),
        MetricMap::counter(
            "direction",
            "dropped",
            "net_packets_dropped",
            "Packets the fault dropped (--percent), per direction.",
        ),
        MetricMap::counter(
            "direction",
            "partitioned",
            "net_packets_partitioned",
            "Packets the fault dropped to or from a partitioned peer, per direction.",
        ),
        MetricMap::counter(
            "direction",
            "delayed",
            "net_packets_delayed",
            "Packets the fault delayed (--delay), per direction.",
        ),
        MetricMap::counter(
            "direction",
            "delay_ns_total",
            "net_delay_seconds",
            "Delay the fault added over all delayed packets, per direction.",
        )
        .scaled(1e-9),
        MetricMap::counter(
            "direction",
            "reordered",
            "net_packets_reordered",
            "Packets the fault sent at once instead of delaying them (--reorder), per direction.",
        ),
        MetricMap::counter(
            "direction",
            "paced",
            "net_packets_paced",
            "Packets the rate limit gave a later departure time (--rate), per direction.",
        ),
        MetricMap::counter(
            "direction",
            "rate_dropped",
            "net_packets_rate_dropped",
            "Packets the rate limit dropped: their wait would have exceeded its 1 s queue.",
        ),
        MetricMap::counter(
            "direction",
            "rate_bytes",
            "net_rate_bytes",
            "Bytes the rate limit counted (IP header and payload of each segment), per direction.",
        ),
        MetricMap::counter(
            "direction",
            "duplicated",
            "net_packets_duplicated",
            "Packets the fault sent twice (--duplicate), per direction.",
        ),
        MetricMap::counter(
            "direction",
            "corrupted",
            "net_packets_corrupted",
            "Packets the fault flipped a payload bit of (--corrupt), per direction.",
        ),
    ];
    type Args = NetArgs;
    type Active = NetFault;

    fn from_args(args: &NetArgs) -> Result<Self, BadInput> {
        if args.drop.is_some() {
            crate::output::deprecated("--drop PCT", "--percent PCT");
        }
        NetSpec::from_args(args)
    }

    fn from_yaml(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<Self> {
        yaml::parse_net(ctx, node, path, ramped)
    }

    fn describe(&self) -> String {
        NetSpec::describe(self)
    }

    fn check_param(&self, param: &str, value: f64) -> Result<(), String> {
        match param {
            "percent" | "duplicate" | "corrupt" | "reorder" if (0.0..=100.0).contains(&value) => {
                Ok(())
            }
            "percent" | "duplicate" | "corrupt" | "reorder" => {
                Err(format!("{value}% is not allowed: 0 to 100"))
            }
            "delay" if value <= 5.0 && Duration::from_secs_f64(value.max(0.0)) >= self.jitter => {
                Ok(())
            }
            "rate" if (1.0..=fault::MAX_RATE as f64).contains(&value) => Ok(()),
            "rate" => Err(format!(
                "{} is not allowed: 1bit/s to {}",
                Unit::Rate.format(value),
                Unit::Rate.format(fault::MAX_RATE as f64)
            )),
            "delay" => Err(format!(
                "{} is not allowed: up to 5s (sch_fq's horizon drops later packets) and no less \
                 than the jitter",
                Unit::Duration.format(value)
            )),
            other => Err(format!(
                "a net fault cannot ramp '{other}': allowed are percent (drop), delay, rate, \
                 duplicate, corrupt, reorder"
            )),
        }
    }

    fn prepare_ramp(&mut self, param: &str, start: f64) {
        match param {
            "percent" => self.drop_percent = Some(start),
            "delay" => self.delay = Duration::from_secs_f64(start.max(0.0)),
            "rate" => self.rate = Some(start.round().max(1.0) as u64),
            "duplicate" => self.duplicate = Some(start),
            "reorder" => self.reorder = Some(start),
            "corrupt" => self.corrupt = Some(start),
            _ => {}
        }
    }

    fn intensities(&self) -> Vec<(&'static str, f64)> {
        let mut v = Vec::new();
        if let Some(d) = self.drop_percent {
            v.push(("percent", d));
        }
        if !self.partitions.is_empty() {
            // Everything to a partitioned peer is lost: as intense as a drop can be.
            v.push(("percent", 100.0));
        }
        if !self.delay.is_zero() {
            v.push(("delay", (self.delay + self.jitter).as_secs_f64()));
        }
        if let Some(r) = self.rate {
            v.push(("rate", r as f64));
        }
        if let Some(p) = self.duplicate {
            v.push(("duplicate", p));
        }
        if let Some(p) = self.reorder {
            v.push(("reorder", p));
        }
        if let Some(p) = self.corrupt {
            v.push(("corrupt", p));
        }
        v
    }

    fn overlap_conflict(&self) -> Option<&'static str> {
        Some(
            "two net faults on one target at once would stack (each packet drawn twice, delays \
             added): merge them into one fault, or move one so they do not overlap",
        )
    }

    fn target_findings(&self, _target: &Path, _cgroup_root: &Path) -> Vec<TargetFinding> {
        Vec::new()
    }

    fn rollback_advice(&self) -> Option<(Risk, String)> {
        (!self.partitions.is_empty()).then(|| {
            (
                Risk::Low,
                "a partition can leave the target with broken connections or failed-over state; \
                 kchaos restores the network, not the application"
                    .into(),
            )
        })
    }

    fn random(
        monkey_type: &str,
        caps: &MonkeyCaps,
        draw: &mut dyn FnMut() -> f64,
    ) -> Result<Self, BadInput> {
        let mut args = NetArgs::default();
        match monkey_type {
            "net-drop" => {
                // Whole tenths of a percent, at least 1%.
                let p = 1.0 + draw() * (caps.max_drop_percent - 1.0).max(0.0);
                args.percent = Some((p * 10.0).round() / 10.0);
            }
            "net-delay" => {
                let max_ms = caps.max_delay.as_millis().max(1) as f64;
                let ms = (1.0 + draw() * (max_ms - 1.0)).round();
                args.delay = Some(Duration::from_millis(ms as u64));
            }
            _ => {
                if caps.peers.is_empty() {
                    return Err(BadInput::new(
                        "--types net-partition needs --peer CIDR[:PORT]: which peer to cut the \
                         target off from",
                    ));
                }
                let i = ((draw() * caps.peers.len() as f64) as usize).min(caps.peers.len() - 1);
                args.partitions = vec![caps.peers[i].clone()];
            }
        }
        NetSpec::from_args(&args)
    }

    fn preflight(&self, targets: &[Target]) -> Result<(), BadInput> {
        NetFault::preflight(self, targets)
    }

    fn prepare(&self, targets: &[Target], journal: &mut Journal) -> Result<NetFault> {
        NetFault::attach(self.clone(), targets, journal)
    }

    fn injected_events(counters: &Counters) -> u64 {
        counters
            .iter()
            .filter(|(k, _)| {
                [
                    ".dropped",
                    ".partitioned",
                    ".delayed",
                    ".reordered",
                    ".paced",
                    ".rate_dropped",
                    ".duplicated",
                    ".corrupted",
                ]
                .iter()
                .any(|what| k.ends_with(what))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn live_line(counters: &Counters) -> String {
        let line = |dir: &str| {
            let n = |what: &str| counters.get(&format!("{dir}.{what}")).copied().unwrap_or(0);
            let (matched, dropped) = (n("matched"), n("dropped"));
            let mut s = format!("{dir} seen {}", n("seen"));
            // A partitioned packet is dropped before the other faults' filter: it is not among the
            // matched, and the drop percentage is not about it.
            if n("partitioned") > 0 {
                s += &format!(
                    " partitioned {} (every packet to or from a cut peer)",
                    n("partitioned")
                );
                if dropped > 0 {
                    s += &format!(
                        ", of the others matched {matched} dropped {dropped} ({:.1}%)",
                        pct(dropped, matched)
                    );
                }
            } else {
                s += &format!(
                    " matched {matched} dropped {dropped} ({:.1}%)",
                    pct(dropped, matched)
                );
            }
            if n("rate_bytes") > 0 {
                s += &format!(
                    " paced {} rate-dropped {} ({:.2} MB sent)",
                    n("paced"),
                    n("rate_dropped"),
                    n("rate_bytes") as f64 / 1e6
                );
            }
            for what in ["reordered", "duplicated", "corrupted"] {
                if n(what) > 0 {
                    s += &format!(" {what} {} ({:.1}%)", n(what), pct(n(what), matched));
                }
            }
            if n("delayed") > 0 {
                s += &format!(
                    " delayed {} (mean {:.2} ms)",
                    n("delayed"),
                    n("delay_ns_total") as f64 / n("delayed") as f64 / 1e6
                );
            }
            s
        };
        ["egress", "ingress"]
            .into_iter()
            .filter(|dir| {
                let prefix = format!("{dir}.");
                counters.keys().any(|k| k.starts_with(&prefix))
            })
            .map(line)
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// The kernel's counters of one direction, flat.
fn direction_counters(m: &mut Counters, dir: &str, c: &NetCounters) {
    for (name, v) in [
        ("seen", c.seen),
        ("matched", c.matched),
        ("dropped", c.dropped),
        ("partitioned", c.partitioned),
        ("delayed", c.delayed),
        ("delay_ns_total", c.delay_ns_total),
        ("duplicated", c.duplicated),
        ("corrupted", c.corrupted),
        ("paced", c.paced),
        ("rate_dropped", c.rate_dropped),
        ("rate_bytes", c.rate_bytes),
        ("reordered", c.reordered),
    ] {
        m.insert(format!("{dir}.{name}"), v);
    }
}

impl Active for NetFault {
    fn arm(&mut self, deadline_ns: u64, _journal: &mut Journal) -> Result<()> {
        NetFault::arm(self, deadline_ns)
    }

    fn renew(&mut self, deadline_ns: u64) -> Result<()> {
        NetFault::arm(self, deadline_ns)
    }

    fn set_param(&mut self, param: &str, value: f64) -> Result<()> {
        match param {
            "percent" => self.set_drop_percent(value.clamp(0.0, 100.0)),
            "delay" => self.set_delay(Duration::from_secs_f64(value.max(0.0))),
            "rate" => self.set_rate(value.round().max(1.0) as u64),
            "duplicate" => self.set_duplicate_percent(value.clamp(0.0, 100.0)),
            "reorder" => self.set_reorder_percent(value.clamp(0.0, 100.0)),
            "corrupt" => self.set_corrupt_percent(value.clamp(0.0, 100.0)),
            other => anyhow::bail!("a net fault has no parameter '{other}'"),
        }
    }

    fn counters(&self) -> Result<Counters> {
        let t = self.totals()?;
        let mut m = Counters::new();
        // Only the directions a program watches: an unattached one would read as "seen 0".
        let (egress, ingress) = self.directions();
        if egress {
            direction_counters(&mut m, "egress", &t.egress);
        }
        if ingress {
            direction_counters(&mut m, "ingress", &t.ingress);
        }
        Ok(m)
    }

    fn attachments(&self) -> Vec<String> {
        self.attachments.clone()
    }

    fn disarm(&mut self, _journal: &mut Journal) -> Result<()> {
        NetFault::arm(self, 0)
    }

    fn undo(self: Box<Self>, journal: &mut Journal) -> Result<()> {
        NetFault::detach(*self, journal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_live_line_does_not_read_as_no_loss() {
        let counters: Counters = [
            ("egress.seen".to_owned(), 308),
            ("egress.matched".to_owned(), 300),
            ("egress.partitioned".to_owned(), 8),
        ]
        .into();
        let line = NetSpec::live_line(&counters);
        assert!(!line.contains("0.0%"), "{line}");
        assert_eq!(
            line,
            "egress seen 308 partitioned 8 (every packet to or from a cut peer)"
        );
    }
}
