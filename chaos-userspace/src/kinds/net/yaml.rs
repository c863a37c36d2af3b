//! The `net:` block of a scenario fault: the fields of `kchaos net`, each checked where it is written.

use std::time::Duration;

use super::{Direction, NetArgs, NetSpec, Proto, peers::Peer};
use crate::experiment::{fields::Ctx, yaml::Node};

pub const NET_FIELDS: &[&str] = &[
    "percent",
    "drop",
    "drop_correlation",
    "loss_model",
    "delay",
    "jitter",
    "delay_distribution",
    "delay_correlation",
    "reorder",
    "reorder_gap",
    "rate",
    "burst",
    "rate_per_peer",
    "duplicate",
    "corrupt",
    "partition",
    "dst",
    "port",
    "proto",
    "direction",
];

/// Reads `net: {...}`; `ramped` names the parameters a ramp of the fault will set.
pub fn parse_net(ctx: &mut Ctx, node: &Node, path: &str, ramped: &[String]) -> Option<NetSpec> {
    let f = ctx.map(node, path, NET_FIELDS)?;
    let before = ctx.errors.len();
    let mut args = NetArgs::default();
    if let Some(key) = ctx.renamed(&f, "percent", "drop")
        && let Some(n) = f.value(key)
    {
        args.percent = ctx.percent(n, &f.path_of(key));
    }
    if let Some(n) = f.value("drop_correlation") {
        args.drop_correlation = ctx.percent(n, &f.path_of("drop_correlation"));
    }
    if let Some(n) = f.value("loss_model") {
        let p = f.path_of("loss_model");
        if let Some(text) = ctx.text(n, &p) {
            match super::loss::LossModel::parse(&text) {
                Ok(m) => args.loss_model = Some(m),
                Err(e) => ctx.err(n.mark, &p, e.0.replace("--loss-model", "loss_model")),
            }
        }
    }
    if let Some(n) = f.value("delay") {
        args.delay = ctx.duration(n, &f.path_of("delay"));
    }
    if let Some(n) = f.value("jitter") {
        args.jitter = ctx.duration(n, &f.path_of("jitter"));
    }
    if let Some(n) = f.value("delay_distribution") {
        let p = f.path_of("delay_distribution");
        if let Some(choice) = ctx.choice(n, &p, super::delay::Distribution::NAMES) {
            args.delay_distribution = super::delay::Distribution::parse(&choice);
        }
    }
    if let Some(n) = f.value("delay_correlation") {
        args.delay_correlation = ctx.percent(n, &f.path_of("delay_correlation"));
    }
    if let Some(n) = f.value("reorder") {
        args.reorder = ctx.percent(n, &f.path_of("reorder"));
    }
    if let Some(n) = f.value("reorder_gap") {
        let p = f.path_of("reorder_gap");
        match ctx.uint(n, &p, u64::from(u32::MAX)) {
            Some(0) => ctx.err(n.mark, &p, "reorder_gap 0 is not allowed: 1 or more"),
            Some(v) => args.reorder_gap = Some(v as u32),
            None => {}
        }
    }
    if let Some(n) = f.value("rate") {
        args.rate = ctx.rate(n, &f.path_of("rate"));
    }
    if let Some(n) = f.value("burst") {
        args.burst = ctx.size(n, &f.path_of("burst"));
    }
    if let Some(n) = f.value("rate_per_peer") {
        args.rate_per_peer = ctx.boolean(n, &f.path_of("rate_per_peer")).unwrap_or(false);
    }
    if let Some(n) = f.value("duplicate") {
        args.duplicate = ctx.percent(n, &f.path_of("duplicate"));
    }
    if let Some(n) = f.value("corrupt") {
        args.corrupt = ctx.percent(n, &f.path_of("corrupt"));
    }
    for (key, allow_port) in [("partition", true), ("dst", false)] {
        if let Some(n) = f.value(key) {
            let p = f.path_of(key);
            for (text, mark) in ctx.strings(n, &p) {
                match Peer::parse(&text, key, allow_port) {
                    Ok(_) => {
                        if key == "partition" {
                            args.partitions.push(text)
                        } else {
                            args.dsts.push(text)
                        }
                    }
                    Err(e) => ctx.err(mark, &p, e.0),
                }
            }
        }
    }
    if let Some(n) = f.value("port") {
        let p = f.path_of("port");
        match ctx.uint(n, &p, 65535) {
            Some(0) => ctx.err(n.mark, &p, "port 0 is not allowed: write 1 to 65535"),
            Some(v) => args.port = Some(v as u16),
            None => {}
        }
    }
    if let Some(n) = f.value("proto") {
        args.proto = match ctx
            .choice(n, &f.path_of("proto"), &["tcp", "udp", "icmp"])?
            .as_str()
        {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => Some(Proto::Icmp),
        };
    }
    if let Some(n) = f.value("direction") {
        args.direction = match ctx
            .choice(n, &f.path_of("direction"), &["egress", "ingress", "both"])?
            .as_str()
        {
            "ingress" => Direction::Ingress,
            "both" => Direction::Both,
            _ => Direction::Egress,
        };
    }
    if ctx.errors.len() > before {
        return None;
    }
    // A ramped parameter needs its programs attached even when the fault names no fixed value; the
    // ramp sets the real value before the fault is armed.
    if ramped.iter().any(|p| p == "percent") && args.percent.is_none() {
        args.percent = Some(0.0);
    }
    if ramped.iter().any(|p| p == "rate") && args.rate.is_none() {
        // The ramp's first step sets the real rate before the fault is armed.
        args.rate = Some(super::fault::MAX_RATE);
    }
    if ramped.iter().any(|p| p == "reorder") && args.reorder.is_none() {
        args.reorder = Some(0.0);
    }
    if ramped.iter().any(|p| p == "duplicate") && args.duplicate.is_none() {
        args.duplicate = Some(0.0);
    }
    if ramped.iter().any(|p| p == "corrupt") && args.corrupt.is_none() {
        args.corrupt = Some(0.0);
    }
    if ramped.iter().any(|p| p == "delay") && args.delay.is_none_or(|d| d.is_zero()) {
        args.delay = Some(Duration::from_millis(1).max(args.jitter.unwrap_or_default()));
    }
    match NetSpec::from_args(&args) {
        Ok(spec) => Some(spec),
        Err(e) => {
            // The checks across fields speak in flags (--delay); here they are fields.
            let text =
                e.0.replace("--drop-correlation", "drop_correlation")
                    .replace("--loss-model", "loss_model")
                    .replace("--delay-distribution", "delay_distribution")
                    .replace("--delay-correlation", "delay_correlation")
                    .replace("--reorder-gap", "reorder_gap")
                    .replace("--", "");
            ctx.err(f.mark, path, text);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        experiment::{fields::Vars, scenario},
        kind::FaultKind,
        kinds::net::loss::LossModel,
    };

    fn net(fault: &str) -> Result<super::NetSpec, String> {
        let text = format!(
            "title: t\ntargets: [{{name: a, cgroup: x}}]\nfaults:\n  - {{name: f, at: 0s, for: 1s, \
             net: {fault}}}\n"
        );
        let s = scenario::parse("s.yaml", &text, &Vars::default()).map_err(|e| format!("{e:?}"))?;
        match &s.faults[0].kind {
            FaultKind::Net(spec) => Ok(spec.clone()),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn loss_fields() {
        let s = net("{percent: 5, drop_correlation: 25}").unwrap();
        assert_eq!(
            (s.drop_percent, s.drop_correlation),
            (Some(5.0), Some(25.0))
        );
        let s = net("{loss_model: 'gemodel:1,30'}").unwrap();
        assert_eq!(
            s.loss_model,
            Some(LossModel::parse("gemodel:1,30").unwrap())
        );
        let e = net("{loss_model: 'gemodel:1,300'}").unwrap_err();
        assert!(
            e.contains("loss_model gemodel:1,300: 300 is not a percentage"),
            "{e}"
        );
        let e = net("{drop_correlation: 25}").unwrap_err();
        assert!(e.contains("drop_correlation 25 needs percent"), "{e}");
        let e = net("{percent: 1, loss_model: 'gemodel:1'}").unwrap_err();
        assert!(e.contains("both decide loss"), "{e}");
    }

    #[test]
    fn mangle_fields() {
        let s = net("{duplicate: 1, corrupt: 0.5, proto: udp}").unwrap();
        assert_eq!((s.duplicate, s.corrupt), (Some(1.0), Some(0.5)));
        assert!(s.needs_tc());
        let e = net("{duplicate: 1, direction: ingress}").unwrap_err();
        assert!(
            e.contains("duplicate and corrupt apply to what the target sends"),
            "{e}"
        );
        let e = net("{corrupt: 120}").unwrap_err();
        assert!(e.contains("corrupt"), "{e}");
    }
}
