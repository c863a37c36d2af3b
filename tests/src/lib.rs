//! What the integration tests share: finding kchaos, skipping with a reason, running kchaos the way a
//! user does (a child process), and reading its JSON output.
//!
//! Each test builds its own lab (`chaos_userspace::lab`), which removes itself when dropped, also when
//! an assertion fails.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

pub use chaos_userspace::lab;

/// The kchaos binary under test: $KCHAOS_BIN (set by `cargo xtask test`), else target/release/kchaos.
pub fn kchaos() -> PathBuf {
    if let Some(p) = std::env::var_os("KCHAOS_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/kchaos");
    assert!(
        p.exists(),
        "no kchaos binary at {}: run `cargo xtask test` (it builds it)",
        p.display()
    );
    p
}

/// Which kernel the results come from (the VM suite sets a label).
pub fn kernel_label() -> String {
    std::env::var("KCHAOS_KERNEL_LABEL").unwrap_or_else(|_| {
        format!(
            "host {}",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        )
    })
}

/// True inside the test VM (emulated, so much slower than the host).
pub fn in_vm() -> bool {
    std::env::var("KCHAOS_KERNEL_LABEL").is_ok_and(|l| l.starts_with("vm"))
}

/// Datagrams per second for UDP test traffic: under emulation the veth backlog itself overflows at
/// host rates, which would add losses no fault made.
pub fn udp_rate() -> &'static str {
    if in_vm() { "3000" } else { "20000" }
}

/// Prints why a test can't run here. Callers `return` right after: the output says SKIP, never PASS.
/// Written to the stderr handle itself, which libtest does not capture, so it shows for passing tests.
pub fn skip(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIP {test} [{}]: {why}", kernel_label());
}

/// True when running as root; otherwise prints SKIP.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip(
            test,
            "needs root (loads eBPF programs, makes namespaces and cgroups)",
        );
    }
    root
}

/// A tag for lab names: unique per test process and call.
pub fn tag(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}{}",
        std::process::id() % 1000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running `kchaos` (e.g. `net`), started and waited on until it says it is armed. Dropping it kills
/// it (SIGKILL), which must itself leave nothing injecting.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub head: Vec<String>,
}

impl Running {
    /// Starts kchaos with `args` and waits (up to 20 s) for its "armed" line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, None)
    }

    /// The same, keeping its run record in `run_dir` (see [`RunDir`]).
    pub fn start_with(args: &[&str], run_dir: Option<&RunDir>) -> Self {
        let mut cmd = Command::new(kchaos());
        if let Some(d) = run_dir {
            cmd.env("KCHAOS_RUN_DIR", &d.0);
        }
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning kchaos");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut head = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    let armed = line.trim_start().starts_with("armed");
                    head.push(line);
                    if armed {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("wait");
                    panic!(
                        "kchaos {args:?} did not arm: stdout {head:?} stderr {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        Self {
            child,
            lines: rx,
            head,
        }
    }

    /// Ends it with SIGTERM and returns its exit code and everything it printed.
    pub fn terminate(mut self) -> (i32, Vec<String>) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        let mut lines = std::mem::take(&mut self.head);
        lines.extend(self.lines.try_iter());
        (status.code().unwrap_or(-1), lines)
    }

    /// Kills it with SIGKILL, as an OOM killer or a crash would.
    pub fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `argv` inside the cgroup: a shell writes its pid to cgroup.procs, then execs the program,
/// so the program is in the cgroup from its first instruction.
pub fn spawn_in(cg: &std::path::Path, argv: &[&str]) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
            cg.display()
        ))
        .arg("sh")
        .args(argv)
        .spawn()
        .expect("spawning in the cgroup")
}

/// Runs kchaos to completion.
pub fn run(args: &[&str]) -> Output {
    run_with(args, None)
}

/// The same, with its run records in `run_dir`.
pub fn run_with(args: &[&str], run_dir: Option<&RunDir>) -> Output {
    let mut cmd = Command::new(kchaos());
    if let Some(d) = run_dir {
        cmd.env("KCHAOS_RUN_DIR", &d.0);
    }
    cmd.args(args).output().expect("running kchaos")
}

/// A private directory for kchaos's run records (KCHAOS_RUN_DIR), so a test's `kchaos stop` acts on
/// that test's runs only, not on other kchaos processes of the machine. Removed on drop.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("kchaos-test-run-{}", tag("r")));
        std::fs::create_dir_all(&dir).expect("creating a run dir");
        // kchaos refuses a record directory anyone but root could write.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .expect("making the run dir root's alone");
        Self(dir)
    }

    /// Runs kchaos to completion with its records here.
    pub fn run(&self, args: &[&str]) -> Output {
        run_with(args, Some(self))
    }

    /// Starts kchaos with its records here and waits for "armed".
    pub fn start(&self, args: &[&str]) -> Running {
        Running::start_with(args, Some(self))
    }

    /// The run records (files) in it.
    pub fn records(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

impl Default for RunDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Attach types of `enum bpf_attach_type` the tests ask about.
pub mod attach_type {
    pub const INET_INGRESS: u32 = 0;
    pub const INET_EGRESS: u32 = 1;
    pub const INET_SOCK_CREATE: u32 = 2;
    pub const INET4_BIND: u32 = 8;
    pub const INET4_CONNECT: u32 = 10;
    pub const UDP4_SENDMSG: u32 = 14;
}

/// The kernel's own list (BPF_PROG_QUERY, effective) of program ids that run for sockets of `cgroup`
/// at `attach_type`. Unlike a host-wide listing, other tests' programs on other cgroups don't appear.
pub fn cgroup_programs(cgroup: &std::path::Path, attach_type: u32) -> Vec<u32> {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_F_QUERY_EFFECTIVE: u32 = 1;
    let dir = std::fs::File::open(cgroup).expect("opening the cgroup");
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_type,
        query_flags: BPF_F_QUERY_EFFECTIVE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: attr and the id buffer outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut QueryAttr,
            size_of::<QueryAttr>(),
        )
    };
    assert_eq!(rc, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    ids[..attr.prog_cnt as usize].to_vec()
}

/// Runs `kchaos traffic [--cgroup CG] [--netns NS] MODE...` and parses its last JSON line.
pub fn traffic(
    cgroup: Option<&std::path::Path>,
    netns: Option<&std::path::Path>,
    mode: &[&str],
) -> serde_json::Value {
    let mut cmd = Command::new(kchaos());
    cmd.arg("traffic");
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    if let Some(ns) = netns {
        cmd.arg("--netns").arg(ns);
    }
    let out = cmd.args(mode).output().expect("running kchaos traffic");
    assert!(
        out.status.success(),
        "kchaos traffic {mode:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad traffic output {text:?}: {e}"))
}
