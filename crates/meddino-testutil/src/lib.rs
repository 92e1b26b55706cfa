//! Test support for the MedDINOv3 workspace (a dev-dependency, never published).
//!
//! Three jobs, one module each:
//!
//! - [`reference`](mod@reference): find the reference data (`MEDDINO_REFERENCE_DIR`, else
//!   `shared/reference` beside the checkout, resolved from the workspace root) and decide
//!   whether a reference test runs, is skipped, or fails loudly.
//! - [`load`]: read safetensors, npz and JSON files from it, every tensor widened to `f64`.
//! - [`compare`](mod@compare): compare arrays with a relative-error report (max |a−b| / max |b|, worst
//!   index, both values there), the distribution of those errors ([`ErrorProfile`]), and the
//!   criterion for models that emulate a rounding of the reference ([`BF16_ROPE_CRITERION`]).
//!
//! ```no_run
//! use meddino_testutil::{assert_close, reference_or_skip};
//!
//! #[test]
//! fn forward_matches_reference() {
//!     let reference = reference_or_skip!();
//!     let io = reference.safetensors("models/meddino_tiny.io.safetensors");
//!     let expected = io.get("a.x_norm_clstoken");
//!     let ours = expected.clone(); // the model's output, converted to f64
//!     assert_close("a.x_norm_clstoken", &ours, expected, 1e-4);
//! }
//! ```
//!
//! Features: `candle` (off by default) adds `tensor_to_array`, `assert_tensor_close` and the
//! gradient checks `gradient_norm_sq` and `assert_gradients_reach`.
//!
//! Everything here panics with a message naming the file, key or shape on bad data: that is
//! how a test fails loudly.

#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

#[cfg(feature = "candle")]
pub mod bench;
pub mod compare;
pub mod load;
pub mod reference;

pub use compare::{
    assert_close, compare, Comparison, EmulationCase, EmulationCriterion, ErrorProfile, BF16_ROPE_CRITERION,
};
#[cfg(feature = "candle")]
pub use compare::{
    assert_gradients_reach, assert_tensor_close, gradient_norm_sq, tensor_error_profile, tensor_to_array,
};
pub use load::{json_f64, TensorFile};
pub use ndarray;
pub use reference::{
    default_reference_dir, reference_dir, resolve_reference_dir, workspace_root, ReferenceDir, Resolution,
    REFERENCE_DIR_ENV,
};

/// The reference folder, or an early `return` from the calling test with the reason printed.
///
/// Expands to a [`ReferenceDir`]. Panics (the test fails) when `MEDDINO_REFERENCE_DIR` is set
/// but names a missing or malformed folder; returns early (the test passes, printing why it
/// was skipped) when the variable is unset and the default folder is absent.
#[macro_export]
macro_rules! reference_or_skip {
    () => {
        match $crate::reference_dir() {
            Some(dir) => dir,
            None => return,
        }
    };
}
