//! Statistics for comparing encoders and modes (`pal probe`): a mean over seeds with its 95%
//! confidence interval, and a paired comparison of two systems on the same items and seeds, so
//! that a difference can be called real or noise.

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
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t95(n - 1) * (var / n as f64).sqrt()
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
}

/// A paired comparison of system A against system B on the same (seed, item) pairs, by each
/// item's score (1 or 0 for right or wrong, or a graded score such as word accuracy).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Paired {
    /// Mean of A's score minus B's, with its 95% interval over the pairs.
    pub difference: MeanCi,
    /// Pairs where A scored higher (with right/wrong scores: A right, B wrong).
    pub a_better: usize,
    /// Pairs where B scored higher.
    pub b_better: usize,
    /// Whether the interval excludes 0 (the difference is real, not noise).
    pub real: bool,
}

/// Compares scores on the same items: `a[i]` and `b[i]` are the same item (and seed).
pub fn paired(a: &[f64], b: &[f64]) -> Paired {
    assert_eq!(a.len(), b.len(), "paired comparison needs the same items");
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let difference = MeanCi::of(&diffs);
    Paired {
        difference,
        a_better: diffs.iter().filter(|&&d| d > 0.0).count(),
        b_better: diffs.iter().filter(|&&d| d < 0.0).count(),
        real: difference.n > 1 && difference.excludes_zero(),
    }
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
    }

    #[test]
    fn paired_comparison_matches_hand_computed_values() {
        // 10 pairs: A right and B wrong on 3, B right and A wrong on 1, equal on 6.
        // d = [1,1,1,-1,0,0,0,0,0,0]: mean 0.2, sd = sqrt((3 * 0.64 + 1.44 + 6 * 0.04) / 9)
        // = sqrt(0.4) = 0.632456, t(9) = 2.262, half-width = 2.262 * 0.632456 / sqrt(10) = 0.452398.
        let a = [1., 1., 1., 0., 1., 1., 0., 0., 1., 0.];
        let b = [0., 0., 0., 1., 1., 1., 0., 0., 1., 0.];
        let p = paired(&a, &b);
        assert!((p.difference.mean - 0.2).abs() < 1e-12);
        assert!((p.difference.half_width - 0.452398).abs() < 1e-5);
        assert_eq!((p.a_better, p.b_better), (3, 1));
        assert!(!p.real, "0.2 +- 0.45 includes 0: noise");
        // 30 pairs where A wins 12 and never loses: real.
        let a = vec![1.0; 30];
        let b: Vec<f64> = (0..30).map(|i| if i >= 12 { 1.0 } else { 0.0 }).collect();
        let p = paired(&a, &b);
        assert!(p.real && (p.difference.mean - 0.4).abs() < 1e-12);
        // Graded scores: d = [0.5, -0.25, 0.25, 0]: mean 0.125, counted by sign.
        let p = paired(&[1.0, 0.5, 0.75, 0.2], &[0.5, 0.75, 0.5, 0.2]);
        assert!((p.difference.mean - 0.125).abs() < 1e-12);
        assert_eq!((p.a_better, p.b_better), (2, 1));
    }
}
