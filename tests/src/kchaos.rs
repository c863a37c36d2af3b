//! Running kchaos the way a user does: a child process, to completion or in the background, with its
//! run records in a private directory when a test asks for one.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

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

/// `kchaos ARGS`, with its run records in `run_dir` if given.
fn command(args: &[&str], run_dir: Option<&RunDir>) -> Command {
    let mut cmd = Command::new(kchaos());
    if let Some(d) = run_dir {
        cmd.env("KCHAOS_RUN_DIR", &d.0);
    }
    cmd.args(args);
    cmd
}

/// Runs kchaos to completion.
pub fn run(args: &[&str]) -> Output {
    run_with(args, None)
}

/// The same, with its run records in `run_dir`.
pub fn run_with(args: &[&str], run_dir: Option<&RunDir>) -> Output {
    command(args, run_dir).output().expect("running kchaos")
}

/// Runs kchaos to completion; its exit code (-1 when a signal ended it), stdout and stderr as text.
pub fn run_text(args: &[&str]) -> (i32, String, String) {
    text(run(args))
}

fn text(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A private directory for kchaos's run records (KCHAOS_RUN_DIR), so a test's `kchaos stop` acts on
/// that test's runs only, not on other kchaos processes of the machine. Removed on drop.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("kchaos-test-run-{}", crate::tag("r")));
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

    /// The same, as text: exit code, stdout, stderr.
    pub fn run_text(&self, args: &[&str]) -> (i32, String, String) {
        text(self.run(args))
    }

    /// Starts kchaos with its records here and waits for "armed".
    pub fn start(&self, args: &[&str]) -> Running {
        Running::start_with(args, Some(self))
    }

    /// Starts kchaos with its records here and these environment variables, and waits for "armed".
    pub fn start_env(&self, args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::start_env(args, Some(self), env)
    }

    /// Starts kchaos with its records here, without waiting for anything.
    pub fn spawn(&self, args: &[&str]) -> Running {
        Running::spawn(args, Some(self))
    }

    /// Every file in it (records, the status files of running runs, logs of detached ones): empty
    /// when nothing is left behind.
    pub fn records(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// The run records alone (`*.json`), without the status files beside them.
    pub fn record_files(&self) -> Vec<PathBuf> {
        self.records()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect()
    }
}

/// Stops every run recorded in a run dir when dropped: a failed assertion must not leave a detached
/// fault behind.
pub struct StopAll<'a>(pub &'a RunDir);

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["stop"]);
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

/// A kchaos in the background (e.g. `net`, or `run` of a scenario) whose stdout lines arrive on a
/// channel as it prints them. Dropping it kills it (SIGKILL), which must itself leave nothing
/// injecting.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    /// The lines read from `lines` so far (by `start` and `wait_for`).
    pub head: Vec<String>,
}

impl Running {
    /// Starts kchaos with `args` and waits (up to 20 s) for its "armed" line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, None)
    }

    /// The same, keeping its run record in `run_dir` (see [`RunDir`]).
    pub fn start_with(args: &[&str], run_dir: Option<&RunDir>) -> Self {
        Self::start_env(args, run_dir, &[])
    }

    /// The same, with these environment variables set for kchaos.
    pub fn start_env(args: &[&str], run_dir: Option<&RunDir>, env: &[(&str, &str)]) -> Self {
        let mut cmd = command(args, run_dir);
        cmd.envs(env.iter().copied());
        let mut running = Self::spawn_command(cmd);
        let armed = running.read_until(Duration::from_secs(20), |line| {
            line.trim_start().starts_with("armed")
        });
        if armed.is_none() {
            let _ = running.child.kill();
            let mut stderr = String::new();
            if let Some(mut e) = running.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!(
                "kchaos {args:?} did not arm: stdout {:?} stderr {stderr}",
                running.head
            );
        }
        running
    }

    /// Starts kchaos with `args` without waiting for anything.
    pub fn spawn(args: &[&str], run_dir: Option<&RunDir>) -> Self {
        Self::spawn_command(command(args, run_dir))
    }

    fn spawn_command(mut cmd: Command) -> Self {
        let mut child = cmd
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
        Self {
            child,
            lines: rx,
            head: Vec::new(),
        }
    }

    /// Waits (up to `within`) for a line containing `needle`, and returns it.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        self.read_until(within, |line| line.contains(needle))
            .unwrap_or_else(|| {
                panic!(
                    "no line with {needle:?} within {within:?}: {:#?}",
                    self.head
                )
            })
    }

    /// Reads lines into `head` until one satisfies `found` (returned), `within` passes or kchaos
    /// closes its stdout (None).
    fn read_until(&mut self, within: Duration, found: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + within;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let line = self.lines.recv_timeout(left).ok()?;
            self.head.push(line.clone());
            if found(&line) {
                return Some(line);
            }
        }
        None
    }

    /// Waits for the end; returns the exit code, every stdout line and stderr.
    pub fn finish(mut self) -> (i32, Vec<String>, String) {
        let status = self.child.wait().expect("wait");
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        (status.code().unwrap_or(-1), self.rest_of_lines(), stderr)
    }

    /// Ends it with SIGTERM and returns its exit code and everything it printed.
    pub fn terminate(mut self) -> (i32, Vec<String>) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        (status.code().unwrap_or(-1), self.rest_of_lines())
    }

    /// Kills it with SIGKILL, as an OOM killer or a crash would.
    pub fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `head` and the lines still on their way, once kchaos has ended (a process it left behind may
    /// hold its stdout open: 200 ms without a line ends the wait).
    fn rest_of_lines(&mut self) -> Vec<String> {
        let mut lines = std::mem::take(&mut self.head);
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
        lines
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
