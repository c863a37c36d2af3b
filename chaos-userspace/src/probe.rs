//! `kchaos probe`: what this kernel offers (decided in capabilities.rs) and, for each syscall
//! operation, the backend `kchaos syscall --backend auto` would pick, worked out by the function the
//! syscall fault chooses with.

use anyhow::Result;
use serde::ser::{SerializeMap as _, SerializeStruct as _};

use crate::{
    engine::capabilities::{Capabilities, Capability},
    kinds::syscall::{Backend, BackendSupport, auto_backends},
};

/// What `kchaos probe` prints, and `kchaos probe --json` serialises.
#[derive(Debug, serde::Serialize)]
pub struct ProbeReport {
    pub kernel: String,
    pub capabilities: Vec<Capability>,
    /// Operation name -> {"backend": "cgroup" | "lsm" | "kprobe" | null, "reason": null | why none}.
    pub syscall_backends: SyscallBackends,
}

/// Each syscall operation's backend under `--backend auto`, in the order `kchaos syscall --help`
/// lists them.
#[derive(Debug, PartialEq, Eq)]
pub struct SyscallBackends(pub Vec<(&'static str, Result<Backend, String>)>);

struct Choice<'a>(&'a Result<Backend, String>);

impl serde::Serialize for Choice<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Choice", 2)?;
        st.serialize_field("backend", &self.0.as_ref().ok())?;
        st.serialize_field("reason", &self.0.as_ref().err())?;
        st.end()
    }
}

impl serde::Serialize for SyscallBackends {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (op, choice) in &self.0 {
            map.serialize_entry(op, &Choice(choice))?;
        }
        map.end()
    }
}

impl ProbeReport {
    pub fn new(caps: &Capabilities) -> Self {
        Self {
            kernel: caps.kernel.clone(),
            capabilities: caps.rows(),
            syscall_backends: SyscallBackends(auto_backends(&BackendSupport::from_capabilities(
                caps,
            ))),
        }
    }

    /// The table.
    pub fn print(&self) {
        println!("kchaos probe: kernel {}", self.kernel);
        for c in &self.capabilities {
            let mark = if c.available { "yes" } else { "no " };
            println!("  {mark}  {:<36} {}", c.name, c.detail);
            println!("       {:<36} -> {}", "", c.enables);
        }
        println!("  syscall operations: the backend `kchaos syscall --backend auto` picks");
        for (op, choice) in &self.syscall_backends.0 {
            match choice {
                Ok(b) => println!("       {op:<36} {b}"),
                Err(why) => println!("       {op:<36} none ({why})"),
            }
        }
    }
}

/// `kchaos probe [--json]`.
pub fn run(json: Option<&std::path::Path>) -> Result<()> {
    let report = ProbeReport::new(&Capabilities::detect());
    if let Some(path) = json {
        crate::output::print_or_write_json(path, &report)?;
    } else {
        report.print();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::syscall::{OPS, SyscallArgs, SyscallSpec, fault::plan};

    /// A kernel with the cgroup hooks and bpf_override_return, whose BPF LSM loads but is not an
    /// active LSM (the mismatch `kchaos probe` once reported as "yes").
    fn faked() -> Capabilities {
        let yes = |s: &str| Ok(s.to_owned());
        Capabilities {
            kernel: "6.12.0-test".into(),
            btf: yes("/sys/kernel/btf/vmlinux"),
            cgroup_v2: yes("mounted at /sys/fs/cgroup"),
            cgroup_skb: yes("a test program loaded"),
            cgroup_sock_addr: yes("loaded"),
            sch_fq: Err(
                "replacing the root qdisc of lo with fq: Specified qdisc kind is unknown (ENOENT)"
                    .into(),
            ),
            clsact: yes("ok"),
            tcx: yes("ok"),
            kprobes: yes("the kprobe PMU exists"),
            bpf_override_return: yes("loaded"),
            bpf_lsm: Err("`bpf` is not in the active LSM list (lockdown,yama)".into()),
            trampolines: yes("a test program loaded"),
        }
    }

    fn spec(op: &str) -> SyscallSpec {
        SyscallSpec::from_args(&SyscallArgs {
            syscalls: vec![op.into()],
            errno: "EIO".into(),
            ..Default::default()
        })
        .unwrap()
    }

    /// Every operation's probe answer is what plan() decides for a plain `--syscall OP`.
    fn assert_agree(caps: &Capabilities) -> ProbeReport {
        let report = ProbeReport::new(caps);
        let support = BackendSupport::from_capabilities(caps);
        assert_eq!(report.syscall_backends.0.len(), OPS.len());
        for (op, choice) in &report.syscall_backends.0 {
            let planned = plan(&spec(op), &support);
            match (choice, planned) {
                (Ok(b), Ok(p)) => assert_eq!(p, vec![(spec(op).ops[0], *b)], "{op}"),
                (Err(why), Err(e)) => assert!(e.to_string().contains(why.as_str()), "{op}: {e}"),
                (c, p) => panic!("{op}: probe says {c:?}, plan says {p:?}"),
            }
        }
        report
    }

    #[test]
    fn probe_and_plan_agree() {
        let caps = faked();
        let report = assert_agree(&caps);
        let choice = |op: &str| {
            report
                .syscall_backends
                .0
                .iter()
                .find(|(o, _)| *o == op)
                .map(|(_, c)| c.clone())
                .unwrap()
        };
        assert_eq!(choice("connect"), Ok(Backend::Cgroup));
        // No active BPF LSM: open falls through to the kprobe backend.
        assert_eq!(choice("open"), Ok(Backend::Kprobe));
        let row = |name: &str| {
            report
                .capabilities
                .iter()
                .find(|c| c.name == name)
                .unwrap()
                .clone()
        };
        assert!(!row("BPF LSM").available);
        assert!(row("BPF LSM").detail.contains("active LSM list"));

        // Without kprobes too, open is refused, and the reason names the LSM list.
        let caps = Capabilities {
            kprobes: Err("no kprobes".into()),
            bpf_override_return: Err("no kprobes".into()),
            ..faked()
        };
        let report = assert_agree(&caps);
        let open = &report
            .syscall_backends
            .0
            .iter()
            .find(|(o, _)| *o == "open")
            .unwrap()
            .1;
        let why = open.as_ref().unwrap_err();
        assert!(
            why.contains("active LSM list") && why.contains("no kprobes"),
            "{why}"
        );

        // With an active BPF LSM, open and fsync go to lsm and kprobe.
        let caps = Capabilities {
            bpf_lsm: Ok("loaded; `bpf` is an active LSM".into()),
            ..faked()
        };
        let report = assert_agree(&caps);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["syscall_backends"]["open"]["backend"], "lsm");
        assert_eq!(json["syscall_backends"]["fsync"]["backend"], "kprobe");
        assert_eq!(
            json["syscall_backends"]["connect"]["reason"],
            serde_json::Value::Null
        );
        // Today's fields stay: each capability's name, available, detail, enables.
        let first = &json["capabilities"][0];
        for k in ["name", "available", "detail", "enables"] {
            assert!(first.get(k).is_some(), "{k} missing: {first}");
        }
        assert_eq!(json["kernel"], "6.12.0-test");
    }
}
