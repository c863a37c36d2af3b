//! The progress line of `kchaos run` and `monkey`: between their events, where the run is (phase,
//! time left), what each fault injects per second, and how the probes fare. On a terminal it is one
//! line on stderr, redrawn in place every second and cleared before an event line is printed; when
//! stderr is not a terminal (CI logs, a pipe) it is a plain line every five seconds, so a log shows the
//! run's course without a line per second. Built from the live snapshot the runner keeps anyway.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use crate::live::{FaultState, Phase, Snapshot};

/// How often the line is drawn on a terminal, and written as a plain line elsewhere.
const EVERY_ON_A_TERMINAL: Duration = Duration::from_secs(1);
const EVERY_IN_A_LOG: Duration = Duration::from_secs(5);

/// The progress line's state: when it is next due, what the last one counted (for rates).
pub struct Progress {
    in_place: bool,
    every: Duration,
    next: Option<Instant>,
    last: Option<(Instant, Snapshot)>,
    /// A line is drawn in place and not cleared yet.
    drawn: bool,
}

impl Progress {
    /// For stderr as it is: redrawn in place on a terminal, plain lines elsewhere.
    pub fn for_stderr() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }

    pub fn new(in_place: bool) -> Self {
        Self {
            in_place,
            every: if in_place {
                EVERY_ON_A_TERMINAL
            } else {
                EVERY_IN_A_LOG
            },
            next: None,
            last: None,
            drawn: false,
        }
    }

    /// The line, when one is due at `now` (the first one a period after the first call).
    pub fn due(&mut self, now: Instant, snap: &Snapshot, now_unix_ms: u64) -> Option<String> {
        let next = *self.next.get_or_insert(now + self.every);
        if now < next {
            if self.last.is_none() {
                self.last = Some((now, snap.clone()));
            }
            return None;
        }
        self.next = Some(next + self.every);
        let prev = self.last.as_ref().map(|(t, s)| (s, now.duration_since(*t)));
        let text = line(prev, snap, now_unix_ms);
        self.last = Some((now, snap.clone()));
        Some(text)
    }

    /// Draws `text`: in place on a terminal (cut to its width, so it never wraps), else a line.
    pub fn show(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.in_place {
            let width = terminal_width().unwrap_or(100).saturating_sub(1);
            let cut: String = text.chars().take(width).collect();
            let _ = write!(err, "\r\x1b[K{cut}");
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    /// Clears a line drawn in place, before another line is printed where it stands.
    pub fn clear(&mut self) {
        if self.drawn {
            self.drawn = false;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The progress line for `snap`, with rates over the time since `prev`.
pub fn line(prev: Option<(&Snapshot, Duration)>, snap: &Snapshot, now_unix_ms: u64) -> String {
    let elapsed = now_unix_ms.saturating_sub(snap.started_unix_ms) as f64 / 1e3;
    let mut parts = vec![format!("[{elapsed:>6.1}s] {}", snap.phase.as_str())];
    if let Some(end) = snap.ends_unix_ms
        && snap.phase != Phase::Ended
    {
        let left = Duration::from_secs(end.saturating_sub(now_unix_ms).div_ceil(1000));
        parts[0] += &format!(", {} left", humantime::format_duration(left));
    }
    let secs = prev.map(|(_, d)| d.as_secs_f64()).filter(|s| *s > 0.0);
    for (i, f) in snap.faults.iter().enumerate() {
        let state = match f.state {
            FaultState::Pending => "pending",
            FaultState::Prepared => "waiting",
            FaultState::Armed => "armed",
            FaultState::Done => "done",
        };
        let mut part = format!("{}: {state}", f.name);
        if crate::kind::counts_events_of(&f.kind)
            && (f.state == FaultState::Armed || f.injected_events > 0)
        {
            let before = prev
                .and_then(|(p, _)| p.faults.get(i))
                .map_or(0, |p| p.injected_events);
            match secs {
                Some(s) if f.state == FaultState::Armed => {
                    part += &format!(
                        ", {:.0} injected/s",
                        f.injected_events.saturating_sub(before) as f64 / s
                    )
                }
                _ => {}
            }
            part += &format!(", {} in all", f.injected_events);
        }
        parts.push(part);
    }
    for (i, p) in snap.probes.iter().enumerate() {
        let (ok0, failed0) = prev
            .and_then(|(s, _)| s.probes.get(i))
            .map_or((0, 0), |q| (q.ok, q.failed));
        let (ok, failed) = (p.ok.saturating_sub(ok0), p.failed.saturating_sub(failed0));
        let window = secs.map_or(String::new(), |s| format!(" in {s:.0}s"));
        parts.push(if ok + failed == 0 {
            format!("probe {}: no result{window}", p.name)
        } else {
            format!("probe {}: {ok} ok, {failed} failed{window}", p.name)
        });
    }
    if let Some(max) = snap.max_injected_events {
        parts.push(format!("budget {}/{max} events", snap.injected_events));
    }
    parts.join(" | ")
}

/// Columns of the terminal on stderr.
fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ writes a `winsize` into the struct we pass, which lives for the call; a
    // descriptor that is no terminal makes it fail, and nothing is written then.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fd 2 stays open for the process's life.
    let rc = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{FaultStatus, ProbeStatus};

    fn snap(injected: u64, ok: u64, failed: u64, state: FaultState) -> Snapshot {
        Snapshot {
            phase: Phase::During,
            started_unix_ms: 1_000_000,
            ends_unix_ms: Some(1_060_000),
            faults: vec![
                FaultStatus {
                    name: "lossy".into(),
                    state,
                    injected_events: injected,
                    ..FaultStatus::default()
                },
                FaultStatus {
                    name: "later".into(),
                    state: FaultState::Prepared,
                    ..FaultStatus::default()
                },
            ],
            probes: vec![ProbeStatus {
                name: "api".into(),
                ok,
                failed,
                ..ProbeStatus::default()
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_line_says_phase_time_left_rates_and_probe_results() {
        let before = snap(100, 10, 0, FaultState::Armed);
        let now = snap(400, 18, 2, FaultState::Armed);
        let text = line(Some((&before, Duration::from_secs(2))), &now, 1_012_500);
        assert_eq!(
            text,
            "[  12.5s] during, 48s left | lossy: armed, 150 injected/s, 400 in all | later: \
             waiting | probe api: 8 ok, 2 failed in 2s"
        );
    }

    #[test]
    fn a_first_line_has_totals_and_no_rates() {
        let text = line(None, &snap(0, 0, 0, FaultState::Prepared), 1_000_400);
        assert_eq!(
            text,
            "[   0.4s] during, 1m left | lossy: waiting | later: waiting | probe api: no result"
        );
    }

    #[test]
    fn lines_come_once_a_period_in_a_log() {
        let mut p = Progress::new(false);
        let t0 = Instant::now();
        let s = snap(0, 0, 0, FaultState::Armed);
        assert_eq!(p.due(t0, &s, 1_000_000), None);
        assert_eq!(p.due(t0 + Duration::from_secs(4), &s, 1_004_000), None);
        let first = p.due(
            t0 + Duration::from_secs(5),
            &snap(500, 5, 0, FaultState::Armed),
            1_005_000,
        );
        assert!(
            first
                .as_deref()
                .is_some_and(|l| l.contains("100 injected/s")),
            "{first:?}"
        );
        assert_eq!(p.due(t0 + Duration::from_secs(6), &s, 1_006_000), None);
    }
}
