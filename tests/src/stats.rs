//! Statistical bounds for the tests' assertions, each derived from a stated false-alarm rate.
//!
//! Every statistical assertion in the suite is made at [`ALPHA`] = 1e-6: the chance that it fails
//! while the product is right is at most one in a million. With about a thousand such assertions
//! in a run (three kernels), the suite's chance of a false red stays below 0.1 %.
//!
//! The helpers are exact or distribution-free wherever that is cheap:
//! - [`binomial_bounds`]: the range a count of independent events (lost packets, failed calls)
//!   stays in, from the binomial distribution itself (summed in log space), not a normal
//!   approximation.
//! - [`hoeffding`] and [`bernstein`]: how far a sample mean may stray from the true mean, given
//!   only the range the values lie in (and, for Bernstein, their standard deviation).
//! - [`quantile_ranks`] and [`quantile_bracket`]: which order statistics bracket a true quantile
//!   (the count of values below it is binomial).
//! - [`dkw_epsilon`], [`ks_bracketed`], [`ks_continuous`]: a one-sample Kolmogorov–Smirnov test,
//!   its critical value from the Dvoretzky–Kiefer–Wolfowitz inequality (Massart's constant), which
//!   holds for every distribution, discrete ones included.
//! - [`ks_two_sample`] and [`ks_two_sample_epsilon`]: the same for two samples of one
//!   distribution (kchaos's and netem's, say).
//!
//! Timing tests are not statistical in this sense: they compare against a reference measured in
//! the same boot (see the tests), with margins derived in their comments.

use statrs::function::gamma::ln_gamma;

/// The false-alarm rate of every statistical assertion in the suite.
pub const ALPHA: f64 = 1e-6;

/// ln of the probability that Bin(n, p) is k.
fn ln_pmf(n: u64, p: f64, k: u64) -> f64 {
    if p <= 0.0 {
        return if k == 0 { 0.0 } else { f64::NEG_INFINITY };
    }
    if p >= 1.0 {
        return if k == n { 0.0 } else { f64::NEG_INFINITY };
    }
    let (nf, kf) = (n as f64, k as f64);
    ln_gamma(nf + 1.0) - ln_gamma(kf + 1.0) - ln_gamma(nf - kf + 1.0)
        + kf * p.ln()
        + (nf - kf) * (-p).ln_1p()
}

/// ln(e^a + e^b), without overflow or underflow.
fn ln_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// The smallest k with P(X <= k) > limit, X ~ Bin(n, p) (summed from the lower tail in log space).
fn lower_rank(n: u64, p: f64, limit: f64) -> u64 {
    let ln_limit = limit.ln();
    let mut acc = f64::NEG_INFINITY;
    for k in 0..=n {
        acc = ln_add(acc, ln_pmf(n, p, k));
        if acc > ln_limit {
            return k;
        }
    }
    n
}

/// The range a count of `n` independent trials of chance `p` each stays in, but with probability
/// at most `alpha`: (lo, hi) with P(X < lo) <= alpha/2 and P(X > hi) <= alpha/2 for X ~ Bin(n, p),
/// each as tight as the binomial's own CDF allows (computed exactly, in log space).
///
/// ```
/// // 100 fair coins: 95 % of the time between 40 and 60 heads.
/// assert_eq!(integration_tests::stats::binomial_bounds(100, 0.5, 0.05), (40, 60));
/// ```
pub fn binomial_bounds(n: u64, p: f64, alpha: f64) -> (u64, u64) {
    assert!((0.0..=1.0).contains(&p), "chance {p} is not within 0..=1");
    assert!(
        alpha > 0.0 && alpha < 1.0,
        "alpha {alpha} is not within 0..1"
    );
    let lo = lower_rank(n, p, alpha / 2.0);
    // The upper tail of X is the lower tail of n - X ~ Bin(n, 1 - p).
    let hi = n - lower_rank(n, 1.0 - p, alpha / 2.0);
    (lo, hi)
}

/// Asserts that `count` events out of `n` trials of chance `p` each lie within
/// [`binomial_bounds`] at [`ALPHA`]; `what` names them in the failure.
pub fn assert_binomial(what: &str, count: u64, n: u64, p: f64) {
    let (lo, hi) = binomial_bounds(n, p, ALPHA);
    assert!(
        (lo..=hi).contains(&count),
        "{what}: {count} of {n} ({:.3} %), expected {lo}..={hi} for a chance of {:.3} % \
         (binomial, alpha {ALPHA})",
        100.0 * count as f64 / n as f64,
        100.0 * p
    );
}

/// ln(2/alpha): the log factor every two-sided exponential tail bound here shares.
fn two_sided(alpha: f64) -> f64 {
    (2.0 / alpha).ln()
}

/// Hoeffding: the mean of `n` independent values each within a span of `range` strays from the
/// true mean by more than this with probability at most `alpha`:
/// P(|mean - mu| >= t) <= 2 exp(-2 n t^2 / range^2).
pub fn hoeffding(n: usize, range: f64, alpha: f64) -> f64 {
    range * (two_sided(alpha) / (2.0 * n as f64)).sqrt()
}

/// Bernstein: the mean of `n` independent values of standard deviation `sd`, each at most `reach`
/// from the true mean, strays from it by more than this with probability at most `alpha`:
/// P(|mean - mu| >= t) <= 2 exp(-n t^2 / (2 sd^2 + 2 reach t / 3)), solved for t. Much tighter
/// than [`hoeffding`] for a long-tailed distribution, whose reach is far beyond its deviation.
pub fn bernstein(n: usize, sd: f64, reach: f64, alpha: f64) -> f64 {
    let (l, n) = (two_sided(alpha), n as f64);
    let b = reach * l / 3.0;
    (b + (b * b + 2.0 * n * sd * sd * l).sqrt()) / n
}

/// The two-sided standard normal quantile: |Z| > z with probability `alpha` (4.89 at 1e-6). Only
/// for estimates whose normality is argued where it is used (a central limit theorem over many
/// weakly dependent terms, such as a Markov chain's loss count); the bounds above need no such
/// argument.
pub fn normal_z(alpha: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF as _, Normal};
    -Normal::standard().inverse_cdf(alpha / 2.0)
}

/// The order statistics that bracket the true `q`-quantile of a continuous distribution in a
/// sorted sample of `n`, but with probability at most `alpha`: 0-based indices (lo, hi) such that
/// sorted[lo] <= quantile <= sorted[hi]; None where the bracket is open (the sample is too small).
/// The count of values below the quantile is Bin(n, q), whose [`binomial_bounds`] these are.
pub fn quantile_ranks(n: usize, q: f64, alpha: f64) -> (Option<usize>, Option<usize>) {
    let (lo, hi) = binomial_bounds(n as u64, q, alpha);
    // At least `lo` values lie at or below the quantile: the lo-th smallest (1-based, index lo - 1)
    // does. At most `hi` do: the (hi + 1)-th smallest (index hi) lies above it.
    let (lo, hi) = (lo as usize, hi as usize);
    (lo.checked_sub(1), (hi < n).then_some(hi))
}

/// [`quantile_ranks`] read from a sorted sample: (low, high) that contain the true `q`-quantile
/// but with probability at most `alpha` (infinite where the bracket is open).
pub fn quantile_bracket(sorted: &[f64], q: f64, alpha: f64) -> (f64, f64) {
    let (lo, hi) = quantile_ranks(sorted.len(), q, alpha);
    (
        lo.map_or(f64::NEG_INFINITY, |i| sorted[i]),
        hi.map_or(f64::INFINITY, |i| sorted[i]),
    )
}

/// The Dvoretzky–Kiefer–Wolfowitz bound (Massart's constant): the empirical CDF of `n` independent
/// draws strays from the true CDF anywhere by more than this with probability at most `alpha`,
/// eps = sqrt(ln(2/alpha) / (2n)). It holds for every distribution, discrete ones included (for
/// them it is conservative).
pub fn dkw_epsilon(n: usize, alpha: f64) -> f64 {
    (two_sided(alpha) / (2.0 * n as f64)).sqrt()
}

/// A distribution of finitely many equally likely values (a table kchaos built), with its exact
/// CDF and moments.
#[derive(Clone, Debug)]
pub struct Discrete {
    sorted: Vec<f64>,
}

impl Discrete {
    /// Each value equally likely (repeats count as often as they appear).
    pub fn new(mut values: Vec<f64>) -> Self {
        assert!(!values.is_empty(), "a distribution needs a value");
        values.sort_by(f64::total_cmp);
        Self { sorted: values }
    }

    /// P(X <= x).
    pub fn cdf(&self, x: f64) -> f64 {
        self.sorted.partition_point(|&v| v <= x) as f64 / self.sorted.len() as f64
    }

    /// P(X < x).
    pub fn cdf_below(&self, x: f64) -> f64 {
        self.sorted.partition_point(|&v| v < x) as f64 / self.sorted.len() as f64
    }

    pub fn mean(&self) -> f64 {
        self.sorted.iter().sum::<f64>() / self.sorted.len() as f64
    }

    /// The standard deviation (of the distribution, not a sample's estimate).
    pub fn sd(&self) -> f64 {
        let m = self.mean();
        let var =
            self.sorted.iter().map(|x| (x - m).powi(2)).sum::<f64>() / self.sorted.len() as f64;
        var.sqrt()
    }

    pub fn min(&self) -> f64 {
        self.sorted[0]
    }

    pub fn max(&self) -> f64 {
        self.sorted[self.sorted.len() - 1]
    }

    /// The farthest any value lies from the mean (Bernstein's reach).
    pub fn reach(&self) -> f64 {
        let m = self.mean();
        (self.max() - m).max(m - self.min())
    }

    pub fn values(&self) -> &[f64] {
        &self.sorted
    }
}

/// The fraction of `sorted` at or below x, and below x.
fn ecdf(sorted: &[f64], x: f64) -> (f64, f64) {
    let n = sorted.len() as f64;
    (
        sorted.partition_point(|&v| v <= x) as f64 / n,
        sorted.partition_point(|&v| v < x) as f64 / n,
    )
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The Kolmogorov–Smirnov distance between a sample known only within brackets and a discrete
/// distribution: draw i lay somewhere in [lower[i], upper[i]] (a value measured between two clock
/// reads, say). Returns the largest distance any sample within the brackets could have had from
/// `dist`'s CDF, sup_x max(F_upper(x) - F(x), F(x) - F_lower(x)): the sample's own CDF lies
/// between F_upper and F_lower everywhere. With exact values (lower == upper) it is the usual KS
/// statistic; compare it with [`dkw_epsilon`].
pub fn ks_bracketed(lower: &[f64], upper: &[f64], dist: &Discrete) -> f64 {
    assert_eq!(lower.len(), upper.len(), "one bracket per draw");
    assert!(
        lower.iter().zip(upper).all(|(l, u)| l <= u),
        "a bracket's lower end above its upper end"
    );
    let (lower, upper) = (sorted(lower), sorted(upper));
    // Both CDFs are right-continuous steps: the supremum is at a step (its value) or just before
    // one (the value at the step before it, which is also a candidate).
    let mut d: f64 = 0.0;
    for &x in lower.iter().chain(&upper).chain(dist.values()) {
        let (l_at, l_below) = ecdf(&lower, x);
        let (u_at, u_below) = ecdf(&upper, x);
        let (f_at, f_below) = (dist.cdf(x), dist.cdf_below(x));
        d = d
            .max(u_at - f_at)
            .max(f_at - l_at)
            .max(u_below - f_below)
            .max(f_below - l_below);
    }
    d
}

/// The Kolmogorov–Smirnov distance between a sample and a continuous CDF.
pub fn ks_continuous(sample: &[f64], cdf: impl Fn(f64) -> f64) -> f64 {
    let s = sorted(sample);
    let n = s.len() as f64;
    s.iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = cdf(x);
            (f - i as f64 / n).max((i + 1) as f64 / n - f)
        })
        .fold(0.0, f64::max)
}

/// The two-sample Kolmogorov–Smirnov distance: the largest gap between the two samples' CDFs.
pub fn ks_two_sample(a: &[f64], b: &[f64]) -> f64 {
    let (a, b) = (sorted(a), sorted(b));
    a.iter()
        .chain(&b)
        .map(|&x| {
            let ((fa, _), (fb, _)) = (ecdf(&a, x), ecdf(&b, x));
            (fa - fb).abs()
        })
        .fold(0.0, f64::max)
}

/// The critical value of [`ks_two_sample`] for samples of `n` and `m` drawn from one distribution:
/// each sample's CDF lies within [`dkw_epsilon`] at alpha/2 of the common CDF, so the two lie
/// within the sum of both with probability at least 1 - alpha (a union bound; exact whatever the
/// distribution).
pub fn ks_two_sample_epsilon(n: usize, m: usize, alpha: f64) -> f64 {
    dkw_epsilon(n, alpha / 2.0) + dkw_epsilon(m, alpha / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use statrs::distribution::{Binomial, DiscreteCDF as _};

    #[test]
    fn binomial_bounds_match_the_textbook_and_statrs() {
        // Ten and a hundred fair coins at 95 %: the textbook's acceptance regions.
        assert_eq!(binomial_bounds(10, 0.5, 0.05), (2, 8));
        assert_eq!(binomial_bounds(100, 0.5, 0.05), (40, 60));
        // Certain and impossible events.
        assert_eq!(binomial_bounds(50, 0.0, ALPHA), (0, 0));
        assert_eq!(binomial_bounds(50, 1.0, ALPHA), (50, 50));
        // Each bound is the tightest whose tail is at most alpha/2, by statrs's independent CDF
        // (the regularized incomplete beta).
        for (n, p) in [(1000, 0.5), (10_000, 0.01), (20_000, 0.3), (500, 0.002)] {
            let (lo, hi) = binomial_bounds(n, p, ALPHA);
            let b = Binomial::new(p, n).unwrap();
            let half = ALPHA / 2.0;
            if lo > 0 {
                assert!(b.cdf(lo - 1) <= half * (1.0 + 1e-9), "{n} {p}: below {lo}");
            }
            assert!(b.cdf(lo) > half * (1.0 - 1e-9), "{n} {p}: {lo} not tight");
            if hi < n {
                assert!(b.sf(hi) <= half * (1.0 + 1e-9), "{n} {p}: above {hi}");
            }
            assert!(
                b.sf(hi - 1) > half * (1.0 - 1e-9),
                "{n} {p}: {hi} not tight"
            );
        }
        // About 4.9 standard deviations either side at 1e-6 (1000 coins: sd 15.8).
        let (lo, hi) = binomial_bounds(1000, 0.5, ALPHA);
        assert!(
            (420..=426).contains(&lo) && (574..=580).contains(&hi),
            "{lo} {hi}"
        );
    }

    #[test]
    fn mean_bounds_have_their_closed_forms() {
        // Hoeffding: range 1, n 8000: sqrt(ln(2e6) / 16000).
        assert!((hoeffding(8000, 1.0, ALPHA) - 0.030_113).abs() < 1e-6);
        // Bernstein without reach is the sub-gaussian bound sqrt(2 sd^2 ln(2/alpha) / n) ...
        let l = (2.0 / ALPHA).ln();
        assert!((bernstein(1000, 2.0, 0.0, ALPHA) - (8.0 * l / 1000.0).sqrt()).abs() < 1e-12);
        // ... and solves its own tail equation.
        let (n, sd, reach) = (8000.0, 0.9, 21.6);
        let t = bernstein(8000, sd, reach, ALPHA);
        let tail = 2.0 * (-n * t * t / (2.0 * sd * sd + 2.0 * reach * t / 3.0)).exp();
        assert!((tail - ALPHA).abs() < 1e-12, "{t} {tail}");
        // For a long tail it beats Hoeffding's range by far.
        assert!(t < hoeffding(8000, reach + 1.7, ALPHA) / 5.0);
    }

    #[test]
    fn normal_z_is_the_two_sided_quantile() {
        assert!((normal_z(0.05) - 1.959_964).abs() < 1e-6);
        assert!((normal_z(ALPHA) - 4.891_638).abs() < 1e-6);
    }

    #[test]
    fn quantile_ranks_bracket_by_the_binomial() {
        // The median of 100 at 95 %: the 40th and 61st smallest (1-based).
        assert_eq!(quantile_ranks(100, 0.5, 0.05), (Some(39), Some(60)));
        // Too few values for a 99.9th percentile at 1e-6: open above.
        assert_eq!(quantile_ranks(100, 0.999, ALPHA).1, None);
        let s: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(quantile_bracket(&s, 0.5, 0.05), (39.0, 60.0));
    }

    #[test]
    fn dkw_and_ks_statistics_have_their_known_values() {
        // eps = sqrt(ln(2/alpha) / 2n): 0.0301 for 8000 draws at 1e-6, 1.36/sqrt(n) at 5 %.
        assert!((dkw_epsilon(8000, ALPHA) - 0.030_113).abs() < 1e-6);
        assert!((dkw_epsilon(100, 0.05) - 0.135_81).abs() < 1e-5);
        // The quantiles (i + 0.5)/n of the uniform are 0.5/n from its CDF.
        let s: Vec<f64> = (0..1000).map(|i| (f64::from(i) + 0.5) / 1000.0).collect();
        assert!((ks_continuous(&s, |x| x.clamp(0.0, 1.0)) - 0.0005).abs() < 1e-12);
        // A table drawn once each is at distance 0 from itself; shifted by a step, 1/n.
        let table: Vec<f64> = (0..64).map(f64::from).collect();
        let dist = Discrete::new(table.clone());
        assert_eq!(ks_bracketed(&table, &table, &dist), 0.0);
        let up: Vec<f64> = table.iter().map(|x| x + 1.0).collect();
        assert!((ks_bracketed(&up, &up, &dist) - 1.0 / 64.0).abs() < 1e-12);
        // A bracket wide enough to hold the truth: the closest sample within it fits.
        assert_eq!(ks_bracketed(&table, &up, &dist), 0.0);
        // All the mass at one end: distance 1 - 1/64.
        let low = vec![0.0; 64];
        assert!((ks_bracketed(&low, &low, &dist) - 63.0 / 64.0).abs() < 1e-12);
        assert!((dist.mean() - 31.5).abs() < 1e-12);
        assert!((dist.sd() - ((64.0f64 * 64.0 - 1.0) / 12.0).sqrt()).abs() < 1e-9);
        assert_eq!(dist.reach(), 31.5);
    }

    #[test]
    fn two_sample_ks_counts_the_largest_gap() {
        let a: Vec<f64> = (0..10).map(f64::from).collect();
        let b: Vec<f64> = (5..15).map(f64::from).collect();
        assert!((ks_two_sample(&a, &b) - 0.5).abs() < 1e-12);
        assert_eq!(ks_two_sample(&a, &a), 0.0);
        let e = ks_two_sample_epsilon(8000, 8000, ALPHA);
        assert!((e - 2.0 * dkw_epsilon(8000, ALPHA / 2.0)).abs() < 1e-15);
    }
}
