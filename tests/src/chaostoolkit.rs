//! Chaos Toolkit for the tests of the kchaos extension: a virtualenv with chaostoolkit pinned (made
//! once, kept in kchaos's cache) into which each test process installs the extension as the source
//! tree holds it, and `chaos` runs.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::{RunDir, TempDir};

/// The pinned releases: chaostoolkit 1.19.0 is the newest for Python 3.11 (Debian 12's, the
/// machine's); later ones need 3.12.
const PACKAGES: [&str; 2] = ["chaostoolkit==1.19.0", "chaostoolkit-lib==1.44.0"];

/// The extension's source (a pip-installable package).
pub fn extension_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../integrations/chaostoolkit")
}

/// A virtualenv with Chaos Toolkit in it.
pub struct ChaosToolkit {
    venv: PathBuf,
}

impl ChaosToolkit {
    /// The cached virtualenv, made (python3 -m venv, pip install) on first use, with the extension
    /// installed from the source tree. Err when there is no python3 (a test prints SKIP); a failed
    /// install panics: with Python here, the tests must run.
    pub fn get() -> Result<&'static ChaosToolkit, String> {
        static ONCE: OnceLock<Result<ChaosToolkit, String>> = OnceLock::new();
        ONCE.get_or_init(|| {
            if Command::new("python3").arg("--version").output().is_err() {
                return Err("python3 is not installed".to_owned());
            }
            let ctk = Self::make().unwrap_or_else(|e| panic!("setting up Chaos Toolkit: {e}"));
            ctk.install_extension()
                .unwrap_or_else(|e| panic!("installing the extension: {e}"));
            Ok(ctk)
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// `pip install` of a copy of the extension's source: pip builds in the directory it is given
    /// (build/, *.egg-info), which must not be the work tree.
    fn install_extension(&self) -> Result<(), String> {
        let copy = TempDir::new("ctk-extension");
        copy_tree(&extension_dir(), &copy.0).map_err(|e| format!("copying the extension: {e}"))?;
        step(
            pip_install(&self.venv)
                .args(["--no-deps", "--force-reinstall"])
                .arg(&copy.0),
            "pip install integrations/chaostoolkit",
        )
    }

    fn make() -> Result<ChaosToolkit, String> {
        let cache = match std::env::var_os("KCHAOS_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?)
                .join(".cache/kchaos"),
        };
        let venv = cache.join("chaostoolkit-1.19.0");
        // Written last: a venv without it is an interrupted install, made again. (A venv can't be
        // made elsewhere and renamed: its scripts name their interpreter by absolute path.)
        let complete = venv.join("kchaos-complete");
        if complete.is_file() {
            return Ok(ChaosToolkit { venv });
        }
        let _ = std::fs::remove_dir_all(&venv);
        std::fs::create_dir_all(&cache)
            .map_err(|e| format!("creating {}: {e}", cache.display()))?;
        step(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
        step(
            pip_install(&venv).args(PACKAGES),
            "pip install chaostoolkit (is PyPI reachable?)",
        )?;
        std::fs::write(&complete, PACKAGES.join("\n"))
            .map_err(|e| format!("writing {}: {e}", complete.display()))?;
        Ok(ChaosToolkit { venv })
    }

    /// `chaos ARGS` with kchaos on PATH (and in KCHAOS_BIN), its run records in `run_dir`, no log
    /// file unless ARGS name one.
    pub fn command(&self, args: &[&str], run_dir: &RunDir, env: &[(&str, &str)]) -> Command {
        let kchaos = crate::kchaos();
        let kchaos_dir = kchaos.parent().map(Path::to_path_buf).unwrap_or_default();
        let path = std::env::join_paths([kchaos_dir, self.venv.join("bin")].into_iter().chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .expect("PATH");
        let mut cmd = Command::new(self.venv.join("bin/chaos"));
        // chaos writes chaostoolkit.log (and a run's journal.json) into its working directory
        // unless told otherwise: never into the work tree. A later --log-file in ARGS wins.
        cmd.args(["--no-version-check", "--log-file", "/dev/null"])
            .args(args)
            .current_dir(std::env::temp_dir())
            .env("PATH", path)
            .env("KCHAOS_BIN", &kchaos)
            .env("KCHAOS_RUN_DIR", &run_dir.0)
            .envs(env.iter().copied());
        // A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
        // across exec: Python then installs no KeyboardInterrupt handler, and the Ctrl-C tests
        // would test nothing. chaos gets SIGINT's default back, as a terminal would give it.
        // SAFETY: between fork and exec only async-signal-safe calls are allowed; signal() is one.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        cmd
    }

    /// Runs `python -c CODE` in the virtualenv, with the environment `command` gives `chaos`:
    /// exit code and output.
    pub fn python(&self, code: &str, run_dir: &RunDir) -> (i32, String) {
        let out = Command::new(self.venv.join("bin/python"))
            .args(["-c", code])
            .current_dir(std::env::temp_dir())
            .env("KCHAOS_BIN", crate::kchaos())
            .env("KCHAOS_RUN_DIR", &run_dir.0)
            .output()
            .expect("running python");
        code_and_text(&out)
    }

    /// Runs `chaos ARGS` (as `command` sets it up) to its end: exit code, stdout and stderr.
    pub fn chaos(&self, args: &[&str], run_dir: &RunDir, env: &[(&str, &str)]) -> (i32, String) {
        let out = self
            .command(args, run_dir, env)
            .output()
            .expect("running chaos");
        code_and_text(&out)
    }

    /// `chaos run --rollback-strategy always EXPERIMENT`: exit code, output, and the journal.
    pub fn run(
        &self,
        experiment: &Path,
        run_dir: &RunDir,
        env: &[(&str, &str)],
    ) -> (i32, String, serde_json::Value) {
        let dir = TempDir::new("ctk");
        let journal = dir.0.join("journal.json");
        let log = dir.0.join("chaostoolkit.log");
        let (code, text) = self.chaos(
            &[
                "--log-file",
                log.to_str().expect("UTF-8"),
                "run",
                "--rollback-strategy",
                "always",
                "--journal-path",
                journal.to_str().expect("UTF-8"),
                experiment.to_str().expect("UTF-8"),
            ],
            run_dir,
            env,
        );
        let journal = std::fs::read_to_string(&journal)
            .ok()
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_else(|| panic!("chaos run wrote no journal; it printed:\n{text}"));
        (code, text, journal)
    }
}

/// `pip install`, quietly, with the venv's own interpreter (not its `pip` script, whose first line
/// names an interpreter by absolute path).
fn pip_install(venv: &Path) -> Command {
    let mut cmd = Command::new(venv.join("bin/python3"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    cmd
}

/// Copies the package's files (not caches or build output).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let skip = name == "__pycache__"
            || name == "build"
            || name.to_string_lossy().ends_with(".egg-info");
        if skip {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to.join(&name))?;
        } else {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

fn step(cmd: &mut Command, what: &str) -> Result<(), String> {
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// A finished command's exit code (-1 for a signal) and its stdout then stderr.
fn code_and_text(out: &std::process::Output) -> (i32, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The journal's entry for the activity called `name` (from the method, the hypothesis or the
/// rollbacks).
pub fn activity<'a>(journal: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    let method = journal["run"].as_array().into_iter().flatten();
    let rollbacks = journal["rollbacks"].as_array().into_iter().flatten();
    let hypothesis = ["steady_states"]
        .iter()
        .flat_map(|k| ["before", "after"].map(|phase| &journal[k][phase]["probes"]))
        .filter_map(|p| p.as_array())
        .flatten();
    method
        .chain(rollbacks)
        .chain(hypothesis)
        .find(|a| a["activity"]["name"] == name)
}
