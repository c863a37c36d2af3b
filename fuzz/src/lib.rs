//! What the fuzz targets do with an input: everything `kchaos validate`, `run --dry-run` and `report`
//! do with a file's text, short of touching the machine. Shared with
//! chaos-userspace/tests/fuzz_corpus.rs, which replays the corpus in a plain `cargo test`.

use std::path::Path;

use chaos_userspace::{
    experiment::{fields::Vars, plan, review, scenario, validate},
    report::{Report, html, junit},
};

/// Scenario text: it parses, or every error has a place and a message; what parses goes through the
/// checks across fields, the safety review (against made-up cgroups under a directory that does not
/// exist) and the plan.
pub fn scenario(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut vars = Vars::default();
    vars.cli.insert("cgroup".into(), "lab".into());
    match scenario::parse("fuzz.yaml", text, &vars) {
        Ok(s) => {
            let _ = validate::check(&s);
            let root = Path::new("/nonexistent/kchaos-fuzz");
            // Some targets nested in others, some side by side: the review's tree checks see both.
            let resolved: Vec<validate::ResolvedTarget> = s
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| validate::ResolvedTarget {
                    name: t.name.clone(),
                    path: match i % 3 {
                        0 => root.join(format!("t{i}")),
                        1 => root.join(format!("t{}", i - 1)).join(format!("c{i}")),
                        _ => root.join("x.slice"),
                    },
                    id: i as u64,
                    origin: String::new(),
                })
                .collect();
            let _ = review::review(&s, &resolved, &[], Some(root));
            let _ = plan::render(&plan::timeline(&s, &resolved));
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "an error without a diagnostic");
            for d in &e.0 {
                assert!(!d.message.is_empty(), "a diagnostic without a message");
            }
            let _ = e.to_string();
        }
    }
}

/// Report JSON: whatever serde accepts is summarized and rendered without a panic.
pub fn report(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Report::from_json_str(text) {
        let _ = r.summary_text();
        let _ = html::render(&r);
        let _ = junit::render(&r);
    }
}
