//! Error distributions and the emulation criterion: how to accept a model that reproduces a
//! rounding of the reference (the bf16 RoPE of MedDINOv3) without accepting one that leaves
//! the rounding out.

use ndarray::ArrayViewD;

use super::element_diff;

/// The distribution of `|actual − expected| / max |expected|` over an array: where
/// [`Comparison`](super::Comparison) gives only the worst element, this gives every quantile, so a test can
/// hold the bulk of the values tight while allowing a few outliers (as bf16 rounding
/// flips produce, see the backbone's reference test).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorProfile {
    /// The relative errors, ascending (NaN-free: matching NaNs and infinities count as 0,
    /// one-sided ones as +∞, as in [`compare`]).
    sorted: Vec<f64>,
    /// The largest finite |expected| (the scale); the errors are absolute when it is 0.
    pub max_abs_expected: f64,
}

impl ErrorProfile {
    /// Profiles `actual` against `expected`.
    ///
    /// # Errors
    ///
    /// When the shapes differ (the message gives both).
    pub fn new(actual: ArrayViewD<'_, f64>, expected: ArrayViewD<'_, f64>) -> Result<Self, String> {
        if actual.shape() != expected.shape() {
            return Err(format!(
                "shape mismatch: got {:?}, expected {:?}",
                actual.shape(),
                expected.shape()
            ));
        }
        let max_abs_expected = expected
            .iter()
            .filter(|b| b.is_finite())
            .fold(0.0f64, |m, b| m.max(b.abs()));
        let scale = if max_abs_expected > 0.0 { max_abs_expected } else { 1.0 };
        let mut sorted: Vec<f64> = actual
            .iter()
            .zip(expected.iter())
            .map(|(&a, &b)| element_diff(a, b) / scale)
            .collect();
        sorted.sort_by(f64::total_cmp);
        Ok(Self {
            sorted,
            max_abs_expected,
        })
    }

    /// Number of elements profiled.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether the arrays were empty.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The `q`-quantile (`q` in [0, 1], nearest rank: the smallest error that at least a
    /// fraction `q` of the elements do not exceed); 0 for an empty array.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    /// The largest relative error: [`Comparison::rel_err`](super::Comparison::rel_err) of the same arrays.
    pub fn max(&self) -> f64 {
        self.sorted.last().copied().unwrap_or(0.0)
    }

    /// The fraction of elements whose relative error exceeds `threshold`.
    pub fn fraction_above(&self, threshold: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let at_or_below = self.sorted.partition_point(|&e| e <= threshold);
        (self.sorted.len() - at_or_below) as f64 / self.sorted.len() as f64
    }
}

/// One output of a model that emulates a rounding the reference performs (MedDINOv3's bf16
/// RoPE), judged against the reference next to the same weights without the emulation: the
/// statistics an [`EmulationCriterion`] looks at (a few numbers, so a test can keep one per
/// output for its table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmulationCase {
    /// The emulating model's error at the criterion's bulk quantile.
    pub emulated_bulk: f64,
    /// The emulating model's largest error.
    pub emulated_max: f64,
    /// The same weights without the emulation (the baseline to beat): bulk quantile.
    pub plain_bulk: f64,
    /// The same weights without the emulation: largest error.
    pub plain_max: f64,
}

impl EmulationCase {
    /// plain / emulated at the bulk quantile (+∞ when the emulated bulk is exact and the
    /// plain one is not; 1 when both are exact).
    pub fn margin(&self) -> f64 {
        if self.emulated_bulk > 0.0 {
            self.plain_bulk / self.emulated_bulk
        } else if self.plain_bulk > 0.0 {
            f64::INFINITY
        } else {
            1.0
        }
    }

    /// emulated / plain of the maximum errors (0 when the emulated maximum is 0).
    pub fn tail_ratio(&self) -> f64 {
        if self.emulated_max == 0.0 {
            0.0
        } else {
            self.emulated_max / self.plain_max
        }
    }
}

/// A criterion for [`EmulationCase`]s that holds whatever the seed and input size, where a
/// fixed max-error tolerance does not.
///
/// The reference rounds intermediate values (q and k) to a coarse precision. Where a value
/// sits on a rounding boundary, a different summation order (another BLAS) rounds it the
/// other way: a "flip", one coarse ulp in one element, which moves some outputs by an
/// amount that depends on the seed and the input size. So the maximum error says little;
/// the bulk does. With the emulation almost every value agrees closely; without it every
/// rounded value is off by up to half a coarse ulp, so the bulk of the outputs is off. The
/// criterion:
///
/// 1. the bulk quantile of the emulated errors is at most `bulk_tolerance`;
/// 2. the same quantile of the plain errors is at least `min_margin` times larger (the
///    emulation is what makes the bulk agree, so removing it or getting it wrong fails);
/// 3. the emulated maximum is at most `tail_ratio` times the plain maximum (the flips move
///    a few values, by much less than leaving the rounding out does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmulationCriterion {
    /// The quantile that stands for the bulk of the values (0.5: the median).
    pub bulk_quantile: f64,
    /// Largest allowed bulk quantile of the emulated errors.
    pub bulk_tolerance: f64,
    /// Smallest allowed ratio plain / emulated at the bulk quantile.
    pub min_margin: f64,
    /// Largest allowed ratio emulated / plain of the maximum errors.
    pub tail_ratio: f64,
}

impl EmulationCriterion {
    /// The statistics of one output: the errors of the emulating model and of the same
    /// weights without the emulation.
    pub fn case(&self, emulated: &ErrorProfile, plain: &ErrorProfile) -> EmulationCase {
        EmulationCase {
            emulated_bulk: emulated.quantile(self.bulk_quantile),
            emulated_max: emulated.max(),
            plain_bulk: plain.quantile(self.bulk_quantile),
            plain_max: plain.max(),
        }
    }

    /// Whether `case` meets the criterion; the reason when it does not.
    ///
    /// # Errors
    ///
    /// A message naming the condition that failed and the numbers.
    pub fn judge(&self, case: &EmulationCase) -> Result<(), String> {
        let q = self.bulk_quantile * 100.0;
        let bulk = case.emulated_bulk;
        if bulk > self.bulk_tolerance {
            return Err(format!(
                "emulated q{q} error {bulk:.3e} exceeds {:.1e}",
                self.bulk_tolerance
            ));
        }
        let margin = case.margin();
        if margin < self.min_margin {
            return Err(format!(
                "q{q} error without the emulation {:.3e} is only {margin:.2}x the emulated {bulk:.3e} \
                 (at least {}x): the emulation makes too little difference",
                case.plain_bulk, self.min_margin
            ));
        }
        let tail = case.tail_ratio();
        if tail > self.tail_ratio {
            return Err(format!(
                "emulated max error {:.3e} is {tail:.3}x the max without the emulation {:.3e} (at most {}x)",
                case.emulated_max, case.plain_max, self.tail_ratio
            ));
        }
        Ok(())
    }

    /// The header of [`Self::row`]'s table.
    pub fn header(&self, label_width: usize) -> String {
        let q = format!("q{}", self.bulk_quantile * 100.0);
        format!(
            "{:<label_width$}  {:>10} {:>10} {:>9}  {:>10} {:>10} {:>9}",
            "case",
            format!("emul {q}"),
            format!("f32 {q}"),
            "margin",
            "emul max",
            "f32 max",
            "max ratio",
        )
    }

    /// One table row: the emulated and plain bulk quantiles and their margin, the maxima
    /// and their ratio.
    pub fn row(&self, label: &str, label_width: usize, case: &EmulationCase) -> String {
        format!(
            "{label:<label_width$}  {:>10.3e} {:>10.3e} {:>8.1}x  {:>10.3e} {:>10.3e} {:>9.3}",
            case.emulated_bulk,
            case.plain_bulk,
            case.margin(),
            case.emulated_max,
            case.plain_max,
            case.tail_ratio(),
        )
    }
}

/// The criterion for outputs of models with MedDINOv3's bf16 RoPE (the reference rounds the
/// RoPE tables and every q and k to bf16; our models emulate that by default), judged next to
/// the same weights with f32 RoPE. Both the backbone's and the decoders' reference tests use
/// it.
///
/// Why not a max-error tolerance: a q or k value on a bf16 rounding boundary rounds the other
/// way under our gemm's summation order (a flip: one bf16 ulp, 2⁻⁸ relative, in one element),
/// and how far that moves the worst output depends on the seed and grows with the input: a
/// 1e-3 bound failed on Primus logits for one seed (1.1e-3) while an 896² two-block model
/// with f32 RoPE stayed within 6e-4 for another, so no max bound both passes the emulation
/// and fails its absence. The conditions here are a median, which the flips cannot move
/// like the maximum, and ratios against the f32-RoPE variant of the same weights on the same
/// input, which cancel what the seed and input size do to the scale of the errors.
///
/// Measured (`max |Δ| / max |ref|` statistics; bf16 backbones of 6 blocks, 192 wide, on
/// inputs from 48×48 to 896×896, a 2-block one at 896×896, Primus and Primus_Multiscale
/// logits from 64×80 to 896×896; the shipped set (seed 5) and alternates made with the
/// reference code for seeds 7 (896² inputs), 11 and 14):
///
/// | model                          | emulated q50   | margin (q50 ratio) | max ratio   |
/// | ------------------------------ | -------------- | ------------------ | ----------- |
/// | emulation as shipped           | ≤ 3.2e-5       | 8.9 – 3800         | ≤ 0.16      |
/// | q/k rotation left unrounded    | up to 2.4e-4   | 1.2 – 3.2          | 0.71 – 0.99 |
/// | RoPE in f32 (no emulation)     | up to 3.8e-4   | 1.0                | 1.0         |
///
/// The smallest margins and largest medians come from the smallest inputs (9 to 24 tokens)
/// after 6 blocks, where one flip reaches every token through attention; at 896² the
/// emulated median stays below 1e-6 (margins 60 and more).
pub const BF16_ROPE_CRITERION: EmulationCriterion = EmulationCriterion {
    bulk_quantile: 0.5,
    // The README's float32 agreement (1e-4 at the maximum), here for the median: 3x above
    // the largest emulated median measured. A guard for when both variants are off (a
    // loading bug); the margin is what tells the emulation from its absence.
    bulk_tolerance: 1e-4,
    // 2.2x below the smallest margin measured with the emulation, above every margin of
    // the unrounded variants.
    min_margin: 4.0,
    // 3x above the largest ratio measured with the emulation, below every ratio of the
    // unrounded variants: the flips move a few values, never by half as much as leaving
    // the rounding out does.
    tail_ratio: 0.5,
};

#[cfg(test)]
mod tests {
    use ndarray::{arr1, ArrayD, IxDyn};

    use super::*;
    use crate::compare::compare;

    #[test]
    fn error_profile_quantiles_are_nearest_rank_over_the_scale() {
        let expected = arr1(&[4.0, 1.0, 2.0, -1.0, 0.0]).into_dyn();
        let actual = arr1(&[4.0, 1.4, 2.0, -1.2, 0.04]).into_dyn();
        let profile = ErrorProfile::new(actual.view(), expected.view()).expect("same shape");
        assert_eq!(profile.len(), 5);
        assert_eq!(profile.max_abs_expected, 4.0);
        // relative errors: 0, 0.1, 0, 0.05, 0.01 → sorted 0, 0, 0.01, 0.05, 0.1
        assert_eq!(profile.quantile(0.0), 0.0);
        assert_eq!(profile.quantile(0.4), 0.0);
        assert!((profile.quantile(0.5) - 0.01).abs() < 1e-12);
        assert!((profile.quantile(0.8) - 0.05).abs() < 1e-12);
        assert!((profile.max() - 0.1).abs() < 1e-12);
        let report = compare(actual.view(), expected.view()).expect("same shape");
        assert!((profile.max() - report.rel_err()).abs() < 1e-15);
        assert!((profile.fraction_above(0.02) - 0.4).abs() < 1e-12);
        assert_eq!(profile.fraction_above(0.1), 0.0);
    }

    #[test]
    fn error_profile_of_nothing_is_zero_and_shapes_must_match() {
        let empty = ArrayD::<f64>::zeros(IxDyn(&[0]));
        let profile = ErrorProfile::new(empty.view(), empty.view()).expect("same shape");
        assert!(profile.is_empty());
        assert_eq!(
            (profile.quantile(0.5), profile.max(), profile.fraction_above(0.0)),
            (0.0, 0.0, 0.0)
        );
        let other = ArrayD::<f64>::zeros(IxDyn(&[1]));
        assert!(ErrorProfile::new(other.view(), empty.view()).is_err());
    }

    #[test]
    fn emulation_criterion_needs_a_tight_bulk_a_margin_and_a_small_tail() {
        let c = BF16_ROPE_CRITERION;
        let case = |emulated_bulk, plain_bulk, emulated_max, plain_max| EmulationCase {
            emulated_bulk,
            emulated_max,
            plain_bulk,
            plain_max,
        };
        let good = case(1e-6, 1e-4, 1e-4, 1e-3);
        assert!((good.margin() - 100.0).abs() < 1e-9 && (good.tail_ratio() - 0.1).abs() < 1e-12);
        assert!(c.judge(&good).is_ok());
        // The same model twice (no emulation): margin 1.
        let why = c
            .judge(&case(1e-4 / 2.0, 1e-4 / 2.0, 1e-3, 1e-3))
            .expect_err("no margin");
        assert!(why.contains("too little difference"), "{why}");
        assert!(c
            .judge(&case(2e-4, 1e-2, 1e-3, 1e-1))
            .expect_err("bulk")
            .contains("exceeds"));
        assert!(c
            .judge(&case(1e-6, 1e-4, 9e-4, 1e-3))
            .expect_err("tail")
            .contains("max error"));
        assert_eq!(case(0.0, 0.0, 0.0, 0.0).margin(), 1.0);
        assert!(case(0.0, 1e-5, 0.0, 1e-4).margin().is_infinite());
        let profile = ErrorProfile::new(arr1(&[1.0, 2.0]).into_dyn().view(), arr1(&[1.0, 2.5]).into_dyn().view())
            .expect("same shape");
        let from_profiles = c.case(&profile, &profile);
        assert_eq!(from_profiles.margin(), 1.0);
        assert!((from_profiles.emulated_max - 0.2).abs() < 1e-12);
        assert!(c.row("x", 4, &from_profiles).starts_with("x   "));
    }
}
