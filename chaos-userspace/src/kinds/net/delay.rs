//! The shapes a delay can take (`--delay-distribution`): netem's distributions, tabled as the eBPF
//! program reads them.
//!
//! Every table is an inverse CDF of a distribution with mean 0 and standard deviation 1, so `--delay`
//! is the mean and `--jitter` the standard deviation whichever is chosen (uniform keeps netem's
//! meaning: anywhere within ±jitter).

use chaos_common::{DELAY_TABLE_SHIFT, DELAY_TABLE_SIZE};
use statrs::distribution::{ContinuousCDF as _, Normal, Pareto};

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Anywhere within ±jitter, each value alike (netem's default).
    #[default]
    Uniform,
    /// Normal, jitter its standard deviation.
    Normal,
    /// Pareto (shape 3): most packets a little early, a long tail of late ones.
    Pareto,
    /// A quarter normal, three quarters pareto (as netem's paretonormal mixes them).
    Paretonormal,
}

impl Distribution {
    pub const NAMES: &'static [&'static str] = &["uniform", "normal", "pareto", "paretonormal"];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "uniform" => Some(Self::Uniform),
            "normal" => Some(Self::Normal),
            "pareto" => Some(Self::Pareto),
            "paretonormal" => Some(Self::Paretonormal),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The eBPF program's table: entry i is the standard score of quantile (i + 0.5) / 4096, times
    /// 2^16. None for uniform, which needs none.
    pub fn table(self) -> Option<Vec<i32>> {
        let score: Box<dyn Fn(f64) -> f64> = match self {
            Self::Uniform => return None,
            Self::Normal => {
                let n = Normal::standard();
                Box::new(move |q| n.inverse_cdf(q))
            }
            Self::Pareto => Box::new(pareto_score),
            Self::Paretonormal => {
                // Mixed sample by sample (the sum of a quarter of one and three quarters of the
                // other), then scaled back to a standard deviation of 1. Its quantiles come from
                // sorting a fine grid of both.
                let n = Normal::standard();
                let grid = 512;
                let scale = (0.25f64.powi(2) + 0.75f64.powi(2)).sqrt();
                let mut mix: Vec<f64> = (0..grid)
                    .flat_map(|i| {
                        let a = n.inverse_cdf((i as f64 + 0.5) / grid as f64);
                        (0..grid).map(move |j| (a, j))
                    })
                    .map(|(a, j)| {
                        (0.25 * a + 0.75 * pareto_score((j as f64 + 0.5) / grid as f64)) / scale
                    })
                    .collect();
                mix.sort_by(f64::total_cmp);
                Box::new(move |q| mix[((q * mix.len() as f64) as usize).min(mix.len() - 1)])
            }
        };
        let one = f64::from(1u32 << DELAY_TABLE_SHIFT);
        Some(
            (0..DELAY_TABLE_SIZE)
                .map(|i| {
                    let q = (f64::from(i) + 0.5) / f64::from(DELAY_TABLE_SIZE);
                    (score(q) * one).round() as i32
                })
                .collect(),
        )
    }
}

/// Pareto with shape 3 (scale 1), standardized: its mean is 1.5 and its standard deviation
/// sqrt(3)/2.
fn pareto_score(q: f64) -> f64 {
    const SHAPE: f64 = 3.0;
    let mean = SHAPE / (SHAPE - 1.0);
    let sd = (SHAPE / ((SHAPE - 1.0).powi(2) * (SHAPE - 2.0))).sqrt();
    let x = match Pareto::new(1.0, SHAPE) {
        Ok(p) => p.inverse_cdf(q),
        // Unreachable with these constants; the closed form is the same.
        Err(_) => (1.0 - q).powf(-1.0 / SHAPE),
    };
    (x - mean) / sd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(t: &[i32]) -> (f64, f64) {
        let v: Vec<f64> = t.iter().map(|&x| f64::from(x) / 65536.0).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        (mean, var.sqrt())
    }

    #[test]
    fn tables_are_standard_scores() {
        assert!(Distribution::Uniform.table().is_none());
        for d in [
            Distribution::Normal,
            Distribution::Pareto,
            Distribution::Paretonormal,
        ] {
            let t = d.table().unwrap();
            assert_eq!(t.len(), DELAY_TABLE_SIZE as usize);
            assert!(t.windows(2).all(|w| w[0] <= w[1]), "{d:?} is not sorted");
            let (mean, sd) = moments(&t);
            // A table of quantiles clips the far tails: pareto's heavy one most.
            let sd_low = if d == Distribution::Normal {
                0.99
            } else {
                0.85
            };
            assert!(mean.abs() < 0.03, "{d:?} mean {mean}");
            assert!((sd_low..=1.01).contains(&sd), "{d:?} sd {sd}");
        }
        let normal = Distribution::Normal.table().unwrap();
        // The median is 0; the 84th percentile one standard deviation.
        assert!(normal[2048].abs() < 100);
        assert!((f64::from(normal[3441]) / 65536.0 - 1.0).abs() < 0.01);
        // Pareto's left end: no packet much earlier than the mean, a long tail later.
        let pareto = Distribution::Pareto.table().unwrap();
        assert!(f64::from(pareto[0]) / 65536.0 > -0.6);
        assert!(f64::from(pareto[4095]) / 65536.0 > 10.0);
    }
}
