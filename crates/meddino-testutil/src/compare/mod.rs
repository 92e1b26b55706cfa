//! Comparing arrays against reference values with a relative-error report.
//!
//! The measure is the one `shared/reference/README.md` quotes tolerances in:
//! `max |actual − expected| / max |expected|` over the whole array. Matching NaNs and
//! matching infinities count as equal (the metrics use both); a NaN or infinity on one side
//! only is an infinite error at that index.

use std::fmt;

use ndarray::{ArrayViewD, Dimension, IxDyn};

mod profile;

pub use self::profile::{EmulationCase, EmulationCriterion, ErrorProfile, BF16_ROPE_CRITERION};

/// The result of comparing two arrays of the same shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Number of elements compared.
    pub len: usize,
    /// The largest |actual − expected| (infinite where only one side is finite).
    pub max_abs_diff: f64,
    /// The largest finite |expected|.
    pub max_abs_expected: f64,
    /// Where the largest difference is (empty for an empty array).
    pub worst_index: Vec<usize>,
    /// The actual value at [`Self::worst_index`].
    pub actual_at_worst: f64,
    /// The expected value at [`Self::worst_index`].
    pub expected_at_worst: f64,
}

impl Comparison {
    /// `max |a − b| / max |b|`; the absolute difference when the expected array is all zero.
    pub fn rel_err(&self) -> f64 {
        if self.max_abs_expected > 0.0 {
            self.max_abs_diff / self.max_abs_expected
        } else {
            self.max_abs_diff
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rel err {:.3e} (max |a-b| {:.3e} at {:?}: got {}, expected {}; max |b| {:.3e}; {} elements)",
            self.rel_err(),
            self.max_abs_diff,
            self.worst_index,
            self.actual_at_worst,
            self.expected_at_worst,
            self.max_abs_expected,
            self.len
        )
    }
}

/// |a − b|, with equal NaNs and equal infinities counting as 0 and a one-sided non-finite
/// value as +∞.
fn element_diff(actual: f64, expected: f64) -> f64 {
    if actual.is_nan() && expected.is_nan() || actual == expected {
        0.0
    } else if actual.is_finite() && expected.is_finite() {
        (actual - expected).abs()
    } else {
        f64::INFINITY
    }
}

/// Compares `actual` with `expected`.
///
/// # Errors
///
/// When the shapes differ (the message gives both).
pub fn compare(actual: ArrayViewD<'_, f64>, expected: ArrayViewD<'_, f64>) -> Result<Comparison, String> {
    if actual.shape() != expected.shape() {
        return Err(format!(
            "shape mismatch: got {:?}, expected {:?}",
            actual.shape(),
            expected.shape()
        ));
    }
    let mut report = Comparison {
        len: expected.len(),
        max_abs_diff: 0.0,
        max_abs_expected: 0.0,
        worst_index: Vec::new(),
        actual_at_worst: f64::NAN,
        expected_at_worst: f64::NAN,
    };
    let mut worst: Option<(IxDyn, f64, f64)> = None;
    for ((index, &a), &b) in actual.indexed_iter().zip(expected.iter()) {
        if b.is_finite() {
            report.max_abs_expected = report.max_abs_expected.max(b.abs());
        }
        let diff = element_diff(a, b);
        if worst.is_none() || diff > report.max_abs_diff {
            report.max_abs_diff = diff;
            worst = Some((index, a, b));
        }
    }
    if let Some((index, a, b)) = worst {
        report.worst_index = index.slice().to_vec();
        report.actual_at_worst = a;
        report.expected_at_worst = b;
    }
    Ok(report)
}
/// Asserts that `actual` matches `expected` to relative error `tolerance`, printing the
/// report either way, and returns it.
///
/// # Panics
///
/// When the shapes differ or the relative error exceeds `tolerance`; the message starts with
/// `label` and gives the full report.
pub fn assert_close<'a, 'b>(
    label: &str,
    actual: impl Into<ArrayViewD<'a, f64>>,
    expected: impl Into<ArrayViewD<'b, f64>>,
    tolerance: f64,
) -> Comparison {
    let report = compare(actual.into(), expected.into()).unwrap_or_else(|why| panic!("{label}: {why}"));
    assert!(
        report.rel_err() <= tolerance,
        "{label}: {report} exceeds tolerance {tolerance:.1e}"
    );
    eprintln!("{label}: {report}");
    report
}

/// Copies a candle tensor to an `f64` array of the same shape.
///
/// # Panics
///
/// When the tensor cannot be converted (a candle error, e.g. a device failure).
#[cfg(feature = "candle")]
pub fn tensor_to_array(tensor: &candle_core::Tensor) -> ndarray::ArrayD<f64> {
    let values = tensor
        .to_dtype(candle_core::DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .unwrap_or_else(|e| panic!("cannot read tensor of shape {:?} back: {e}", tensor.dims()));
    ndarray::ArrayD::from_shape_vec(IxDyn(tensor.dims()), values)
        .unwrap_or_else(|e| panic!("tensor of shape {:?} does not fit its data: {e}", tensor.dims()))
}

/// [`assert_close`] for a candle tensor against a reference array.
///
/// # Panics
///
/// As [`assert_close`].
#[cfg(feature = "candle")]
pub fn assert_tensor_close<'b>(
    label: &str,
    actual: &candle_core::Tensor,
    expected: impl Into<ArrayViewD<'b, f64>>,
    tolerance: f64,
) -> Comparison {
    assert_close(label, &tensor_to_array(actual), expected, tolerance)
}

/// [`ErrorProfile::new`] for a candle tensor against a reference array.
///
/// # Panics
///
/// When the shapes differ (the message starts with `label`) or the tensor cannot be read.
#[cfg(feature = "candle")]
pub fn tensor_error_profile<'b>(
    label: &str,
    actual: &candle_core::Tensor,
    expected: impl Into<ArrayViewD<'b, f64>>,
) -> ErrorProfile {
    ErrorProfile::new(tensor_to_array(actual).view(), expected.into()).unwrap_or_else(|why| panic!("{label}: {why}"))
}

/// The squared L2 norm of `tensor`'s gradient in `grads`; `None` when it has none.
///
/// # Panics
///
/// When the gradient cannot be read back.
#[cfg(feature = "candle")]
pub fn gradient_norm_sq(grads: &candle_core::backprop::GradStore, tensor: &candle_core::Tensor) -> Option<f64> {
    let grad = grads.get(tensor)?;
    let norm = grad
        .to_dtype(candle_core::DType::F64)
        .and_then(|g| g.sqr()?.sum_all()?.to_scalar::<f64>())
        .unwrap_or_else(|e| panic!("cannot read a gradient of shape {:?}: {e}", grad.dims()));
    Some(norm)
}

/// Asserts that every variable of `vars` that `skip` does not exclude has a finite, non-zero
/// gradient in `grads`, naming the first that has none; returns how many were checked.
///
/// # Panics
///
/// When a checked variable has no, a zero or a non-finite gradient.
#[cfg(feature = "candle")]
pub fn assert_gradients_reach<'a>(
    vars: impl IntoIterator<Item = (&'a String, &'a candle_core::Var)>,
    grads: &candle_core::backprop::GradStore,
    skip: impl Fn(&str) -> bool,
) -> usize {
    let mut checked = 0;
    for (name, var) in vars {
        if skip(name) {
            continue;
        }
        let norm = gradient_norm_sq(grads, var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(
            norm.is_finite() && norm > 0.0,
            "gradient of {name}: squared norm {norm}"
        );
        checked += 1;
    }
    checked
}

#[cfg(test)]
mod tests {
    use ndarray::{arr1, arr2, ArrayD};

    use super::*;

    #[test]
    fn reports_worst_index_and_relative_error() {
        let expected = arr2(&[[1.0, -4.0], [2.0, 0.5]]).into_dyn();
        let actual = arr2(&[[1.0, -4.0], [2.2, 0.5]]).into_dyn();
        let report = compare(actual.view(), expected.view()).expect("same shape");
        assert_eq!(report.worst_index, vec![1, 0]);
        assert!((report.max_abs_diff - 0.2).abs() < 1e-12);
        assert_eq!(report.max_abs_expected, 4.0);
        assert!((report.rel_err() - 0.05).abs() < 1e-12);
        assert_eq!((report.actual_at_worst, report.expected_at_worst), (2.2, 2.0));
    }

    #[test]
    fn identical_arrays_have_zero_error() {
        let a = arr1(&[0.0, 3.0, -1.0]).into_dyn();
        assert_eq!(compare(a.view(), a.view()).expect("same shape").rel_err(), 0.0);
    }

    #[test]
    fn matching_nan_and_inf_are_equal_but_one_sided_ones_are_not() {
        let expected = arr1(&[f64::NAN, f64::INFINITY, 1.0]).into_dyn();
        assert_eq!(
            compare(expected.view(), expected.view()).expect("same shape").rel_err(),
            0.0
        );
        let actual = arr1(&[1.0, f64::INFINITY, 1.0]).into_dyn();
        let report = compare(actual.view(), expected.view()).expect("same shape");
        assert_eq!(report.worst_index, vec![0]);
        assert!(report.rel_err().is_infinite());
        let actual = arr1(&[f64::NAN, f64::INFINITY, f64::NAN]).into_dyn();
        assert!(compare(actual.view(), expected.view())
            .expect("same shape")
            .rel_err()
            .is_infinite());
    }

    #[test]
    fn all_zero_reference_uses_absolute_error() {
        let expected = ArrayD::<f64>::zeros(IxDyn(&[3]));
        let actual = arr1(&[0.0, 1e-3, 0.0]).into_dyn();
        assert_eq!(
            compare(actual.view(), expected.view()).expect("same shape").rel_err(),
            1e-3
        );
    }

    #[test]
    fn shape_mismatch_is_an_error_naming_both_shapes() {
        let a = ArrayD::<f64>::zeros(IxDyn(&[2, 3]));
        let b = ArrayD::<f64>::zeros(IxDyn(&[3, 2]));
        let why = compare(a.view(), b.view()).expect_err("shapes differ");
        assert!(why.contains("[2, 3]") && why.contains("[3, 2]"), "{why}");
    }

    #[test]
    #[should_panic(expected = "logits: rel err")]
    fn assert_close_panics_beyond_tolerance() {
        let expected = arr1(&[1.0, 2.0]).into_dyn();
        let actual = arr1(&[1.0, 2.1]).into_dyn();
        let _ = assert_close("logits", &actual, &expected, 1e-4);
    }

    #[test]
    fn assert_close_accepts_within_tolerance() {
        let expected = arr1(&[1.0, 2.0]).into_dyn();
        let actual = arr1(&[1.0, 2.0 + 1e-7]).into_dyn();
        assert!(assert_close("x", &actual, &expected, 1e-4).rel_err() < 1e-6);
    }

    #[cfg(feature = "candle")]
    #[test]
    fn tensors_convert_with_their_shape() {
        let tensor = candle_core::Tensor::arange(0f32, 6.0, &candle_core::Device::Cpu)
            .and_then(|t| t.reshape((2, 3)))
            .expect("tensor");
        let array = tensor_to_array(&tensor);
        assert_eq!(array.shape(), [2, 3]);
        assert_eq!(array[[1, 2]], 5.0);
        let expected = array.clone();
        assert_eq!(assert_tensor_close("t", &tensor, &expected, 0.0).rel_err(), 0.0);
    }
}
