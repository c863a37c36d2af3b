//! What else the host did while qemu ran. Under TCG the guest's timers fire when qemu's threads get a
//! host CPU, so other work on the host makes every delay in the VM late (fq's and netem's alike) and
//! its timing tests fail for a reason that is not the product's. The VM run says so when it happens.

/// CPU time in clock ticks (USER_HZ, as /proc gives it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostCpu {
    /// Busy ticks of all CPUs (everything but idle and iowait).
    busy: u64,
    /// All ticks of all CPUs, idle included.
    total: u64,
    cpus: u64,
    /// CPU ticks of this process's children that have been waited for (qemu, once it has exited).
    children: u64,
}

/// More than this share of one core used outside qemu while it ran is worth a warning.
const BUSY_CORES: f64 = 0.25;

impl HostCpu {
    /// None where /proc cannot be read (the check is advice, never a reason to fail).
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        Self::parse(&stat, &own)
    }

    fn parse(stat: &str, own: &str) -> Option<Self> {
        let all = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = all
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal ...: guest time is counted in user already.
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count() as u64;
        // The command name may hold spaces: the fields after it start past the last ')'; cutime and
        // cstime are fields 16 and 17 of the line, the 14th and 15th after it.
        let after = own.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let children =
            fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
        Some(Self {
            busy: total.saturating_sub(idle),
            total,
            cpus: cpus.max(1),
            children,
        })
    }

    /// Cores' worth of CPU the host spent outside qemu from `before` to `self` (qemu reaped by then).
    fn others_cores(&self, before: &Self) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        let qemu = self.children.saturating_sub(before.children);
        let others = self.busy.saturating_sub(before.busy).saturating_sub(qemu);
        others as f64 / total as f64 * self.cpus as f64
    }

    /// A line for the log when other work on the host used more than `BUSY_CORES` while qemu ran.
    pub fn warning(&self, before: &Self) -> Option<String> {
        let others = self.others_cores(before);
        (others > BUSY_CORES).then(|| {
            format!(
                "VM: while qemu ran, other work on the host used {others:.2} of its {} cores: the \
                 guest's timers were late with it, so the timing tests (delay, rate, ramps) may \
                 fail for that; run the VM suite on an otherwise idle host",
                self.cpus
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  1000 0 500 8000 100 0 0 0 0 0\ncpu0 500 0 250 4000 50 0 0 0 0 0\n\
                        cpu1 500 0 250 4000 50 0 0 0 0 0\nintr 1\n";

    fn own(cutime: u64, cstime: u64) -> String {
        // Fields 1-2, then 3 (state) to 17 (cstime): a name with spaces and a ')' in it.
        format!("42 (x (a) b) S 1 1 1 0 -1 0 0 0 0 0 7 8 {cutime} {cstime} 20 0 1 0")
    }

    #[test]
    fn reads_the_host_and_the_reaped_children() {
        let c = HostCpu::parse(STAT, &own(30, 12)).unwrap();
        assert_eq!(
            c,
            HostCpu {
                busy: 1500,
                total: 9600,
                cpus: 2,
                children: 42
            }
        );
    }

    #[test]
    fn warns_only_when_others_used_the_host() {
        let before = HostCpu::parse(STAT, &own(0, 0)).unwrap();
        // 1000 ticks passed on 2 CPUs; 600 were busy, 550 of them qemu's: 0.1 of a core others'.
        let quiet = HostCpu {
            busy: before.busy + 600,
            total: before.total + 1000,
            children: 550,
            ..before
        };
        assert!(quiet.warning(&before).is_none());
        // Both CPUs busy, qemu had 1.2 cores' worth: others used 0.8.
        let busy = HostCpu {
            busy: before.busy + 1000,
            total: before.total + 1000,
            children: 600,
            ..before
        };
        let line = busy.warning(&before).unwrap();
        assert!(line.contains("0.80 of its 2 cores"), "{line}");
    }
}
