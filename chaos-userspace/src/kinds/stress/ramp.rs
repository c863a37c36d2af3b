//! `--ramp`: the share of the target load in effect at a time since the start, rising in steps.
//!
//! The loader and every worker compute it from the same start instant (CLOCK_MONOTONIC), so the steps
//! happen together and the live line's target matches what the workers aim at.

use std::time::Duration;

/// Steps are about a second long, and there are at most this many.
const MAX_STEPS: u32 = 10;

/// A ramp to the full target over `over`, in `steps` equal steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ramp {
    over: Duration,
    steps: u32,
}

impl Ramp {
    /// No ramp (None or zero) means the full target at once.
    pub fn new(over: Option<Duration>) -> Option<Self> {
        let over = over.filter(|d| !d.is_zero())?;
        let steps = (over.as_secs_f64().round() as u32).clamp(1, MAX_STEPS);
        Some(Self { over, steps })
    }

    /// The share (0..=1) of the target at `elapsed`: step k of n holds (k+1)/(n+1), so the load starts
    /// low but above zero, rises every over/n, and is full from `over` on.
    pub fn fraction(&self, elapsed: Duration) -> f64 {
        if elapsed >= self.over {
            return 1.0;
        }
        let step_len = self.over.as_secs_f64() / f64::from(self.steps);
        let k = (elapsed.as_secs_f64() / step_len).floor();
        ((k + 1.0) / (f64::from(self.steps) + 1.0)).min(1.0)
    }
}

/// The share of the target at `elapsed` under an optional ramp.
pub fn fraction(ramp: Option<Ramp>, elapsed: Duration) -> f64 {
    ramp.map_or(1.0, |r| r.fraction(elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_in_steps_and_is_full_at_the_end() {
        let r = Ramp::new(Some(Duration::from_secs(4))).unwrap();
        let at = |ms| r.fraction(Duration::from_millis(ms));
        assert_eq!(at(0), 0.2);
        assert_eq!(at(999), 0.2);
        assert_eq!(at(1000), 0.4);
        assert_eq!(at(3999), 0.8);
        assert_eq!(at(4000), 1.0);
        assert_eq!(at(60_000), 1.0);
    }

    #[test]
    fn no_ramp_is_full_at_once_and_long_ramps_cap_the_steps() {
        assert_eq!(Ramp::new(None), None);
        assert_eq!(Ramp::new(Some(Duration::ZERO)), None);
        assert_eq!(fraction(None, Duration::ZERO), 1.0);
        let r = Ramp::new(Some(Duration::from_secs(100))).unwrap();
        assert_eq!(r.steps, MAX_STEPS);
        assert!((r.fraction(Duration::from_secs(10)) - 2.0 / 11.0).abs() < 1e-9);
        let short = Ramp::new(Some(Duration::from_millis(300))).unwrap();
        assert_eq!(short.steps, 1);
        assert_eq!(short.fraction(Duration::ZERO), 0.5);
    }
}
