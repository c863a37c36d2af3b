//! The report as JUnit XML, for CI dashboards: the steady-state hypothesis before and after, each probe
//! in each phase, and the experiment itself, each a test case.

use super::Report;

/// Escapes text for XML attributes and content.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

struct Case {
    class: String,
    name: String,
    time_s: f64,
    failure: Option<String>,
    out: String,
}

pub fn render(r: &Report) -> String {
    let mut cases = Vec::new();
    let phase_len = |p: Option<(f64, f64)>| p.map_or(0.0, |(a, b)| (b - a) / 1e3);
    for phase in ["before", "after"] {
        let ran = match phase {
            "before" => r.phases.before,
            _ => r.phases.after,
        };
        let hs: Vec<_> = r.hypothesis.iter().filter(|h| h.phase == phase).collect();
        if r.probes.is_empty() {
            continue;
        }
        let failure = if ran.is_none() {
            Some(format!(
                "the {phase} phase did not run ({})",
                r.summary.end_reason
            ))
        } else {
            let failed: Vec<String> = hs
                .iter()
                .filter(|h| !h.held)
                .map(|h| format!("{}: {}", h.probe, h.why.clone().unwrap_or_default()))
                .collect();
            (!failed.is_empty()).then(|| failed.join("; "))
        };
        cases.push(Case {
            class: "kchaos.hypothesis".into(),
            name: format!("steady state {phase}"),
            time_s: phase_len(ran),
            failure,
            out: String::new(),
        });
    }
    let aborted_on = |probe: &str| {
        r.summary
            .abort_reason
            .as_deref()
            .is_some_and(|a| a.contains(&format!("probe '{probe}'")))
    };
    for h in &r.hypothesis {
        let stats = format!(
            "{} of {} ok ({:.1}%), p95 {}",
            h.stats.ok,
            h.stats.count,
            h.stats.success_rate,
            h.stats
                .p95_latency_ms
                .map(|p| format!("{p:.1} ms"))
                .unwrap_or_else(|| "n/a".into())
        );
        // During the faults a probe is expected to suffer: it fails only when it aborted the run.
        let failure = if h.phase == "during" {
            aborted_on(&h.probe).then(|| {
                format!(
                    "aborted the experiment: {}",
                    r.summary.abort_reason.clone().unwrap_or_default()
                )
            })
        } else {
            (!h.held).then(|| h.why.clone().unwrap_or_default())
        };
        cases.push(Case {
            class: format!("kchaos.probe.{}", h.probe),
            name: format!("{} {}", h.probe, h.phase),
            time_s: 0.0,
            failure,
            out: stats,
        });
    }
    cases.push(Case {
        class: "kchaos.experiment".into(),
        name: "completed without abort".into(),
        time_s: r.duration_ms / 1e3,
        failure: (!r.summary.completed).then(|| r.summary.end_reason.clone()),
        out: r.summary_text(),
    });

    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x += &format!(
        "<testsuites name=\"kchaos\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">\n",
        cases.len(),
        r.duration_ms / 1e3
    );
    x += &format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">\n",
        escape(&r.scenario.title),
        cases.len(),
        r.duration_ms / 1e3
    );
    for c in &cases {
        x += &format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">\n",
            escape(&c.class),
            escape(&c.name),
            c.time_s
        );
        if let Some(f) = &c.failure {
            x += &format!(
                "      <failure message=\"{}\">{}</failure>\n",
                escape(f),
                escape(f)
            );
        }
        if !c.out.is_empty() {
            x += &format!("      <system-out>{}</system-out>\n", escape(&c.out));
        }
        x += "    </testcase>\n";
    }
    x += "  </testsuite>\n</testsuites>\n";
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;?");
    }
}
