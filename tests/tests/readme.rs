//! The README's examples, run: a newcomer who copies a command block marked runnable gets what the
//! README says, on this kernel.
//!
//! **The marker.** An HTML comment on the line before a fence (GitHub renders it as nothing):
//!
//! ```text
//! <!-- runnable: name=net expect="kchaos net: drop 30% (egress)" -->
//! ```
//!
//! followed by a ```` ```sh ```` block (every line a command; `\` continues a line, `#` starts a
//! comment) or a ```` ```text ```` transcript (`$ COMMAND` lines, each followed by the output the
//! README shows for it). Options:
//!
//! - `name=NAME` (required, unique): the block's test here is `readme_NAME`, listed in [`BLOCKS`].
//! - `exit=CODE` or `exit=C1,C2,...` (one per command): the expected exit status (default 0).
//! - `expect="TEXT"` (or `'TEXT'`), repeatable: TEXT must be in the output of every command whose
//!   shown output in the README holds it (or, if none does, in the block's output taken together);
//!   whitespace runs compare as one space. TEXT must itself appear in the README after the marker and
//!   before the next `## ` heading, so a check can never drift from what the README shows.
//! - `files="PATH ..."`: README paths (substituted like arguments) that must exist, non-empty, after
//!   the block.
//!
//! **What a command must show.** Its exit status; its `expect` texts; and a fault command (`net`,
//! `syscall`, `stress`, `time`, `pause`, `kill`, or `run` of a scenario; not with `--dry-run` or
//! `--detach`) its effect in its own closing counters, from [`effect`]: packets dropped, partitioned
//! or delayed, calls failed, load achieved, processes frozen, shifted or signalled, a scenario's
//! injected events; more than zero. The lab gives every fault something to act on: while each command
//! runs, the lab cgroup holds two `sleep`s, UDP streams to the lab server's ports 53 (an echo server)
//! and 5432, and a loop of connects (to loopback, and to the lab server's TCP port 5432) and of opens
//! (in the directory that stands for `/var/lib/app`).
//!
//! **Substitutions** ([`Lab::rows`]): README words (whole shell words, in a row) and what they become.
//!
//! | README | here |
//! |---|---|
//! | `app`, `app.slice/api.service`, `system.slice/docker-<id>.scope`, `kchaos-readme` (cgroups) | the lab cgroup |
//! | `app.slice/worker.service` | `worker`, a cgroup below the lab cgroup |
//! | `cgroup=...` forms of the above, in `--var` | `cgroup=` the lab cgroup |
//! | `4242` (a pid) | a `sleep` in the lab cgroup |
//! | `10.0.0.7:5432`, `server=10.0.0.7:5432`, `server=...` | the lab server's TCP port 5432 |
//! | `10.0.0.0/8`, `10.0.1.0/24` | the lab's /24 |
//! | `report.json`, `run.json`, `run.xml`, `run.html`, `/var/lib/app` | files in a scratch directory |
//! | `/etc/bash_completion.d/kchaos`, `/usr/local/share/man/man1` | the same, in the scratch directory |
//! | `127.0.0.1:9464` (also in a URL) | a free loopback port |
//! | `--duration D` | `--duration 3s`; `60s` with `--detach` (see [`DETACHED`]) |
//! | a fault command (`net`, `syscall`, `stress`, `time`, `pause`) without `--duration` | `--duration 3s` appended |
//! | `--ramp 10s`, `--metrics-linger 15s` | `--ramp 1s`, `--metrics-linger 1s` (fit the short run) |
//!
//! `kchaos` is the binary under test (`KCHAOS_BIN`, through a directory put first on PATH), its run
//! records go to a private `KCHAOS_RUN_DIR` (so `kchaos stop` ends this test's runs alone), and
//! commands run in the workspace root (where `scenarios/` is).
//!
//! **What this kernel lacks.** A command that needs what `kchaos probe --json` says is missing (sch_fq
//! for `--delay`, a backend for a syscall operation), or a program that is not installed (`curl` in the
//! test VM), is not run, and says so with the reason; a block none of whose commands can run prints
//! SKIP.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    RunDir, Service, TempDir, kchaos, lab, root_or_skip, skb_programs_in_tree, skip, tag,
};

/// Built into the test, so it runs where the source tree is not (the test VM copies only `scenarios/`).
const README: &str = include_str!("../../README.md");

/// Every runnable block's name, each run by the test `readme_<name>` below. The unit check
/// [`the_readme_marks_its_examples_runnable`] holds this list and the README's markers to each
/// other, so a marked block without a test (or a test whose block lost its marker) fails.
const BLOCKS: &[&str] = &[
    "probe",
    "completions",
    "net",
    "syscall",
    "stress",
    "time",
    "named-runs",
    "metrics",
    "experiments",
];

/// At least this many marked blocks and commands: the harness must not pass by finding none.
const MIN_BLOCKS: usize = 9;
const MIN_COMMANDS: usize = 35;

/// How long a substituted fault command runs.
const SHORT: &str = "3s";
/// How long one started with `--detach` runs: it must outlast the commands after it that look at it
/// (`status`, `curl`), also under emulation; the block's own `kchaos stop` ends it sooner.
const DETACHED: &str = "60s";

/// Longest any one command may take (the longest, a scenario run, takes about 5 s): a deadline, not
/// an assertion of speed; it only bounds how long a hung command holds the test.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Reading the README

/// A marked block.
#[derive(Debug)]
struct Block {
    name: String,
    /// 1-based line of the marker.
    line: usize,
    commands: Vec<Cmd>,
    /// One per command.
    exits: Vec<i32>,
    expects: Vec<String>,
    files: Vec<String>,
}

/// One command of a block: the text as a shell reads it (continuations joined, comments cut) and,
/// in a transcript, the output the README shows after it.
#[derive(Debug)]
struct Cmd {
    line: usize,
    text: String,
    shown: Vec<String>,
}

/// Every marked block of `readme`, or what is wrong with a marker (a typo must fail, not skip).
fn blocks(readme: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(opts) = marker(lines[i]) else {
            i += 1;
            continue;
        };
        let line = i + 1;
        let at = |e: String| format!("README.md:{line}: {e}");
        let opts = options(opts).map_err(at)?;
        let fence = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
        let transcript = match fence {
            "```sh" => false,
            "```text" => true,
            other => {
                return Err(at(format!(
                    "a runnable marker must be right above ```sh or ```text, not {other:?}"
                )));
            }
        };
        let body_start = i + 2;
        let len = lines[body_start..]
            .iter()
            .position(|l| l.trim() == "```")
            .ok_or_else(|| at("the block has no closing ```".into()))?;
        let body: Vec<(usize, &str)> = (body_start..body_start + len)
            .map(|k| (k + 1, lines[k]))
            .collect();
        let commands = if transcript {
            transcript_commands(&body).map_err(at)?
        } else {
            sh_commands(&body)
        };
        if commands.is_empty() {
            return Err(at("the block has no command".into()));
        }
        let mut block = Block {
            name: String::new(),
            line,
            exits: vec![0; commands.len()],
            commands,
            expects: Vec::new(),
            files: Vec::new(),
        };
        for (key, value) in opts {
            match key.as_str() {
                "name" => block.name = value,
                "exit" => {
                    let codes: Result<Vec<i32>, _> =
                        value.split(',').map(|c| c.trim().parse()).collect();
                    let codes =
                        codes.map_err(|_| at(format!("exit={value}: not a number list")))?;
                    block.exits = match codes.len() {
                        1 => vec![codes[0]; block.commands.len()],
                        n if n == block.commands.len() => codes,
                        n => {
                            return Err(at(format!(
                                "exit= lists {n} codes for {} commands",
                                block.commands.len()
                            )));
                        }
                    };
                }
                "expect" => block.expects.push(value),
                "files" => block
                    .files
                    .extend(value.split_whitespace().map(str::to_owned)),
                other => {
                    return Err(at(format!(
                        "unknown option {other:?} (name, exit, expect, files)"
                    )));
                }
            }
        }
        if block.name.is_empty() {
            return Err(at("the marker has no name=".into()));
        }
        // What the README says about the block: up to the next section.
        let section_end = lines[line..]
            .iter()
            .position(|l| l.starts_with("## "))
            .map_or(lines.len(), |p| line + p);
        let section = norm(&lines[line..section_end].join("\n"));
        for e in &block.expects {
            if !section.contains(&norm(e)) {
                return Err(at(format!(
                    "expect={e:?} is not in what the README shows for this block"
                )));
            }
        }
        out.push(block);
        i = body_start + len + 1;
    }
    Ok(out)
}

/// The options of a `<!-- runnable: ... -->` line, or None for any other line.
fn marker(line: &str) -> Option<&str> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    let rest = inner.strip_prefix("runnable")?;
    Some(rest.strip_prefix(':').unwrap_or(rest).trim())
}

/// `key=value key="a value" key='a "value"'` as pairs.
fn options(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("option {rest:?} has no '='"))?;
        let key = rest[..eq].trim().to_owned();
        let after = &rest[eq + 1..];
        let (value, next) = match after.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let end = after[1..]
                    .find(q)
                    .ok_or_else(|| format!("{key}= has no closing {q}"))?;
                (after[1..=end].to_owned(), &after[end + 2..])
            }
            _ => {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (after[..end].to_owned(), &after[end..])
            }
        };
        out.push((key, value));
        rest = next.trim_start();
    }
    Ok(out)
}

/// A ```sh block's commands: comment lines skipped, `\` continuations joined, trailing comments cut.
fn sh_commands(body: &[(usize, &str)]) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for &(n, raw) in body {
        let text = strip_comment(raw);
        if pending.is_none() && text.trim().is_empty() {
            continue;
        }
        let (start, mut acc) = pending.take().unwrap_or((n, String::new()));
        let t = text.trim();
        if let Some(head) = t.strip_suffix('\\') {
            acc.push_str(head.trim());
            acc.push(' ');
            pending = Some((start, acc));
        } else {
            acc.push_str(t);
            out.push(Cmd {
                line: start,
                text: acc.trim().to_owned(),
                shown: Vec::new(),
            });
        }
    }
    out
}

/// A transcript's `$ COMMAND` lines, each with the lines under it.
fn transcript_commands(body: &[(usize, &str)]) -> Result<Vec<Cmd>, String> {
    let mut out: Vec<Cmd> = Vec::new();
    for &(n, raw) in body {
        if let Some(cmd) = raw.strip_prefix("$ ") {
            out.push(Cmd {
                line: n,
                text: strip_comment(cmd).trim().to_owned(),
                shown: Vec::new(),
            });
        } else if let Some(last) = out.last_mut() {
            if !raw.trim().is_empty() {
                last.shown.push(raw.to_owned());
            }
        } else if !raw.trim().is_empty() {
            return Err(format!("line {n}: output before the first `$ ` command"));
        }
    }
    Ok(out)
}

/// The line up to a `#` that starts a shell comment (at the start or after a space, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// Whitespace runs as one space, per line: output is compared as a reader sees it, not by columns.
fn norm(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The kchaos subcommand a command line runs (`net` for `kchaos net ...`), if it runs kchaos.
fn subcommand(words: &[String]) -> Option<&str> {
    match words {
        [k, sub, ..] if k == "kchaos" => Some(sub.as_str()),
        _ => None,
    }
}

/// Fault commands: they inject while they run, so they get a short `--duration` and must show an
/// effect.
const FAULTS: &[&str] = &["net", "syscall", "stress", "time", "pause"];

// ---------------------------------------------------------------------------------------------
// What a fault did, from its own output

/// Evidence in a command's output that its fault acted on the lab: a description, or None when its
/// counters say it did nothing. None also for commands that inject nothing themselves.
fn effect(sub: &str, output: &str) -> Option<String> {
    let first = |keys: &[&str], before: bool| {
        keys.iter().find_map(|k| {
            let n = if before {
                number_before(output, k)
            } else {
                number_after(output, k)
            };
            n.filter(|n| *n > 0.0).map(|n| format!("{k} {n}"))
        })
    };
    match sub {
        // The closing line's counters: "egress seen 2002 matched 2002 dropped 578 (28.9%)".
        "net" => first(
            &[
                "dropped",
                "partitioned",
                "delayed",
                "paced",
                "reordered",
                "duplicated",
                "corrupted",
            ],
            false,
        ),
        // "connect calls 40597 failed 8172 (20.1%)".
        "syscall" => first(&["failed"], false),
        // The summary's achieved figures: "cpu: 12.5% of 50%", "memory: 519.0 MiB held", "io: 41.0
        // MiB written", "fds: 5000 held".
        "stress" => first(&["cpu:", "memory:", "io:", "fds:"], false),
        // "2 process(es) on the shifted clock".
        "time" => first(&["process(es) on the shifted clock"], true),
        // "2 process(es) were frozen for 1.00s".
        "pause" => first(&["process(es) were frozen"], true),
        // The summary, "...of the target: signalled 2 of 2 candidate(s)" (not the "signalled PID"
        // line of each process).
        "kill" => first(&[": signalled"], false),
        // A scenario's summary: "injected events (kernel): 3".
        "run" => first(&["injected events (kernel):"], false),
        _ => None,
    }
}

/// The largest number right after any occurrence of `key` (a unit or `%` may follow it).
fn number_after(text: &str, key: &str) -> Option<f64> {
    text.match_indices(key)
        .filter_map(|(i, _)| leading_number(&text[i + key.len()..]))
        .reduce(f64::max)
}

/// The largest number right before any occurrence of `key`.
fn number_before(text: &str, key: &str) -> Option<f64> {
    text.match_indices(key)
        .filter_map(|(i, _)| text[..i].split_whitespace().last()?.parse().ok())
        .reduce(f64::max)
}

fn leading_number(text: &str) -> Option<f64> {
    let t = text.trim_start();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    t[..end].parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The lab the examples run against

/// The lab (namespace, veth, target cgroup), the servers the examples talk to, the run directory and
/// scratch files; everything goes when it is dropped, in field order.
struct Lab {
    /// The workload of the command running now.
    workload: Vec<Child>,
    runs: RunDir,
    _echo: lab::EchoServer,
    _tcp: Service,
    scratch: TempDir,
    /// A directory with `kchaos` -> the binary under test, put first on PATH.
    bin: TempDir,
    worker: PathBuf,
    metrics_port: u16,
    inner: lab::Lab,
}

impl Lab {
    fn create() -> Self {
        let inner = lab::Lab::create(&tag("rd")).expect("making the lab");
        let worker = inner.cgroup.child("worker").expect("the worker cgroup");
        let echo = lab::EchoServer::start(&inner.netns, SocketAddr::from((inner.server_addr, 53)))
            .expect("the lab's UDP echo server on :53");
        let tcp = Service::start(&inner, 5432, false);
        let scratch = TempDir::new("readme");
        std::fs::create_dir_all(scratch.0.join("app")).expect("the scratch /var/lib/app");
        let bin = TempDir::new("readme-bin");
        std::os::unix::fs::symlink(kchaos(), bin.0.join("kchaos")).expect("linking kchaos");
        let metrics_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        Self {
            workload: Vec::new(),
            runs: RunDir::new(),
            _echo: echo,
            _tcp: tcp,
            scratch,
            bin,
            worker,
            metrics_port,
            inner,
        }
    }

    fn cg(&self) -> String {
        self.inner.cgroup.path.display().to_string()
    }

    fn server(&self) -> String {
        format!("{}:5432", self.inner.server_addr)
    }

    fn file(&self, name: &str) -> String {
        self.scratch.0.join(name).display().to_string()
    }

    /// The substitution table (see the module's doc): README words -> the lab's. `*` matches any one
    /// word. Built for each command, since the pid of the lab's `sleep` changes.
    fn rows(&self, pid: u32) -> Vec<(Vec<&'static str>, Vec<String>)> {
        let cg = self.cg();
        let [a, b, c, _] = self.inner.server_addr.octets();
        let net = format!("{a}.{b}.{c}.0/24");
        let port = format!("127.0.0.1:{}", self.metrics_port);
        let one = |w: &'static str, to: String| (vec![w], vec![to]);
        vec![
            one("app", cg.clone()),
            one("app.slice/api.service", cg.clone()),
            one("system.slice/docker-<id>.scope", cg.clone()),
            one("kchaos-readme", cg.clone()),
            one(
                "app.slice/worker.service",
                self.worker.display().to_string(),
            ),
            one("cgroup=app.slice/api.service", format!("cgroup={cg}")),
            one("cgroup=kchaos-readme", format!("cgroup={cg}")),
            one("cgroup=...", format!("cgroup={cg}")),
            one("4242", pid.to_string()),
            one("10.0.0.7:5432", self.server()),
            one("server=10.0.0.7:5432", format!("server={}", self.server())),
            one("server=...", format!("server={}", self.server())),
            one("10.0.0.0/8", net.clone()),
            one("10.0.1.0/24", net),
            one("report.json", self.file("report.json")),
            one("run.json", self.file("run.json")),
            one("run.xml", self.file("run.xml")),
            one("run.html", self.file("run.html")),
            one("/var/lib/app", self.file("app")),
            one("/etc/bash_completion.d/kchaos", self.file("kchaos.bash")),
            one("/usr/local/share/man/man1", self.file("man1")),
            one("127.0.0.1:9464", port.clone()),
            one(
                "http://127.0.0.1:9464/metrics",
                format!("http://{port}/metrics"),
            ),
            (vec!["--ramp", "10s"], vec!["--ramp".into(), "1s".into()]),
            (
                vec!["--metrics-linger", "15s"],
                vec!["--metrics-linger".into(), "1s".into()],
            ),
            (
                vec!["--duration", "*"],
                vec!["--duration".into(), SHORT.into()],
            ),
        ]
    }

    /// `text` with the table applied, as words; `--detach` runs get the longer duration, and fault
    /// commands without a duration get the short one.
    fn substitute(&self, text: &str, pid: u32) -> Vec<String> {
        let rows = self.rows(pid);
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut out: Vec<String> = Vec::new();
        let mut i = 0;
        'word: while i < words.len() {
            for (from, to) in &rows {
                let n = from.len();
                if i + n <= words.len()
                    && from
                        .iter()
                        .zip(&words[i..i + n])
                        .all(|(f, w)| *f == "*" || f == w)
                {
                    out.extend(to.iter().cloned());
                    i += n;
                    continue 'word;
                }
            }
            out.push(words[i].to_owned());
            i += 1;
        }
        let detach = out.iter().any(|w| w == "--detach");
        if detach && let Some(p) = out.iter().position(|w| w == "--duration") {
            out[p + 1] = DETACHED.into();
        }
        let fault = subcommand(&out).is_some_and(|s| FAULTS.contains(&s));
        let shell_ends = out
            .iter()
            .position(|w| ["|", ">", "&&", ";"].contains(&w.as_str()))
            .unwrap_or(out.len());
        if fault && !out.iter().any(|w| w == "--duration") {
            out.splice(
                shell_ends..shell_ends,
                ["--duration".to_owned(), SHORT.to_owned()],
            );
        }
        out
    }

    /// A README path (from `files=`) as the table has it: the longest row that is the path or a
    /// directory above it.
    fn substitute_path(&self, path: &str) -> PathBuf {
        let rows = self.rows(0);
        rows.iter()
            .filter(|(from, _)| from.len() == 1)
            .filter_map(|(from, to)| {
                let rest = path.strip_prefix(from[0])?;
                (rest.is_empty() || rest.starts_with('/'))
                    .then(|| (from[0].len(), format!("{}{rest}", to[0])))
            })
            .max_by_key(|(n, _)| *n)
            .map_or_else(|| PathBuf::from(path), |(_, p)| PathBuf::from(p))
    }

    /// Starts what the examples act on, in the lab cgroup: two `sleep`s, UDP streams to the lab's
    /// echo server on :53 and to the server's :5432, and a loop of connects (loopback, and the lab server's :5432) and opens
    /// (in the scratch `/var/lib/app`). Returns
    /// the first sleep's pid (the README's `4242`).
    fn start_workload(&mut self) -> u32 {
        self.stop_workload();
        let cg = self.inner.cgroup.path.clone();
        let k = kchaos().display().to_string();
        let udp_to = format!("{}:53", self.inner.server_addr);
        let connects = format!(
            "while :; do '{k}' traffic syscalls --op connect --count 20; \
             '{k}' traffic tcp-connect --to {} --timeout 200ms; \
             '{k}' traffic syscalls --op open --count 20 --dir '{}'; sleep 0.05; done >/dev/null 2>&1",
            self.server(),
            self.file("app")
        );
        let server = self.server();
        let procs: [Vec<&str>; 5] = [
            vec!["sleep", "600"],
            vec!["sleep", "600"],
            vec![
                &k,
                "traffic",
                "udp-send",
                "--to",
                &udp_to,
                "--count",
                "1000000000",
                "--rate",
                "1000",
            ],
            // Datagrams to the server's :5432 too: `sendmsg` faults narrowed with --dst match them.
            vec![
                &k,
                "traffic",
                "udp-send",
                "--to",
                &server,
                "--count",
                "1000000000",
                "--rate",
                "200",
            ],
            vec!["sh", "-c", &connects],
        ];
        for argv in &procs {
            let child = spawn_quiet(&cg, argv);
            self.workload.push(child);
        }
        let pid = self.workload[0].id();
        // Each must be in the cgroup before a command looks for processes there (5 s: a deadline,
        // not an assertion of speed; a command that then finds none fails on its own).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
            let inside: BTreeSet<u32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
            if self.workload.iter().all(|c| inside.contains(&c.id())) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the stream and the connect loop get going.
        std::thread::sleep(Duration::from_millis(300));
        pid
    }

    /// Ends every process in the lab cgroup and below (cgroup.kill), and reaps the workload.
    fn stop_workload(&mut self) {
        for cg in [&self.inner.cgroup.path, &self.worker] {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
        }
        for mut c in self.workload.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // 5 s: a deadline, not an assertion of speed (what outlives it, the lab's drop kills).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && [&self.inner.cgroup.path, &self.worker].iter().any(|cg| {
                !std::fs::read_to_string(cg.join("cgroup.procs"))
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
            })
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A detached run must not outlive the test, also when an assertion failed.
        let _ = self.runs.run(&["stop"]);
        self.stop_workload();
    }
}

/// `spawn_in`, with the process's output dropped (a workload's chatter is not the example's).
fn spawn_quiet(cg: &Path, argv: &[&str]) -> Child {
    integration_tests::lab::command_in(cg, argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting a workload process in the lab")
}

// ---------------------------------------------------------------------------------------------
// Running a block

/// What this kernel offers, from `kchaos probe --json`.
struct Kernel(serde_json::Value);

impl Kernel {
    fn probe() -> Self {
        let out = Command::new(kchaos())
            .args(["probe", "--json"])
            .output()
            .expect("running kchaos probe --json");
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kchaos probe --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        Self(v)
    }

    /// Why a command can't run here, if it can't: a program it pipes through is not installed (the
    /// test VM has no curl), `--delay` needs sch_fq, a syscall fault a backend for each operation it
    /// names.
    fn lacks(&self, words: &[String]) -> Option<String> {
        let programs = words
            .split(|w| w == "|")
            .filter_map(|segment| segment.first())
            .filter(|p| *p != "kchaos");
        for p in programs {
            if !on_path(p) {
                return Some(format!("{p} is not installed here"));
            }
        }
        let flag = |name: &str| {
            words
                .iter()
                .position(|w| w == name)
                .and_then(|p| words.get(p + 1))
        };
        match subcommand(words) {
            Some("net") if words.iter().any(|w| w == "--delay" || w == "--rate") => {
                let fq = self.0["capabilities"]
                    .as_array()?
                    .iter()
                    .find(|c| c["name"] == "sch_fq")?;
                (fq["available"] != true).then(|| {
                    format!(
                        "--delay and --rate need sch_fq, which this kernel lacks ({})",
                        fq["detail"]
                    )
                })
            }
            Some("syscall") => flag("--syscall")?.split(',').find_map(|op| {
                let b = &self.0["syscall_backends"][op];
                (b.is_object() && b["backend"].is_null()).then(|| {
                    format!(
                        "no backend here for {op}: {}",
                        b["reason"].as_str().unwrap_or("?")
                    )
                })
            }),
            _ => None,
        }
    }
}

/// True when `program` is an executable file in a directory of PATH.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// One command's result.
struct Outcome {
    code: i32,
    output: String,
}

/// Runs `words` through `sh -c` (pipes and redirections as the README has them), with kchaos on
/// PATH and the test's run directory; output to files, so a detached run holding them open can't hold
/// up the test. Killed (its process group) after [`COMMAND_TIMEOUT`].
fn execute(lab: &Lab, words: &[String]) -> Outcome {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_file = lab.scratch.0.join(format!("out-{}", tag("o")));
    let file = std::fs::File::create(&out_file).expect("an output file");
    let err = file.try_clone().expect("an output file");
    let path = format!(
        "{}:{}",
        lab.bin.0.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(words.join(" "))
        .current_dir(&root)
        .env("PATH", path)
        .env("KCHAOS_RUN_DIR", &lab.runs.0)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0)
        .spawn()
        .expect("starting sh");
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("waiting for a command") {
            break status.code().unwrap_or(-1);
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            // SAFETY: kill(2) on the process group this test made for the command.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break -2;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    Outcome { code, output }
}

/// Runs the block named `name` against a fresh lab and checks every command; prints what ran, what
/// this kernel can't run, and fails with every mismatch at once.
fn run_block(name: &str) {
    let test = format!("readme_{name}");
    if !root_or_skip(&test) {
        return;
    }
    let all = blocks(README).unwrap_or_else(|e| panic!("{e}"));
    let block = all
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("README.md has no block marked name={name}"));
    let kernel = Kernel::probe();
    let mut lab = Lab::create();
    let mut failures = Vec::new();
    let mut not_run = Vec::new();
    // (command index, output) of the commands that ran.
    let mut outputs: Vec<(usize, String)> = Vec::new();
    for (k, cmd) in block.commands.iter().enumerate() {
        let pid = lab.start_workload();
        let words = lab.substitute(&cmd.text, pid);
        let here = format!("README.md:{} `{}`", cmd.line, cmd.text);
        if let Some(why) = kernel.lacks(&words) {
            println!("{here}: not run on this kernel: {why}");
            not_run.push(format!("{here}: {why}"));
            continue;
        }
        println!("{here}\n  as run: {}", words.join(" "));
        let result = execute(&lab, &words);
        lab.stop_workload();
        println!(
            "  exit {}; output:\n{}",
            result.code,
            indent(&result.output)
        );
        if result.code != block.exits[k] {
            failures.push(format!(
                "{here}: exit {} (the README means {})",
                result.code, block.exits[k]
            ));
        }
        let sub = subcommand(&words).unwrap_or_default();
        let passive = words.iter().any(|w| w == "--dry-run" || w == "--detach");
        if (FAULTS.contains(&sub) || sub == "kill" || sub == "run") && !passive {
            match effect(sub, &result.output) {
                Some(e) => println!("  effect: {e}"),
                None => failures.push(format!(
                    "{here}: no effect in its counters (nothing dropped, failed, held, frozen, \
                     shifted or signalled)"
                )),
            }
        }
        outputs.push((k, result.output));
    }
    if outputs.is_empty() {
        skip(&test, &not_run.join("; "));
        return;
    }
    for e in &block.expects {
        let wanted = norm(e);
        let shown_in: Vec<usize> = block
            .commands
            .iter()
            .enumerate()
            .filter(|(_, c)| norm(&c.shown.join("\n")).contains(&wanted))
            .map(|(k, _)| k)
            .collect();
        if shown_in.is_empty() {
            let together: String = outputs.iter().map(|(_, o)| o.as_str()).collect();
            let printed = norm(&together).contains(&wanted);
            if !printed && not_run.is_empty() {
                failures.push(format!(
                    "block README.md:{}: no command printed {e:?}",
                    block.line
                ));
            } else if !printed {
                // A command that did not run here (no curl, no sch_fq) may be the one to print it.
                not_run.push(format!(
                    "block README.md:{}: {e:?} not checked (printed by none of the commands that ran)",
                    block.line
                ));
            }
        }
        for k in shown_in {
            let cmd = &block.commands[k];
            match outputs.iter().find(|(j, _)| *j == k) {
                Some((_, out)) if norm(out).contains(&wanted) => {}
                Some(_) => failures.push(format!(
                    "README.md:{} `{}`: its output lacks {e:?}, which the README shows",
                    cmd.line, cmd.text
                )),
                None => not_run.push(format!("README.md:{}: {e:?} not checked", cmd.line)),
            }
        }
    }
    for f in &block.files {
        let p = lab.substitute_path(f);
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            failures.push(format!(
                "block README.md:{}: {f} ({}) is missing or empty",
                block.line,
                p.display()
            ));
        }
    }

    // Nothing of the examples may be left: no run, no program on the lab's cgroups, no process.
    let (code, out, err) = lab.runs.run_text(&["stop"]);
    if code != 0 {
        failures.push(format!("kchaos stop at the end: exit {code}: {out}{err}"));
    }
    lab.stop_workload();
    let programs = skb_programs_in_tree(&lab.inner.cgroup.path);
    if programs != 0 {
        failures.push(format!("{programs} program(s) still attached to the lab"));
    }
    let records = lab.runs.record_files();
    if !records.is_empty() {
        failures.push(format!("run records left: {records:?}"));
    }
    if !not_run.is_empty() {
        println!(
            "{test}: {} of {} commands ran; not run here:\n  {}",
            outputs.len(),
            block.commands.len(),
            not_run.join("\n  ")
        );
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) with the README's block at line {}:\n  {}",
        failures.len(),
        block.line,
        failures.join("\n  ")
    );
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The tests

/// No root needed: the README has its runnable blocks, each named by a test below, each marker
/// well-formed, each expected text shown by the README itself.
#[test]
fn the_readme_marks_its_examples_runnable() {
    let all = blocks(README).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = all.iter().map(|b| b.name.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "a block name is used twice: {names:?}"
    );
    let tested: BTreeSet<&str> = BLOCKS.iter().copied().collect();
    assert_eq!(
        unique, tested,
        "the README's runnable blocks and this file's BLOCKS (one test each) differ"
    );
    let commands: usize = all.iter().map(|b| b.commands.len()).sum();
    assert!(
        all.len() >= MIN_BLOCKS && commands >= MIN_COMMANDS,
        "only {} runnable blocks with {commands} commands (at least {MIN_BLOCKS} and \
         {MIN_COMMANDS} expected): did the markers go?",
        all.len()
    );
    for b in &all {
        for c in &b.commands {
            let first = c.text.split_whitespace().next().unwrap_or_default();
            assert!(
                first == "kchaos" || first == "curl",
                "README.md:{}: a runnable command runs {first:?}: only kchaos (and curl to read \
                 its metrics) are run here",
                c.line
            );
        }
    }
    println!(
        "{} runnable blocks, {commands} commands: {names:?}",
        all.len()
    );
}

/// The harness's own parts, on small inputs.
#[test]
fn markers_blocks_and_counters_parse() {
    let text = "# t\n<!-- runnable: name=a exit=0,2 expect=\"x  y\" -->\n```sh\n\
                kchaos net --cgroup app \\\n    --percent 5   # a comment\n\n# only a comment\n\
                kchaos stop\n```\nx y\n<!-- runnable: name=b -->\n```text\n$ kchaos probe   # c\n\
                line one\n```\n";
    let b = blocks(text).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].commands.len(), 2);
    assert_eq!(b[0].commands[0].text, "kchaos net --cgroup app --percent 5");
    assert_eq!(b[0].commands[0].line, 4);
    assert_eq!(b[0].exits, [0, 2]);
    assert_eq!(b[1].commands[0].text, "kchaos probe");
    assert_eq!(b[1].commands[0].shown, ["line one"]);
    assert!(blocks("<!-- runnable: name=a bogus=1 -->\n```sh\nkchaos\n```\n").is_err());
    assert!(blocks("<!-- runnable: name=a -->\n```yaml\nk: v\n```\n").is_err());
    assert!(blocks("<!-- runnable: name=a expect='not shown' -->\n```sh\nkchaos\n```\n").is_err());
    assert_eq!(
        options(r#"name=m expect='a "q"' exit=1"#).unwrap(),
        [
            ("name".into(), "m".into()),
            ("expect".into(), r#"a "q""#.into()),
            ("exit".into(), "1".into())
        ]
    );
    let net = "kchaos net: drop 30% (egress) for 2.0s, ended: duration elapsed\n  egress seen \
               2002 matched 2002 dropped 578 (28.9%)\n";
    assert_eq!(effect("net", net).as_deref(), Some("dropped 578"));
    assert_eq!(
        effect("net", "egress seen 9 matched 0 dropped 0 (0.0%)"),
        None
    );
    assert!(effect("time", "  2 process(es) on the shifted clock (2 hooked)").is_some());
    let kill = "  signalled 16131 sleep (sleep 600) in /x\nkchaos kill: SIGKILL to 1 random process \
                of the target: signalled 1 of 4 candidate(s), 0 already gone, 0 failed";
    assert_eq!(effect("kill", kill).as_deref(), Some(": signalled 1"));
    assert!(effect("kill", "of the target: signalled 0 of 0 candidate(s)").is_none());
    assert!(effect("stress", "  cpu: 12.5% of 50% per worker").is_some());
}

#[test]
fn readme_probe() {
    run_block("probe");
}

#[test]
fn readme_completions() {
    run_block("completions");
}

#[test]
fn readme_net() {
    run_block("net");
}

#[test]
fn readme_syscall() {
    run_block("syscall");
}

#[test]
fn readme_stress() {
    run_block("stress");
}

#[test]
fn readme_time() {
    run_block("time");
}

#[test]
fn readme_named_runs() {
    run_block("named-runs");
}

#[test]
fn readme_metrics() {
    run_block("metrics");
}

#[test]
fn readme_experiments() {
    run_block("experiments");
}
