//! Errors of the metrics crate.

/// What can go wrong when scoring label maps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Prediction and reference have different shapes.
    #[error("shape mismatch: prediction is {prediction:?}, reference is {reference:?}")]
    ShapeMismatch {
        /// Shape of the prediction.
        prediction: Vec<usize>,
        /// Shape of the reference.
        reference: Vec<usize>,
    },
    /// Only 2-D and 3-D label maps are supported.
    #[error("unsupported dimensionality: label maps must be 2-D or 3-D, got shape {shape:?}")]
    UnsupportedDimensionality {
        /// The shape given.
        shape: Vec<usize>,
    },
    /// The spacing does not fit the label map.
    #[error("invalid spacing {spacing:?} for shape {shape:?}: need one positive, finite value per axis")]
    InvalidSpacing {
        /// The spacing given.
        spacing: Vec<f64>,
        /// The shape of the label maps.
        shape: Vec<usize>,
    },
    /// A tolerance or percentile outside its range.
    #[error("invalid {what} {value}: {expected}")]
    InvalidParameter {
        /// Which parameter.
        what: &'static str,
        /// Its value.
        value: f64,
        /// What was expected.
        expected: &'static str,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
