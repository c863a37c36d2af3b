//! Output files are replaced, never written through: with a symlink at the destination pointing to a
//! victim file, every writer (a fault's and a run's `--json`, `--junit`, `report --html` and `--junit`,
//! `status --json`, `probe --json`, `man`) leaves the victim as it was and puts a regular file with
//! its content where the link was.

use std::path::{Path, PathBuf};

use integration_tests::{RunDir, lab::LabCgroup, root_or_skip, tag};

/// A private temp directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!("kchaos-test-outputs-{}", tag("d")));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const VICTIM: &str = "the victim's content\n";

/// `dir/name` as a symlink to a fresh victim file; returns (link, victim).
fn linked(dir: &Path, name: &str) -> (String, PathBuf) {
    let victim = dir.join(format!("{name}.victim"));
    std::fs::write(&victim, VICTIM).unwrap();
    let link = dir.join(name);
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    (link.display().to_string(), victim)
}

/// The victim unchanged, the link replaced by a regular file holding `expect`; its text.
fn replaced(link: &str, victim: &Path, expect: &str, what: &str) -> String {
    assert_eq!(
        std::fs::read_to_string(victim).unwrap(),
        VICTIM,
        "{what} wrote through the link into the victim"
    );
    let md = std::fs::symlink_metadata(link).unwrap();
    assert!(md.is_file(), "{what}: {link} is not a regular file now");
    let text = std::fs::read_to_string(link).unwrap();
    assert!(text.contains(expect), "{what}: {link} holds {text:.200}");
    text
}

#[test]
fn every_writer_replaces_a_symlink_and_leaves_its_target_alone() {
    if !root_or_skip("every_writer_replaces_a_symlink_and_leaves_its_target_alone") {
        return;
    }
    let dir = TempDir::new();
    let d = &dir.0;
    let cg = LabCgroup::create(&tag("out")).unwrap();
    let cgs = cg.path.display().to_string();
    let run_dir = RunDir::new();
    let ok = |args: &[&str]| {
        let (code, out, err) = run_dir.run_text(args);
        assert_eq!(code, 0, "{args:?}: {out}\n{err}");
    };

    // A fault command's --json.
    let (fault_json, v) = linked(d, "fault.json");
    ok(&[
        "net",
        "--cgroup",
        &cgs,
        "--percent",
        "1",
        "--duration",
        "300ms",
        "--quiet",
        "--json",
        &fault_json,
    ]);
    replaced(&fault_json, &v, "\"kind\"", "net --json");

    // A run's --json and --junit.
    let scenario = d.join("s.yaml");
    std::fs::write(
        &scenario,
        format!(
            "title: outputs\ntargets: [{{name: app, cgroup: \"{cgs}\"}}]\n\
             faults: [{{name: f, at: 0s, for: 300ms, net: {{percent: 1}}}}]\n"
        ),
    )
    .unwrap();
    let s = scenario.display().to_string();
    let (run_json, v1) = linked(d, "run.json");
    let (run_xml, v2) = linked(d, "run.xml");
    ok(&[
        "run",
        &s,
        "--accept-risk",
        "--quiet",
        "--json",
        &run_json,
        "--junit",
        &run_xml,
    ]);
    replaced(&run_json, &v1, "\"rollbacks\"", "run --json");
    replaced(&run_xml, &v2, "<testsuites", "run --junit");

    // report --html and --junit, from the run's report.
    let (html, v1) = linked(d, "r.html");
    let (xml, v2) = linked(d, "r.xml");
    ok(&["report", &run_json, "--html", &html, "--junit", &xml]);
    replaced(&html, &v1, "<html", "report --html");
    replaced(&xml, &v2, "<testsuites", "report --junit");

    // status --json and probe --json.
    let (status, v) = linked(d, "status.json");
    ok(&["status", "--json", &status]);
    replaced(&status, &v, "", "status --json");
    let (probe, v) = linked(d, "probe.json");
    ok(&["probe", "--json", &probe]);
    replaced(&probe, &v, "{", "probe --json");

    // Man pages into a directory where kchaos.1 is a link.
    let man = d.join("man");
    std::fs::create_dir_all(&man).unwrap();
    let (page, v) = linked(&man, "kchaos.1");
    ok(&["man", &man.display().to_string()]);
    replaced(&page, &v, ".TH", "man");

    // No temporary file is left beside any of them.
    for dir in [d.clone(), man] {
        let stray: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(stray.is_empty(), "left in {}: {stray:?}", dir.display());
    }

    // A destination in a missing directory: exit 2, the error names the path and the directory.
    let missing = d.join("no/such/r.json").display().to_string();
    let (code, _, err) = run_dir.run_text(&["status", "--json", &missing]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&missing) && err.contains("does not exist"),
        "{err}"
    );
}
