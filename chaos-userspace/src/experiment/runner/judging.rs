//! Judging the steady state: probe results into their phases, abort rules over their sliding windows,
//! and each phase's hypothesis.

use super::Run;
use crate::{
    experiment::probes::{self, ProbeResult},
    report::ProbeSample,
    units::format_duration,
};

impl Run<'_> {
    pub(super) fn phase_of(&self, t_ns: u64) -> &'static str {
        match self.after_start_ns {
            Some(a) if t_ns >= a => "after",
            _ if t_ns >= self.method_start_ns => "during",
            _ => "before",
        }
    }

    /// Stores a result; during the method, returns an abort reason when a rule fires.
    pub(super) fn record_result(&mut self, r: ProbeResult) -> Option<String> {
        let index = self
            .s
            .steady_state
            .probes
            .iter()
            .position(|p| p.name == r.probe)?;
        if let Some(p) = self.live.lock().probes.get_mut(index) {
            p.observe(r.ok, r.latency_ms / 1e3);
        }
        let phase = self.phase_of(r.t_ns);
        self.probe_results[index].push(ProbeSample::from_result(&r, self.t0_ns, phase));
        if phase != "during" || self.after_start_ns.is_some() {
            return None;
        }
        self.judge_rules(index, &r.detail);
        self.check_abort_rules()
    }

    /// Re-judges, over its sliding window, every abort rule watching probe `index`.
    fn judge_rules(&mut self, index: usize, last_detail: &str) {
        let probe = &self.s.steady_state.probes[index];
        let now = self.ms();
        let window_ms = probe.tolerance.window.as_secs_f64() * 1e3;
        let window: Vec<ProbeResult> = self.probe_results[index]
            .iter()
            .filter(|x| x.phase == "during" && x.t_ms + x.latency_ms > now - window_ms)
            .map(|x| ProbeResult {
                probe: String::new(),
                t_ns: 0,
                ok: x.ok,
                latency_ms: x.latency_ms,
                detail: String::new(),
            })
            .collect();
        let stats = probes::stats(&window);
        for (k, rule) in self.s.abort.iter().enumerate() {
            if rule.probe != probe.name {
                continue;
            }
            match probes::judge(&rule.tolerance(&probe.tolerance), &stats) {
                Err(why) => {
                    if self.violated_since[k].is_none() {
                        self.violated_since[k] = Some(now);
                        self.event(
                            "probe.violated",
                            format!(
                                "'{}' (abort rule {}): {why} (last: {last_detail})",
                                rule.probe,
                                k + 1
                            ),
                        );
                    }
                }
                Ok(()) => {
                    if self.violated_since[k].take().is_some() {
                        self.event(
                            "probe.held",
                            format!("'{}' within abort rule {} again", rule.probe, k + 1),
                        );
                    }
                }
            }
        }
    }

    pub(super) fn check_abort_rules(&mut self) -> Option<String> {
        let now = self.ms();
        for (k, rule) in self.s.abort.iter().enumerate() {
            if let Some(since) = self.violated_since[k]
                && now - since >= rule.violated_for.as_secs_f64() * 1e3
            {
                let why = format!(
                    "probe '{}' violated its tolerance for {:.0} ms (abort rule {}: for {})",
                    rule.probe,
                    now - since,
                    k + 1,
                    format_duration(rule.violated_for)
                );
                self.event("abort", why.clone());
                return Some(why);
            }
        }
        None
    }

    /// Judges every probe over a phase; returns what failed.
    pub(super) fn judge_phase(&self, phase: &str) -> Vec<String> {
        let mut failed = Vec::new();
        for (i, p) in self.s.steady_state.probes.iter().enumerate() {
            let results: Vec<ProbeResult> = self.probe_results[i]
                .iter()
                .filter(|r| r.phase == phase)
                .map(|x| ProbeResult {
                    probe: String::new(),
                    t_ns: 0,
                    ok: x.ok,
                    latency_ms: x.latency_ms,
                    detail: x.detail.clone(),
                })
                .collect();
            if let Err(why) = probes::judge(&p.tolerance, &probes::stats(&results)) {
                let last = results.last().map(|r| r.detail.clone()).unwrap_or_default();
                failed.push(format!("probe '{}': {why} (last: {last})", p.name));
            }
        }
        failed
    }
}
