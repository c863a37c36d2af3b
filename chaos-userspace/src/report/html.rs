//! The report as one self-contained HTML page: the summary, a timeline plot in inline SVG (faults as
//! bands, probe latency as lines with each attempt a dot, success rate as a line), and the tables.

use std::fmt::Write as _;

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

const W: f64 = 1100.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PLOT_W: f64 = W - LEFT - RIGHT;
const COLORS: &[&str] = &[
    "#1f77b4", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
];
const FAULT_COLORS: &[&str] = &["#ff7f0e", "#d62728", "#bcbd22", "#2ca02c"];

pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let title = escape(&r.scenario.title);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>kchaos: {title}</title>\
<style>body{{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px;color:#222}}\
h1{{font-size:22px;margin:0 0 4px}} .sub{{color:#666;margin-bottom:16px}}\
table{{border-collapse:collapse;margin:8px 0 20px}} td,th{{border:1px solid #ddd;padding:4px 8px;font-size:13px;text-align:left}}\
th{{background:#f4f4f4}} .ok{{color:#2a7d2a;font-weight:600}} .bad{{color:#c62828;font-weight:600}}\
.cards{{display:flex;gap:12px;flex-wrap:wrap;margin:8px 0 16px}} .card{{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:150px}}\
.card b{{display:block;font-size:20px}} .card span{{color:#666;font-size:12px}} svg text{{font-size:11px;fill:#333}}</style></head><body>\n"
    );
    let _ = writeln!(h, "<h1>{title}</h1>");
    let _ = writeln!(
        h,
        "<div class=\"sub\">{} &middot; {} &middot; kchaos {} on kernel {}</div>",
        escape(&r.scenario.description),
        escape(&r.scenario.file),
        escape(&r.kchaos_version),
        escape(&r.kernel)
    );
    cards(&mut h, r);
    let _ = writeln!(h, "<h2>Timeline</h2>");
    h += &timeline_svg(r);
    per_second(&mut h, r);
    tables(&mut h, r);
    h += "</body></html>\n";
    h
}

fn cards(h: &mut String, r: &Report) {
    let s = &r.summary;
    let held = match s.steady_state_held {
        Some(true) => "<b class=\"ok\">held</b>".to_owned(),
        Some(false) => "<b class=\"bad\">did not hold</b>".to_owned(),
        None => "<b>not checked</b>".to_owned(),
    };
    let degraded = super::figures::degraded(&r.hypothesis);
    let during = if !r.hypothesis.iter().any(|h| h.phase == "during") {
        "<b>not checked</b>".to_owned()
    } else if degraded.is_empty() {
        "<b class=\"ok\">within tolerance</b>".to_owned()
    } else {
        format!(
            "<b class=\"bad\" title=\"{}\">degraded</b>",
            escape(
                &degraded
                    .iter()
                    .map(|h| format!("{}: {}", h.probe, h.why.as_deref().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        )
    };
    let mut items = vec![
        (held, "steady state (before and after)".to_owned()),
        (during, "during faults".to_owned()),
        (
            format!(
                "<b class=\"{}\">{}</b>",
                if s.completed { "ok" } else { "bad" },
                if s.completed { "completed" } else { "aborted" }
            ),
            escape(&s.end_reason),
        ),
        (
            format!("<b>{}</b>", s.injected_events),
            "injected events (kernel)".into(),
        ),
    ];
    for (label, value) in super::figures::rendered(s) {
        items.push((
            format!("<b class=\"figure\">{}</b>", escape(&value)),
            escape(&label),
        ));
    }
    items.push((
        format!(
            "<b>{}</b>",
            s.abort_to_detached_ms
                .map_or("n/a".into(), |v| format!("{v:.1} ms"))
        ),
        "abort to detached".into(),
    ));
    *h += "<div class=\"cards\">";
    for (value, label) in items {
        let _ = write!(h, "<div class=\"card\">{value}<span>{label}</span></div>");
    }
    *h += "</div>\n";
}

fn timeline_svg(r: &Report) -> String {
    let total_ms = r.duration_ms.max(1.0);
    let x = |t: f64| LEFT + PLOT_W * (t / total_ms).clamp(0.0, 1.0);
    let lanes = r.faults.len() as f64;
    let lane_h = 22.0;
    // A strip above the latency plot for failed attempts, a row per probe.
    let fail_strip = 8.0 + 6.0 * r.probes.len() as f64;
    let top = 20.0 + lanes * lane_h + fail_strip;
    let lat_h = 220.0;
    let gap = 40.0;
    let ok_top = top + lat_h + gap;
    let ok_h = 110.0;
    let height = ok_top + ok_h + 36.0 + 16.0 * r.probes.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\" role=\"img\" aria-label=\"experiment timeline\">"
    );
    // Phases as faint backgrounds.
    for (name, p, fill) in [
        ("before", r.phases.before, "#f1f5f9"),
        ("after", r.phases.after, "#f1f5f9"),
    ] {
        if let Some((a, b)) = p {
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#64748b\">{name}</text>",
                x(a),
                (x(b) - x(a)).max(0.5),
                ok_top + ok_h - top,
                x(a) + 4.0,
                top + 12.0
            );
        }
    }
    // Faults: a labelled lane each, and a band across both plots.
    for (i, f) in r.faults.iter().enumerate() {
        let color = FAULT_COLORS[i % FAULT_COLORS.len()];
        let y = 10.0 + i as f64 * lane_h;
        let (a, b, dashed) = match (f.start_ms, f.end_ms) {
            (Some(a), Some(b)) => (a, b, false),
            _ => (f.planned_start_ms, f.planned_end_ms, true),
        };
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\" fill-opacity=\"{}\"/>",
            x(a),
            (x(b) - x(a)).max(1.0),
            ok_top + ok_h - top,
            if dashed { 0.04 } else { 0.13 }
        );
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\" fill-opacity=\"0.8\" rx=\"3\"{}/>",
            x(a),
            (x(b) - x(a)).max(1.0),
            lane_h - 5.0,
            if dashed {
                " stroke=\"#333\" stroke-dasharray=\"4 3\" fill-opacity=\"0.2\""
            } else {
                ""
            }
        );
        let label = format!(
            "{} — {}{}",
            f.name,
            f.description,
            if dashed { " (never armed)" } else { "" }
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#111\">{}</text>",
            x(a) + 4.0,
            y + 12.0,
            escape(&label)
        );
        // Ramp steps: ticks under the lane, so they never cut its label.
        for step in &f.ramp_steps {
            let _ = writeln!(
                s,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"#333\" stroke-width=\"1.5\"><title>{3}</title></line>",
                x(step.t_ms),
                y + lane_h - 5.0,
                y + lane_h - 1.0,
                escape(&format!("{} = {}", step.param, step.display))
            );
        }
    }
    // Latency plot: the latency of successful attempts only. A failed attempt has no latency (a
    // timeout is not a slow answer): it is a red mark in the strip above the plot, and it breaks the
    // line, so successes on either side of it are not joined.
    let max_lat = r
        .probes
        .iter()
        .flat_map(|p| p.results.iter().filter(|q| q.ok).map(|q| q.latency_ms))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let ly = |ms: f64| top + lat_h - lat_h * (ms / max_lat).clamp(0.0, 1.0);
    axis(&mut s, top, lat_h, max_lat, "latency ms (ok)");
    let fail_y = top - 4.0;
    for (i, p) in r.probes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for run in p.results.split(|q| !q.ok) {
            if run.len() < 2 {
                continue;
            }
            let pts: Vec<String> = run
                .iter()
                .map(|q| format!("{:.1},{:.1}", x(q.t_ms), ly(q.latency_ms)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline class=\"latency\" points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
                pts.join(" ")
            );
        }
        for q in &p.results {
            let tip = escape(&format!(
                "{} @{:.2}s: {}, {}",
                p.name,
                q.t_ms / 1e3,
                if q.ok {
                    format!("{:.1} ms", q.latency_ms)
                } else {
                    format!("failed after {:.1} ms", q.latency_ms)
                },
                q.detail
            ));
            if q.ok {
                let _ = writeln!(
                    s,
                    "<circle class=\"ok-attempt\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#2a7d2a\"><title>{tip}</title></circle>",
                    x(q.t_ms),
                    ly(q.latency_ms),
                );
            } else {
                let _ = writeln!(
                    s,
                    "<path class=\"failed-attempt\" d=\"M{0:.1},{1:.1}l5,5m0,-5l-5,5\" stroke=\"#c62828\" stroke-width=\"1.5\"><title>{tip}</title></path>",
                    x(q.t_ms) - 2.5,
                    fail_y - 5.0 - 6.0 * i as f64,
                );
            }
        }
    }
    // Success rate (rolling over each probe's window).
    axis(&mut s, ok_top, ok_h, 100.0, "success %");
    // Each fault's recovery, as the summary gives it: the success line is back at 100 % from there.
    for rec in &r.summary.recovery {
        let Some(f) = r.faults.iter().find(|f| f.name == rec.fault) else {
            continue;
        };
        let (Some(end), Some(mttr)) = (f.end_ms, rec.mttr_ms) else {
            continue;
        };
        let _ = writeln!(
            s,
            "<line class=\"recovered\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"#2a7d2a\" stroke-dasharray=\"3 2\"><title>{3}</title></line>",
            x(end + mttr),
            ok_top,
            ok_top + ok_h,
            escape(&format!(
                "recovered {} after '{}'",
                super::figures::format_mttr(Some(mttr)),
                rec.fault
            ))
        );
    }
    for (i, p) in r.probes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = super::figures::success_line(p, &r.faults, &r.summary.recovery)
            .into_iter()
            .map(|(t, rate)| format!("{:.1},{:.1}", x(t), ok_top + ok_h - ok_h * rate / 100.0))
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                pts.join(" ")
            );
        }
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            LEFT,
            ok_top + ok_h + 30.0 + 16.0 * i as f64,
            LEFT + 18.0,
            ok_top + ok_h + 34.0 + 16.0 * i as f64,
            escape(&format!(
                "{} - {}{} (dots: each successful attempt; red crosses above the plot: failed attempts; success %: over the last {} restarting at each fault's start, end and recovery, the green dashes)",
                p.name,
                p.check,
                p.from_target
                    .as_ref()
                    .map(|t| format!(", from inside {t}"))
                    .unwrap_or_default(),
                crate::units::format_duration(p.tolerance.window)
            ))
        );
    }
    // Abort and time axis.
    if let Some(e) = r
        .events
        .iter()
        .find(|e| e.kind == "abort" || e.kind == "budget.exceeded")
    {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1:.1}\" stroke=\"#c62828\" stroke-width=\"2\" stroke-dasharray=\"5 3\"/><text x=\"{2:.1}\" y=\"{3:.1}\" fill=\"#c62828\">abort</text>",
            x(e.t_ms),
            ok_top + ok_h,
            x(e.t_ms) + 3.0,
            top + 40.0
        );
    }
    let step_s = nice_step(total_ms / 1e3 / 10.0);
    let mut t = 0.0;
    while t * 1e3 <= total_ms {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"#999\"/><text x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\">{4}s</text>",
            x(t * 1e3),
            ok_top + ok_h,
            ok_top + ok_h + 4.0,
            ok_top + ok_h + 16.0,
            (t * 100.0_f64).round() / 100.0
        );
        t += step_s;
    }
    s += "</svg>\n";
    s
}

fn axis(s: &mut String, top: f64, h: f64, max: f64, label: &str) {
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{PLOT_W}\" height=\"{h}\" fill=\"none\" stroke=\"#bbb\"/>"
    );
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = top + h - h * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + PLOT_W,
            LEFT - 6.0,
            y + 4.0,
            if max >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{label}</text>",
        top + h / 2.0,
        top + h / 2.0
    );
}

/// A chart per fault: the events the kernel counted per second (from the per-second counter samples),
/// and the intensity its ramp set, as a step line on its own scale.
fn per_second(h: &mut String, r: &Report) {
    *h += "<h2>Per second</h2>\n";
    if r.faults.is_empty() {
        *h += "<p><i>no faults</i></p>\n";
        return;
    }
    let total_ms = r.duration_ms.max(1.0);
    let x = |t: f64| LEFT + PLOT_W * (t / total_ms).clamp(0.0, 1.0);
    let ch = 120.0;
    for (i, f) in r.faults.iter().enumerate() {
        let color = FAULT_COLORS[i % FAULT_COLORS.len()];
        // Rates between consecutive cumulative samples.
        let rates: Vec<(f64, f64)> = f
            .samples
            .windows(2)
            .filter(|w| w[1].t_ms > w[0].t_ms)
            .map(|w| {
                let n = w[1].injected_events.saturating_sub(w[0].injected_events) as f64;
                (w[1].t_ms, n * 1e3 / (w[1].t_ms - w[0].t_ms))
            })
            .collect();
        let max_rate = rates.iter().map(|(_, v)| *v).fold(1.0_f64, f64::max) * 1.1;
        let _ = writeln!(
            h,
            "<div class=\"fault-chart\"><b>{}</b> &mdash; {}",
            escape(&f.name),
            escape(&f.description)
        );
        let height = ch + 30.0;
        let _ = writeln!(
            h,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\" role=\"img\" aria-label=\"per second\">"
        );
        let mut s = String::new();
        axis(&mut s, 10.0, ch, max_rate, "events/s");
        let y = |v: f64, max: f64| 10.0 + ch - ch * (v / max).clamp(0.0, 1.0);
        if rates.is_empty() {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\">no per-second samples</text>",
                LEFT + 8.0,
                10.0 + ch / 2.0
            );
        } else {
            let pts: Vec<String> = rates
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v, max_rate)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline class=\"rate\" points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"><title>injected events per second</title></polyline>",
                pts.join(" ")
            );
        }
        if !f.ramp_steps.is_empty() {
            // The intensity: each step held until the next, then to the fault's end.
            let max = f
                .ramp_steps
                .iter()
                .map(|st| st.value)
                .fold(0.0_f64, f64::max);
            let max = if max > 0.0 { max * 1.1 } else { 1.0 };
            let end = f.end_ms.unwrap_or(f.planned_end_ms);
            let mut pts = Vec::new();
            for (k, st) in f.ramp_steps.iter().enumerate() {
                let next = f.ramp_steps.get(k + 1).map_or(end, |n| n.t_ms);
                pts.push(format!("{:.1},{:.1}", x(st.t_ms), y(st.value, max)));
                pts.push(format!("{:.1},{:.1}", x(next), y(st.value, max)));
            }
            let last = &f.ramp_steps[f.ramp_steps.len() - 1];
            // Its own scale, on the right: the left axis is events/s.
            let percent = last.display.ends_with('%');
            for k in 0..=4 {
                let v = max * k as f64 / 4.0;
                let _ = writeln!(
                    s,
                    "<text class=\"intensity-axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                    LEFT + PLOT_W - 4.0,
                    y(v, max) + 4.0,
                    if percent {
                        format!("{v:.0}%")
                    } else {
                        format!("{:.0} ms", v * 1e3)
                    }
                );
            }
            let _ = writeln!(
                s,
                "<polyline class=\"intensity\" points=\"{}\" fill=\"none\" stroke=\"#333\" stroke-dasharray=\"4 2\" stroke-width=\"1.5\"><title>{}</title></polyline><text x=\"{:.1}\" y=\"22\">dashed: {} (up to {}), on the scale at the right</text>",
                pts.join(" "),
                escape(&last.param),
                LEFT + PLOT_W - 330.0,
                escape(&last.param),
                escape(&last.display)
            );
        }
        *h += &s;
        *h += "</svg></div>\n";
    }
}

/// A table's one row when it has nothing to list, so an empty table says so.
fn empty_row(columns: usize, text: &str) -> String {
    format!("<tr class=\"empty\"><td colspan=\"{columns}\"><i>{text}</i></td></tr>\n")
}

fn nice_step(raw: f64) -> f64 {
    for s in [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ] {
        if raw <= s {
            return s;
        }
    }
    1800.0
}

fn tables(h: &mut String, r: &Report) {
    *h += "<h2>Steady-state hypothesis</h2><table><tr><th>phase</th><th>probe</th><th>held</th><th>ok</th><th>success</th><th>p95</th><th>why</th></tr>\n";
    for x in &r.hypothesis {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}/{}</td><td>{:.1}%</td><td>{}</td><td>{}</td></tr>",
            x.phase,
            escape(&x.probe),
            if x.held { "ok" } else { "bad" },
            if x.held { "yes" } else { "no" },
            x.stats.ok,
            x.stats.count,
            x.stats.success_rate,
            x.stats
                .p95_latency_ms
                .map_or("n/a".into(), |p| format!("{p:.1} ms")),
            escape(x.why.as_deref().unwrap_or(""))
        );
    }
    if r.hypothesis.is_empty() {
        *h += &empty_row(7, "no steady-state probes: nothing was checked");
    }
    *h += "</table>\n<h2>Faults</h2><table><tr><th>fault</th><th>what</th><th>armed</th><th>detached</th><th>injected</th><th>kernel counters</th><th>attached</th></tr>\n";
    for f in &r.faults {
        let counters = f
            .counters
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.name),
            escape(&f.description),
            f.start_ms
                .map_or("never".into(), |v| format!("{:.2}s", v / 1e3)),
            f.end_ms.map_or("-".into(), |v| format!("{:.2}s", v / 1e3)),
            if crate::kind::counts_events_of(&f.kind) {
                f.injected_events.to_string()
            } else {
                "- (not a count of events)".to_owned()
            },
            escape(&counters),
            escape(&f.attached.join("; "))
        );
    }
    if r.faults.is_empty() {
        *h += &empty_row(7, "no faults");
    }
    *h += "</table>\n<h2>Safety review</h2><table><tr><th>risk</th><th>check</th><th>finding</th></tr>\n";
    if r.findings.is_empty() {
        *h += &empty_row(3, "no findings");
    }
    for f in &r.findings {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.risk,
            escape(&f.code),
            escape(&f.message)
        );
    }
    *h += "</table>\n<h2>Events</h2><table><tr><th>t</th><th>event</th><th>detail</th></tr>\n";
    if r.events.is_empty() {
        *h += &empty_row(3, "no events");
    }
    for e in &r.events {
        let _ = writeln!(
            h,
            "<tr><td>{:.2}s</td><td>{}</td><td>{}</td></tr>",
            e.t_ms / 1e3,
            escape(&e.kind),
            escape(&e.detail)
        );
    }
    *h += "</table>\n";
}
