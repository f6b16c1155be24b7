//! Statistics for comparing encoders and modes (`pal probe`), with the trained model as the unit:
//! a cell's score on a split is one number per seed, whatever the number of items, because the
//! items of one trained model are not independent draws of the training's randomness.
//!
//! - [`MeanCi`]: a mean over seeds with its 95% interval (Student's t, n - 1 degrees of
//!   freedom), shown clipped to what a score can be.
//! - [`SeedPaired`]: system A against system B trained on the same seeds and scored on the same
//!   items: the per-seed difference of their scores, its t interval and two-sided p-value.
//! - [`holm`]: which of a grid's comparisons stay significant when all of them are made at once
//!   (Holm's step-down, family-wise error 5%).

use serde::Serialize;

/// Two-sided 95% critical values of Student's t for 1..=30 degrees of freedom.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// The two-sided 95% critical value of Student's t with `df` degrees of freedom (the normal's
/// 1.96 above 30).
pub fn t95(df: usize) -> f64 {
    match df {
        0 => f64::INFINITY,
        1..=30 => T95[df - 1],
        _ => 1.96,
    }
}

/// A mean with the half-width of its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanCi {
    /// The mean.
    pub mean: f64,
    /// Half-width of the 95% interval (t with n - 1 degrees of freedom; infinite for one value).
    pub half_width: f64,
    /// Number of values.
    pub n: usize,
}

impl MeanCi {
    /// The mean of `values` and its 95% interval.
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self {
                mean: f64::NAN,
                half_width: f64::NAN,
                n,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let half_width = if n < 2 {
            f64::INFINITY
        } else {
            t95(n - 1) * (variance(values, mean) / n as f64).sqrt()
        };
        Self {
            mean,
            half_width,
            n,
        }
    }

    /// Whether the interval excludes 0.
    pub fn excludes_zero(&self) -> bool {
        self.mean.abs() > self.half_width
    }

    /// The interval clipped to `[low, high]` (what the score can be).
    pub fn bounds(&self, low: f64, high: f64) -> (f64, f64) {
        (
            (self.mean - self.half_width).max(low),
            (self.mean + self.half_width).min(high),
        )
    }

    /// As a page shows it, in percent: `87.5% [80.1, 94.9]` clipped to `[low, high]`;
    /// `0.0% (3 seeds, no spread)` when every value is the same, where a t interval says
    /// nothing; `50.0% (1 seed)` for one value.
    pub fn percent(&self, low: f64, high: f64) -> String {
        let pct = 100.0 * self.mean;
        match self.n {
            0 => "-".into(),
            1 => format!("{pct:.1}% (1 seed)"),
            n if self.half_width == 0.0 => format!("{pct:.1}% ({n} seeds, no spread)"),
            _ => {
                let (lo, hi) = self.bounds(low, high);
                format!("{pct:.1}% [{:.1}, {:.1}]", 100.0 * lo, 100.0 * hi)
            }
        }
    }
}

fn variance(values: &[f64], mean: f64) -> f64 {
    values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64
}

/// System A against system B, the seed as the unit: `a[s]` and `b[s]` are their scores on the
/// same split (or the mean of the same splits) when trained with seed `s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeedPaired {
    /// Mean over seeds of A's score minus B's, with its 95% interval (t over seeds).
    pub difference: MeanCi,
    /// Two-sided p-value of the paired t test over seeds (1 when it cannot be computed: one
    /// seed, or no spread and no difference).
    pub p_value: f64,
    /// Seeds on which A scored higher.
    pub a_better: usize,
    /// Seeds on which B scored higher.
    pub b_better: usize,
    /// Significant among all the comparisons of its grid ([`holm`]); set by the caller.
    pub real: bool,
}

/// Compares A and B seed by seed (see [`SeedPaired`]); `real` is left false for [`holm`].
pub fn seed_paired(a: &[f64], b: &[f64]) -> SeedPaired {
    assert_eq!(a.len(), b.len(), "a paired comparison needs the same seeds");
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let difference = MeanCi::of(&diffs);
    let n = diffs.len();
    let p_value = if n < 2 {
        1.0
    } else {
        let se = (variance(&diffs, difference.mean) / n as f64).sqrt();
        if se == 0.0 {
            // Every seed differs by the same amount: certain when it is not 0.
            if difference.mean == 0.0 {
                1.0
            } else {
                0.0
            }
        } else {
            t_two_sided_p(difference.mean / se, (n - 1) as f64)
        }
    };
    SeedPaired {
        difference,
        p_value,
        a_better: diffs.iter().filter(|&&d| d > 0.0).count(),
        b_better: diffs.iter().filter(|&&d| d < 0.0).count(),
        real: false,
    }
}

/// Which of `p_values` are significant when all are tested together at family-wise error
/// `alpha` (Holm's step-down: the k-th smallest is compared with `alpha / (m - k)`, and testing
/// stops at the first that fails).
pub fn holm(p_values: &[f64], alpha: f64) -> Vec<bool> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p_values[i].total_cmp(&p_values[j]));
    let mut significant = vec![false; m];
    for (k, &i) in order.iter().enumerate() {
        if p_values[i] > alpha / (m - k) as f64 {
            break;
        }
        significant[i] = true;
    }
    significant
}

/// The two-sided p-value of Student's t statistic `t` with `df` degrees of freedom:
/// `I_{df/(df+t^2)}(df/2, 1/2)`.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// The regularized incomplete beta function `I_x(a, b)` (continued fraction, Numerical
/// Recipes' `betacf`, written afresh).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        return std::f64::consts::PI.ln()
            - (std::f64::consts::PI * x).sin().abs().ln()
            - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        sum += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_interval_match_hand_computed_values() {
        // 0.90, 0.95, 0.97: mean 0.94, sample sd 0.036056, t(2) = 4.303,
        // half-width = 4.303 * 0.036056 / sqrt(3) = 0.089573.
        let m = MeanCi::of(&[0.90, 0.95, 0.97]);
        assert!((m.mean - 0.94).abs() < 1e-12);
        assert!((m.half_width - 0.089573).abs() < 1e-5, "{}", m.half_width);
        assert!(MeanCi::of(&[0.5]).half_width.is_infinite());
        assert!((t95(100) - 1.96).abs() < 1e-12);
        // Shown clipped to what a score can be, and honest about no spread.
        assert_eq!(m.percent(0.0, 1.0), "94.0% [85.0, 100.0]");
        assert_eq!(
            MeanCi::of(&[0.0; 3]).percent(0.0, 1.0),
            "0.0% (3 seeds, no spread)"
        );
    }

    #[test]
    fn t_p_values_match_tables() {
        // t(2) = 4.303 and t(9) = 2.262 are the two-sided 5% points; t(1) = 1 gives p = 0.5.
        assert!((t_two_sided_p(4.303, 2.0) - 0.05).abs() < 2e-4);
        assert!((t_two_sided_p(2.262, 9.0) - 0.05).abs() < 2e-4);
        assert!((t_two_sided_p(1.0, 1.0) - 0.5).abs() < 1e-9);
        assert!((t_two_sided_p(0.0, 5.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_seed_is_the_unit_of_a_paired_comparison() {
        // The example: PLITS scores 0 on every seed, LAL 0.0, 0.05, 0.275 (mean 0.108):
        // one seed's luck decides it, and over seeds the interval is wide.
        let p = seed_paired(&[0.0, 0.05, 0.275], &[0.0, 0.0, 0.0]);
        assert!((p.difference.mean - 0.108_333).abs() < 1e-5);
        assert!(p.difference.half_width > 0.3, "{}", p.difference.half_width);
        assert!(p.p_value > 0.05);
        assert_eq!((p.a_better, p.b_better), (2, 0));
        // A constant difference on every seed is certain; none at all is not.
        assert_eq!(seed_paired(&[0.5, 0.6], &[0.4, 0.5]).p_value, 0.0);
        assert_eq!(seed_paired(&[0.5, 0.6], &[0.5, 0.6]).p_value, 1.0);
    }

    #[test]
    fn holm_steps_down_and_stops_at_the_first_failure() {
        // m = 4: 0.01 <= 0.05/4, 0.015 <= 0.05/3, 0.03 > 0.05/2 stops; 0.04 fails with it.
        let p = [0.04, 0.01, 0.03, 0.015];
        assert_eq!(holm(&p, 0.05), vec![false, true, false, true]);
        assert_eq!(holm(&[], 0.05), Vec::<bool>::new());
    }
}
