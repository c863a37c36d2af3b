//! Loss with memory: netem's correlated loss, Gilbert-Elliott and 4-state models, each built as one
//! Markov chain the kernel steps per packet (`chaos_common::LossChain`), and the theory (loss rate and
//! mean burst length) the chain implies, which `describe` prints and the tests compare with.

use std::fmt;

use chaos_common::{ALWAYS, LOSS_STATES, LossChain, percent_to_threshold};

use crate::error::BadInput;

/// A loss model in netem's terms; every probability in percent (0-100).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "model", rename_all = "lowercase")]
pub enum LossModel {
    /// `loss P% CORR%`: each packet is lost with probability P, and whether it is lost repeats the
    /// previous packet's fate with weight CORR.
    Correlated { percent: f64, correlation: f64 },
    /// `loss gemodel p r 1-h 1-k`: a Good and a Bad state; p = P(Good -> Bad), r = P(Bad -> Good),
    /// 1-h = loss probability in Bad, 1-k = loss probability in Good.
    #[serde(rename = "gemodel")]
    GilbertElliott {
        p: f64,
        r: f64,
        one_minus_h: f64,
        one_minus_k: f64,
    },
    /// `loss state p13 p31 p32 p23 p14`: netem's 4-state model. 1 = packets received in a gap,
    /// 2 = received within a burst, 3 = lost within a burst, 4 = isolated loss in a gap.
    #[serde(rename = "4state")]
    FourState {
        p13: f64,
        p31: f64,
        p32: f64,
        p23: f64,
        p14: f64,
    },
}

/// What a chain implies for the packets it decides, in the long run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Theory {
    /// Fraction of packets lost (0-1).
    pub loss: f64,
    /// Mean number of consecutive packets lost, per burst (at least 1 when any is lost).
    pub mean_burst: f64,
}

impl LossModel {
    /// Parses `--loss-model gemodel:P[,R[,1-H[,1-K]]]` or `4state:P13[,P31[,P32[,P23[,P14]]]]`, with
    /// netem's defaults for what is left out (R = 100-P, 1-H = 100, 1-K = 0; P31 = 100-P13, P32 = 0,
    /// P23 = 100, P14 = 0).
    pub fn parse(text: &str) -> Result<Self, BadInput> {
        let bad = |why: String| {
            BadInput::new(format!(
                "--loss-model {text}: {why}; write gemodel:P[,R[,1-H[,1-K]]] or \
                 4state:P13[,P31[,P32[,P23[,P14]]]], each a percentage (e.g. gemodel:5,50)"
            ))
        };
        let (name, list) = text
            .split_once(':')
            .ok_or_else(|| bad("no model name".into()))?;
        let mut values = Vec::new();
        for v in list.split(',') {
            let v = v.trim();
            let n: f64 = v
                .trim_end_matches('%')
                .parse()
                .map_err(|_| bad(format!("'{v}' is not a number")))?;
            if !(0.0..=100.0).contains(&n) {
                return Err(bad(format!("{n} is not a percentage from 0 to 100")));
            }
            values.push(n);
        }
        let at = |i: usize, default: f64| values.get(i).copied().unwrap_or(default);
        let model = match name {
            "gemodel" if values.len() <= 4 => LossModel::GilbertElliott {
                p: values[0],
                r: at(1, 100.0 - values[0]),
                one_minus_h: at(2, 100.0),
                one_minus_k: at(3, 0.0),
            },
            "4state" if values.len() <= 5 => LossModel::FourState {
                p13: values[0],
                p31: at(1, 100.0 - values[0]),
                p32: at(2, 0.0),
                p23: at(3, 100.0),
                p14: at(4, 0.0),
            },
            "gemodel" | "4state" => return Err(bad("too many values".into())),
            other => return Err(bad(format!("unknown model '{other}'"))),
        };
        if let LossModel::FourState {
            p13, p31, p32, p14, ..
        } = model
            && (p13 + p14 > 100.0 || p31 + p32 > 100.0)
        {
            return Err(bad(
                "P13 + P14 and P31 + P32 are probabilities of leaving one state: each sum at most \
                 100"
                .into(),
            ));
        }
        Ok(model)
    }

    /// The chain the kernel steps. States are numbered from 0; the chain starts in state 0.
    pub fn chain(&self) -> LossChain {
        let t = |percent: f64| percent_to_threshold(percent);
        let none = [ALWAYS; LOSS_STATES - 1];
        match *self {
            // State 0: the last packet was kept; 1: it was lost. With a = P(lost | kept) = P(1-C) and
            // b = P(lost | lost) = P + C(1-P), the stationary loss rate is P(1-C) / (1 - b + P(1-C))
            // = P, and the lag-1 correlation of the loss sequence is b - a = C. (netem's own
            // correlated generator drifts below P as C grows; this keeps the rate the user asked.)
            LossModel::Correlated {
                percent,
                correlation,
            } => {
                let (p, c) = (percent / 100.0, correlation / 100.0);
                let a = p * (1.0 - c);
                let b = p + c * (1.0 - p);
                LossChain {
                    next: [
                        [t(100.0 * (1.0 - a)), ALWAYS, ALWAYS],
                        [t(100.0 * (1.0 - b)), ALWAYS, ALWAYS],
                        none,
                        none,
                    ],
                    lose: [0, ALWAYS, 0, 0],
                }
            }
            // State 0: Good, 1: Bad.
            LossModel::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            } => LossChain {
                next: [
                    [t(100.0 - p), ALWAYS, ALWAYS],
                    [t(r), ALWAYS, ALWAYS],
                    none,
                    none,
                ],
                lose: [t(one_minus_k), t(one_minus_h), 0, 0],
            },
            // netem's states 1, 2, 3, 4 are 0, 1, 2, 3; a packet is lost entering 3 or 4.
            LossModel::FourState {
                p13,
                p31,
                p32,
                p23,
                p14,
            } => {
                let stay1 = t(100.0 - p13 - p14);
                LossChain {
                    next: [
                        // 1 -> 1, (never 2), 1 -> 3 with p13, 1 -> 4 with p14.
                        [stay1, stay1, t(100.0 - p14)],
                        // 2 -> 2, 2 -> 3 with p23.
                        [0, t(100.0 - p23), ALWAYS],
                        // 3 -> 1 with p31, 3 -> 2 with p32, else stays.
                        [t(p31), t(p31 + p32), ALWAYS],
                        // 4 -> 1 always.
                        none,
                    ],
                    lose: [0, 0, ALWAYS, ALWAYS],
                }
            }
        }
    }
}

impl fmt::Display for LossModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LossModel::Correlated {
                percent,
                correlation,
            } => write!(f, "loss {percent}% correlation {correlation}%"),
            LossModel::GilbertElliott {
                p,
                r,
                one_minus_h,
                one_minus_k,
            } => write!(
                f,
                "gemodel p {p}% r {r}% 1-h {one_minus_h}% 1-k {one_minus_k}%"
            ),
            LossModel::FourState {
                p13,
                p31,
                p32,
                p23,
                p14,
            } => write!(
                f,
                "4state p13 {p13}% p31 {p31}% p32 {p32}% p23 {p23}% p14 {p14}%"
            ),
        }
    }
}

/// The long-run loss rate and mean burst length of a chain, read from its thresholds (so it checks the
/// chain the kernel gets, not the intent).
///
/// The packet process is a Markov chain over (state, lost?) pairs: from (s, _) the next pair is (t, 1)
/// with probability P(s->t) * lose(t) and (t, 0) with P(s->t) * (1 - lose(t)). With π its stationary
/// distribution, the loss rate is Σ_t π(t, 1); a burst starts at each kept->lost step, at the rate
/// Σ_s,t π(s, 0) P(s->t) lose(t); the mean burst length is the loss rate over the burst rate.
/// Special cases: Gilbert-Elliott with 1-h = 100 %, 1-k = 0 has loss p/(p+r) and mean burst 1/r;
/// correlated loss has loss P and mean burst 1/((1-P)(1-C)).
pub fn theory(chain: &LossChain) -> Theory {
    const N: usize = LOSS_STATES;
    let frac = |x: u64| x.min(ALWAYS) as f64 / ALWAYS as f64;
    let mut step = [[0.0f64; N]; N];
    for (s, row) in step.iter_mut().enumerate() {
        let mut below = 0.0;
        for (t, p) in row.iter_mut().enumerate() {
            let upto = if t < N - 1 {
                frac(chain.next[s][t])
            } else {
                1.0
            };
            *p = (upto - below).max(0.0);
            below = below.max(upto);
        }
    }
    let lose: Vec<f64> = chain.lose.iter().map(|&l| frac(l)).collect();
    // Expanded pairs: index 2*t + lost. A lazy walk ((M + I) / 2) has the same stationary distribution
    // and cannot oscillate.
    let mut pi = [1.0 / (2 * N) as f64; 2 * N];
    for _ in 0..20_000 {
        let mut next = [0.0; 2 * N];
        for from in 0..2 * N {
            let s = from / 2;
            next[from] += pi[from] / 2.0;
            for t in 0..N {
                next[2 * t + 1] += pi[from] / 2.0 * step[s][t] * lose[t];
                next[2 * t] += pi[from] / 2.0 * step[s][t] * (1.0 - lose[t]);
            }
        }
        pi = next;
    }
    let loss: f64 = (0..N).map(|t| pi[2 * t + 1]).sum();
    let starts: f64 = (0..N)
        .flat_map(|s| (0..N).map(move |t| (s, t)))
        .map(|(s, t)| pi[2 * s] * step[s][t] * lose[t])
        .sum();
    Theory {
        loss,
        mean_burst: if starts > 0.0 { loss / starts } else { 0.0 },
    }
}

/// Steps a chain as the kernel does, with a deterministic generator: (lost, bursts) over `packets`.
#[cfg(test)]
pub fn simulate(chain: &LossChain, packets: u64, seed: u64) -> (u64, u64) {
    let mut x = seed | 1;
    let mut draw = || {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32
    };
    let (mut state, mut lost, mut bursts, mut prev_lost) = (0usize, 0, 0, false);
    for _ in 0..packets {
        let d = draw();
        let next = &chain.next[state];
        state = (d >= next[0]) as usize + (d >= next[1]) as usize + (d >= next[2]) as usize;
        let l = chain.lose[state];
        let is_lost = l >= ALWAYS || (l != 0 && draw() < l);
        if is_lost {
            lost += 1;
            if !prev_lost {
                bursts += 1;
            }
        }
        prev_lost = is_lost;
    }
    (lost, bursts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn parses_with_netem_defaults() {
        assert_eq!(
            LossModel::parse("gemodel:5").unwrap(),
            LossModel::GilbertElliott {
                p: 5.0,
                r: 95.0,
                one_minus_h: 100.0,
                one_minus_k: 0.0
            }
        );
        assert_eq!(
            LossModel::parse("4state:2,30%").unwrap(),
            LossModel::FourState {
                p13: 2.0,
                p31: 30.0,
                p32: 0.0,
                p23: 100.0,
                p14: 0.0
            }
        );
        for bad in [
            "gemodel",
            "gemodel:",
            "gemodel:101",
            "gemodel:1,2,3,4,5",
            "markov:1",
            "4state:60,10,0,0,50",
            "4state:1,60,50",
        ] {
            let e = LossModel::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--loss-model {bad}:")), "{e}");
        }
    }

    #[test]
    fn theory_matches_closed_forms() {
        // Gilbert: loss p/(p+r), bursts 1/r.
        let ge = LossModel::parse("gemodel:5,50").unwrap().chain();
        let th = theory(&ge);
        assert!(close(th.loss, 5.0 / 55.0, 1e-6), "{th:?}");
        assert!(close(th.mean_burst, 2.0, 1e-6), "{th:?}");
        // Correlated: loss P, bursts 1/((1-P)(1-C)).
        let c = LossModel::Correlated {
            percent: 10.0,
            correlation: 50.0,
        }
        .chain();
        let th = theory(&c);
        assert!(close(th.loss, 0.10, 1e-6), "{th:?}");
        assert!(close(th.mean_burst, 1.0 / (0.9 * 0.5), 1e-6), "{th:?}");
        // No correlation: independent loss, bursts 1/(1-P).
        let th = theory(
            &LossModel::Correlated {
                percent: 20.0,
                correlation: 0.0,
            }
            .chain(),
        );
        assert!(close(th.mean_burst, 1.25, 1e-6), "{th:?}");
        // 4-state with only 1<->3: a Gilbert chain with p = p13, r = p31.
        let th = theory(&LossModel::parse("4state:5,50").unwrap().chain());
        assert!(close(th.loss, 5.0 / 55.0, 1e-6), "{th:?}");
        assert!(close(th.mean_burst, 2.0, 1e-6), "{th:?}");
        // Isolated losses only: state 4 lasts one packet.
        let th = theory(&LossModel::parse("4state:0,100,0,100,10").unwrap().chain());
        assert!(close(th.loss, 0.1 / 1.1, 1e-6), "{th:?}");
        assert!(close(th.mean_burst, 1.0, 1e-6), "{th:?}");
    }

    #[test]
    fn simulated_chains_match_theory() {
        for text in [
            "gemodel:5,50",
            "gemodel:2,20,70,1",
            "4state:3,40,20,30,1",
            "4state:10,50",
        ] {
            let chain = LossModel::parse(text).unwrap().chain();
            let th = theory(&chain);
            let n = 2_000_000;
            let (lost, bursts) = simulate(&chain, n, 0x9e37_79b9_7f4a_7c15);
            let rate = lost as f64 / n as f64;
            let burst = lost as f64 / bursts as f64;
            assert!(close(rate, th.loss, 0.003), "{text}: {rate} vs {th:?}");
            assert!(
                close(burst, th.mean_burst, 0.03 * th.mean_burst),
                "{text}: {burst} vs {th:?}"
            );
        }
    }
}
