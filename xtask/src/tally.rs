//! Counting tests from what libtest prints: `test NAME ... ok|FAILED|ignored` lines, and the
//! `SKIP <test> [<kernel>]: <why>` lines the integration tests write to stderr when they can't run
//! (tests/src/host.rs `skip`). A test that printed SKIP passed in libtest's eyes but is counted as
//! skipped here; an ignored test is skipped too, with its reason.
//!
//! The output read is stdout and stderr on one pipe (or the VM's console, where /init does the same),
//! so a SKIP line comes while its test runs (tests run one at a time), between `test NAME ... ` and
//! the verdict, which may then stand alone on the next line.

use std::{collections::BTreeMap, time::Duration};

use crate::vm::strip_escapes;

/// How one test ended, as counted.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Passed,
    Failed,
    /// Why: its SKIP line or libtest's ignore reason.
    Skipped(String),
}

/// One test of one test executable.
#[derive(Clone, Debug)]
pub struct TestRecord {
    /// The test executable (`net`, `chaos_userspace`, `chaos_userspace (doc)`).
    pub binary: String,
    pub name: String,
    pub outcome: Outcome,
}

/// The tests of one part of a run: the unit tests, the integration tests on the host, the suite
/// inside the VM on one kernel.
#[derive(Debug)]
pub struct Part {
    pub label: String,
    pub tests: Vec<TestRecord>,
    /// SKIP lines no test could be found for (they change no count).
    pub stray_skips: Vec<String>,
}

impl Part {
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            tests: Vec::new(),
            stray_skips: Vec::new(),
        }
    }

    /// Reads one command's (or VM payload's) output into this part; `binary` names the test
    /// executable until cargo's own `Running ...` lines say otherwise.
    pub fn read_output(&mut self, binary: &str, lines: &[String]) {
        let mut parser = Parser::new(binary);
        for line in lines {
            parser.feed(line);
        }
        parser.finish(self);
    }

    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Passed)
    }

    pub fn failed(&self) -> usize {
        self.count(|o| *o == Outcome::Failed)
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }

    fn count(&self, which: impl Fn(&Outcome) -> bool) -> usize {
        self.tests.iter().filter(|t| which(&t.outcome)).count()
    }
}

/// Every part of a run, printed at its end.
#[derive(Default)]
pub struct Report {
    pub parts: Vec<Part>,
    /// How long each step took (building, each suite, each VM kernel), in order.
    pub durations: Vec<(String, Duration)>,
    /// How many times each test file was run (`--repeat`; 0 and 1 both mean once).
    pub repeat: u32,
}

/// `1h 2m 3s`, `4m 5s`, `6.7s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs / 60 % 60) {
        (0, 0) => format!("{:.1}s", d.as_secs_f64()),
        (0, m) => format!("{m}m {}s", secs % 60),
        (h, m) => format!("{h}h {m}m {}s", secs % 60),
    }
}

/// A repeated payload's name less its `-runK` suffix (vm-test names the runs so).
fn without_run_suffix(binary: &str) -> &str {
    match binary.rsplit_once("-run") {
        Some((base, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => binary,
    }
}

impl Report {
    pub fn add(&mut self, part: Part) {
        self.parts.push(part);
    }

    /// Runs `step`, recording how long it took as `label`.
    pub fn timed<T>(&mut self, label: &str, step: impl FnOnce(&mut Self) -> T) -> T {
        let started = std::time::Instant::now();
        let out = step(self);
        self.durations.push((label.to_owned(), started.elapsed()));
        out
    }

    /// Each test's passes over the repeated runs: (part, test file, test) -> (passed, ran,
    /// skipped), a test file's runs counted together whatever their `-runK` names.
    fn pass_counts(&self) -> BTreeMap<(String, String, String), (u32, u32, u32)> {
        let mut counts = BTreeMap::new();
        for p in &self.parts {
            for t in &p.tests {
                let key = (
                    p.label.clone(),
                    without_run_suffix(&t.binary).to_owned(),
                    t.name.clone(),
                );
                let c = counts.entry(key).or_insert((0, 0, 0));
                c.1 += 1;
                match t.outcome {
                    Outcome::Passed => c.0 += 1,
                    Outcome::Skipped(_) => c.2 += 1,
                    Outcome::Failed => {}
                }
            }
        }
        counts
    }

    /// With `repeat` above 1: the tests that did not pass (or skip) in every one of the runs,
    /// as `part: file test: k of N`.
    pub fn short_of_repeat(&self) -> Vec<String> {
        if self.repeat <= 1 {
            return Vec::new();
        }
        let n = self.repeat;
        self.pass_counts()
            .into_iter()
            .filter(|(_, (passed, ran, skipped))| *ran != n || passed + skipped != n)
            .map(|((part, file, test), (passed, _, _))| {
                format!("{part}: {file} {test}: {passed} of {n}")
            })
            .collect()
    }

    /// The skipped tests with their reasons, the failed ones, one line per part, and last the
    /// totals alone on their line: `totals: N passed, N failed, N skipped`.
    pub fn print(&self) {
        for line in self.lines() {
            println!("{line}");
        }
    }

    fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let all = || {
            self.parts
                .iter()
                .flat_map(|p| p.tests.iter().map(move |t| (p, t)))
        };
        let skipped: Vec<_> = all()
            .filter_map(|(p, t)| match &t.outcome {
                Outcome::Skipped(why) => Some((p, t, why)),
                _ => None,
            })
            .collect();
        if !skipped.is_empty() {
            out.push(format!("skipped tests ({}):", skipped.len()));
            for (p, t, why) in skipped {
                out.push(format!("  {}: {} {}: {why}", p.label, t.binary, t.name));
            }
        }
        for p in &self.parts {
            for s in &p.stray_skips {
                out.push(format!("  {}: (no test found for) {s}", p.label));
            }
        }
        let failed: Vec<_> = all()
            .filter(|(_, t)| t.outcome == Outcome::Failed)
            .collect();
        if !failed.is_empty() {
            out.push(format!("failed tests ({}):", failed.len()));
            for (p, t) in failed {
                out.push(format!("  {}: {} {}", p.label, t.binary, t.name));
            }
        }
        if self.repeat > 1 {
            let n = self.repeat;
            out.push(format!("passes per test over {n} runs:"));
            for ((part, file, test), (passed, _, skipped)) in self.pass_counts() {
                let what = if skipped == n {
                    "skipped".to_owned()
                } else if skipped > 0 {
                    format!("{passed} of {n} ({skipped} skipped)")
                } else {
                    format!("{passed} of {n}")
                };
                out.push(format!("  {part}: {file} {test}: {what}"));
            }
        }
        if !self.durations.is_empty() {
            out.push("durations:".to_owned());
            for (label, d) in &self.durations {
                out.push(format!("  {label}: {}", format_duration(*d)));
            }
        }
        let (mut passed, mut failed, mut skipped) = (0, 0, 0);
        for p in &self.parts {
            out.push(format!(
                "  {}: {} passed, {} failed, {} skipped",
                p.label,
                p.passed(),
                p.failed(),
                p.skipped()
            ));
            passed += p.passed();
            failed += p.failed();
            skipped += p.skipped();
        }
        out.push(format!(
            "totals: {passed} passed, {failed} failed, {skipped} skipped"
        ));
        out
    }
}

/// libtest's verdict on one test.
#[derive(Clone, Debug, PartialEq)]
enum Verdict {
    Ok,
    Failed,
    Ignored(Option<String>),
}

struct Entry {
    section: usize,
    binary: String,
    name: String,
    /// None: started (`test NAME ... `) but no verdict yet.
    verdict: Option<Verdict>,
}

struct SkipLine {
    section: usize,
    /// The test that was running when it came, if one was.
    during: Option<usize>,
    test: String,
    why: String,
    text: String,
}

/// Reads libtest's output line by line. A section is one test executable's run, from its
/// `running N tests` to its `test result:` line.
struct Parser {
    binary: String,
    section: usize,
    pending: Option<usize>,
    entries: Vec<Entry>,
    skips: Vec<SkipLine>,
}

impl Parser {
    fn new(binary: &str) -> Self {
        Self {
            binary: binary.to_owned(),
            section: 0,
            pending: None,
            entries: Vec::new(),
            skips: Vec::new(),
        }
    }

    fn feed(&mut self, line: &str) {
        let line = strip_escapes(line);
        let line = line.trim_end();
        if let Some(binary) = cargo_running(line) {
            self.binary = binary;
            return;
        }
        if is_running_n_tests(line) {
            self.end_section();
            self.section += 1;
            return;
        }
        if let Some(summary) = line.strip_prefix("test result: ") {
            self.resolve_pending(summary);
            self.end_section();
            return;
        }
        let mut rest = line;
        if let Some((name, after)) = line.strip_prefix("test ").and_then(|l| {
            // `test NAME ... ` with nothing after it yet: its trailing space was trimmed.
            l.split_once(" ... ")
                .or_else(|| l.strip_suffix(" ...").map(|name| (name, "")))
        }) {
            self.entries.push(Entry {
                section: self.section,
                binary: self.binary.clone(),
                name: name.to_owned(),
                verdict: verdict(after),
            });
            if self.entries.last().is_some_and(|e| e.verdict.is_some()) {
                return;
            }
            self.pending = Some(self.entries.len() - 1);
            rest = after;
        } else if let Some(i) = self.pending
            && let Some(v) = verdict(rest)
        {
            self.entries[i].verdict = Some(v);
            self.pending = None;
            return;
        }
        if let Some((test, why, text)) = skip_line(rest) {
            self.skips.push(SkipLine {
                section: self.section,
                during: self.pending,
                test,
                why,
                text,
            });
        }
    }

    /// A test still waiting for its verdict when its executable's summary came: the summary's counts
    /// say which verdict its line lost (to output glued onto it).
    fn resolve_pending(&mut self, summary: &str) {
        let Some(i) = self.pending.take() else {
            return;
        };
        let in_section = |v: &Verdict| {
            self.entries
                .iter()
                .filter(|e| e.section == self.section)
                .filter(|e| match (&e.verdict, v) {
                    (Some(Verdict::Ignored(_)), Verdict::Ignored(_)) => true,
                    (Some(a), b) => a == b,
                    (None, _) => false,
                })
                .count()
        };
        let said = |what: &str| summary_count(summary, what);
        let verdict = if said("failed") > in_section(&Verdict::Failed) {
            Verdict::Failed
        } else if said("passed") > in_section(&Verdict::Ok) {
            Verdict::Ok
        } else if said("ignored") > in_section(&Verdict::Ignored(None)) {
            Verdict::Ignored(None)
        } else {
            Verdict::Failed
        };
        self.entries[i].verdict = Some(verdict);
    }

    /// A test without a verdict when its executable ended (it crashed, or hung until killed) failed.
    fn end_section(&mut self) {
        if let Some(i) = self.pending.take() {
            self.entries[i].verdict.get_or_insert(Verdict::Failed);
        }
    }

    fn finish(mut self, part: &mut Part) {
        self.end_section();
        let mut skipped_by: Vec<Option<String>> = vec![None; self.entries.len()];
        for s in &self.skips {
            let target = s.during.or_else(|| {
                self.entries.iter().position(|e| {
                    e.section == s.section
                        && (e.name == s.test || e.name.ends_with(&format!("::{}", s.test)))
                })
            });
            match target {
                Some(i) => {
                    skipped_by[i].get_or_insert_with(|| s.why.clone());
                }
                None => part.stray_skips.push(s.text.clone()),
            }
        }
        for (e, skip) in self.entries.into_iter().zip(skipped_by) {
            let outcome = match (e.verdict, skip) {
                (Some(Verdict::Ok), Some(why)) => Outcome::Skipped(why),
                (Some(Verdict::Ok), None) => Outcome::Passed,
                (Some(Verdict::Ignored(reason)), _) => Outcome::Skipped(match reason {
                    Some(r) => format!("ignored: {r}"),
                    None => "ignored".to_owned(),
                }),
                (Some(Verdict::Failed) | None, _) => Outcome::Failed,
            };
            part.tests.push(TestRecord {
                binary: e.binary,
                name: e.name,
                outcome,
            });
        }
    }
}

/// `ok`, `FAILED`, `ignored` or `ignored, <reason>`.
fn verdict(s: &str) -> Option<Verdict> {
    match s.trim() {
        "ok" => Some(Verdict::Ok),
        "FAILED" => Some(Verdict::Failed),
        "ignored" => Some(Verdict::Ignored(None)),
        s => s
            .strip_prefix("ignored, ")
            .map(|r| Verdict::Ignored(Some(r.to_owned()))),
    }
}

/// `SKIP <test> [<kernel>]: <why>` anywhere in the line: the test, `[<kernel>] <why>`, and the
/// SKIP line itself.
fn skip_line(line: &str) -> Option<(String, String, String)> {
    let text = &line[line.find("SKIP ")?..];
    let (test, after) = text["SKIP ".len()..].split_once(" [")?;
    let (kernel, why) = after.split_once("]: ")?;
    if test.is_empty() || test.contains(char::is_whitespace) {
        return None;
    }
    Some((
        test.to_owned(),
        format!("[{kernel}] {why}"),
        text.to_owned(),
    ))
}

/// libtest's `running 3 tests` (`running 1 test`), which starts each executable's run.
fn is_running_n_tests(line: &str) -> bool {
    line.strip_prefix("running ")
        .and_then(|l| l.strip_suffix(" tests").or_else(|| l.strip_suffix(" test")))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The executable cargo announces: `Running tests/net.rs (target/release/deps/net-0a1b...)` gives
/// `net`; `Doc-tests chaos_userspace` gives `chaos_userspace (doc)`.
fn cargo_running(line: &str) -> Option<String> {
    let line = line.trim_start();
    if let Some(krate) = line.strip_prefix("Doc-tests ") {
        return Some(format!("{} (doc)", krate.trim()));
    }
    let path = line
        .strip_prefix("Running ")?
        .rsplit_once(" (")?
        .1
        .strip_suffix(')')?;
    let file = path.rsplit('/').next()?;
    // deps/<name>-<16 hex digits>: the name without cargo's hash.
    Some(match file.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_owned()
        }
        _ => file.to_owned(),
    })
}

/// In `ok. 3 passed; 1 failed; 2 ignored; ...`, the number before `what`.
fn summary_count(summary: &str, what: &str) -> usize {
    summary
        .split(';')
        .find_map(|item| {
            let item = item
                .trim()
                .trim_start_matches(|c: char| !c.is_ascii_digit());
            item.strip_suffix(what)?.trim().parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(binary: &str, text: &str) -> Part {
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut p = Part::new("host 6.1");
        p.read_output(binary, &lines);
        p
    }

    fn outcomes(p: &Part) -> Vec<(&str, &str, Outcome)> {
        p.tests
            .iter()
            .map(|t| (t.binary.as_str(), t.name.as_str(), t.outcome.clone()))
            .collect()
    }

    #[test]
    fn repeated_runs_are_counted_per_test_and_a_miss_fails() {
        let run = |k: u32, second: &str| {
            let mut p = Part::new("VM 6.12");
            let text = format!(
                "running 3 tests\ntest a ... ok\ntest b ... {second}\n\
                 test c ... SKIP c [VM 6.12]: no sch_fq\nok\n"
            );
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            p.read_output(&format!("edt-run{k}"), &lines);
            p
        };
        let mut report = Report {
            repeat: 3,
            ..Default::default()
        };
        report.add(run(1, "ok"));
        report.add(run(2, "FAILED"));
        report.add(run(3, "ok"));
        assert_eq!(report.short_of_repeat(), ["VM 6.12: edt b: 2 of 3"]);
        let lines = report.lines();
        assert!(
            lines.contains(&"  VM 6.12: edt a: 3 of 3".to_owned()),
            "{lines:#?}"
        );
        assert!(
            lines.contains(&"  VM 6.12: edt c: skipped".to_owned()),
            "{lines:#?}"
        );
        // A test missing from a run (its file crashed) is short too.
        report.parts.pop();
        report.add(Part::new("VM 6.12"));
        assert_eq!(
            report.short_of_repeat().len(),
            3,
            "{:?}",
            report.short_of_repeat()
        );
        // Once is once: no counts, nothing short.
        report.repeat = 1;
        assert!(report.short_of_repeat().is_empty());
        assert!(!report.lines().iter().any(|l| l.contains(" of ")));
    }

    #[test]
    fn durations_print_in_minutes_and_seconds() {
        assert_eq!(format_duration(Duration::from_millis(6_700)), "6.7s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m 5s");
        assert_eq!(format_duration(Duration::from_secs(3723)), "1h 2m 3s");
        let report = Report {
            durations: vec![("unit tests".to_owned(), Duration::from_secs(61))],
            ..Default::default()
        };
        let lines = report.lines();
        assert_eq!(lines[..2], ["durations:", "  unit tests: 1m 1s"]);
        assert!(lines.last().unwrap().starts_with("totals: "));
    }

    #[test]
    fn verdicts_on_their_line_and_after_a_skip_line() {
        // One test at a time: a SKIP written while the test runs lands after `test NAME ... `, and
        // the verdict follows on its own line.
        let p = part(
            "?",
            "     Running tests/net.rs (target/release/deps/net-0123456789abcdef)\n\
             \n\
             running 4 tests\n\
             test drop_rate ... ok\n\
             test needs_lsm ... SKIP needs_lsm [host 6.1]: no BPF LSM here\n\
             ok\n\
             test partition ... FAILED\n\
             test by_hand ... ignored, boots a VM; run by hand\n\
             \n\
             test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out\n",
        );
        assert_eq!(
            outcomes(&p),
            [
                ("net", "drop_rate", Outcome::Passed),
                (
                    "net",
                    "needs_lsm",
                    Outcome::Skipped("[host 6.1] no BPF LSM here".into())
                ),
                ("net", "partition", Outcome::Failed),
                (
                    "net",
                    "by_hand",
                    Outcome::Skipped("ignored: boots a VM; run by hand".into())
                ),
            ]
        );
        assert_eq!((p.passed(), p.failed(), p.skipped()), (1, 1, 2));
    }

    #[test]
    fn a_skip_line_is_matched_by_name_within_its_executable() {
        // Tests run in parallel print their whole line at the end, after the SKIP line; the same
        // name in another executable is another test.
        let p = part(
            "stress",
            "running 2 tests\n\
             SKIP cpu_load [host 6.1]: the host stayed too busy\n\
             test cpu_load ... ok\n\
             test tests::other ... ok\n\
             test result: ok. 2 passed; 0 failed; 0 ignored\n\
             running 1 test\n\
             test cpu_load ... ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored\n\
             running 1 test\n\
             SKIP other [host 6.1]: why\n\
             test mod_a::other ... ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored\n",
        );
        let skipped: Vec<_> = p
            .tests
            .iter()
            .map(|t| matches!(t.outcome, Outcome::Skipped(_)))
            .collect();
        assert_eq!(skipped, [true, false, false, true]);
        assert!(p.stray_skips.is_empty());
    }

    #[test]
    fn a_skip_line_without_its_test_changes_no_count() {
        let p = part(
            "x",
            "running 1 test\nSKIP nowhere [vm 6.12]: why\ntest a ... ok\ntest result: ok. 1 passed;\n",
        );
        assert_eq!((p.passed(), p.skipped()), (1, 0));
        assert_eq!(p.stray_skips, ["SKIP nowhere [vm 6.12]: why"]);
    }

    #[test]
    fn a_test_without_a_verdict_failed_unless_the_summary_says_otherwise() {
        // A crash (no summary): the running test failed.
        let p = part(
            "x",
            "running 2 tests\ntest a ... ok\ntest b ... \nsegfault\n",
        );
        assert_eq!(outcomes(&p)[1], ("x", "b", Outcome::Failed));
        // A process the test started printed without a newline, glued onto the verdict: the
        // summary's count tells it passed.
        let p = part(
            "x",
            "running 1 test\ntest a ... child outputok\n\ntest result: ok. 1 passed; 0 failed;\n",
        );
        assert_eq!(outcomes(&p), [("x", "a", Outcome::Passed)]);
        // A hang cut short by the next executable's start.
        let p = part(
            "x",
            "running 1 test\ntest a ... \nrunning 1 test\ntest b ... ok\n",
        );
        assert_eq!(
            outcomes(&p),
            [("x", "a", Outcome::Failed), ("x", "b", Outcome::Passed)]
        );
    }

    #[test]
    fn colours_doc_tests_and_noise() {
        let p = part(
            "?",
            "   Doc-tests chaos_userspace\n\
             running 2 tests\n\
             test src/units.rs - units::parse (line 10) ... \x1b[32mok\x1b[0m\n\
             test src/lab.rs - lab (line 3) ... ignored\n\
             test result: ok. 1 passed; 0 failed; 1 ignored\n\
             failures:\n\
             ---- x stdout ----\n\
             the test said SKIP but not in the form\n",
        );
        assert_eq!(
            outcomes(&p),
            [
                (
                    "chaos_userspace (doc)",
                    "src/units.rs - units::parse (line 10)",
                    Outcome::Passed
                ),
                (
                    "chaos_userspace (doc)",
                    "src/lab.rs - lab (line 3)",
                    Outcome::Skipped("ignored".into())
                ),
            ]
        );
        assert!(p.stray_skips.is_empty());
    }

    #[test]
    fn the_report_ends_with_the_totals_alone_on_their_line() {
        let mut report = Report::default();
        report.add(part(
            "unit",
            "running 2 tests\ntest a ... ok\ntest b ... ignored\ntest result: ok.\n",
        ));
        let mut vm = Part::new("VM 6.12.1");
        vm.read_output(
            "net",
            &[
                "running 2 tests".into(),
                "test c ... SKIP c [vm 6.12.1]: no LSM".into(),
                "ok".into(),
                "test d ... FAILED".into(),
            ],
        );
        report.add(vm);
        let lines = report.lines();
        assert_eq!(
            lines.last().unwrap(),
            "totals: 1 passed, 1 failed, 2 skipped"
        );
        assert!(lines.contains(&"  host 6.1: unit b: ignored".to_owned()));
        assert!(lines.contains(&"  VM 6.12.1: net c: [vm 6.12.1] no LSM".to_owned()));
        assert!(lines.contains(&"  VM 6.12.1: net d".to_owned()));
        assert!(lines.contains(&"  VM 6.12.1: 0 passed, 1 failed, 1 skipped".to_owned()));
    }

    #[test]
    fn summary_counts() {
        let s = "FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1s";
        assert_eq!(summary_count(s, "passed"), 3);
        assert_eq!(summary_count(s, "failed"), 1);
        assert_eq!(summary_count(s, "ignored"), 2);
        assert_eq!(summary_count("ok.", "passed"), 0);
    }

    #[test]
    fn executable_names_from_cargo() {
        assert_eq!(
            cargo_running(
                "     Running unittests src/lib.rs (target/release/deps/chaos_userspace-3493d9b7f5fe7ec8)"
            ),
            Some("chaos_userspace".into())
        );
        assert_eq!(
            cargo_running(
                "Running tests/scenarios_net.rs (/w/target/release/deps/scenarios_net-0123456789abcdef)"
            ),
            Some("scenarios_net".into())
        );
        assert_eq!(cargo_running("Running the probe"), None);
        assert!(is_running_n_tests("running 1 test") && is_running_n_tests("running 12 tests"));
        assert!(!is_running_n_tests("running tests"));
    }
}
