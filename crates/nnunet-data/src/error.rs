//! Errors of the nnU-Net data crate.

use std::path::PathBuf;

/// What can go wrong reading or checking nnU-Net data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A NIfTI file could not be parsed.
    #[error("{}: not a readable NIfTI-1 file: {source}", path.display())]
    Nifti {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: nifti::NiftiError,
    },
    /// A NIfTI header whose fields contradict the file.
    #[error("{}: invalid NIfTI header: {message}", path.display())]
    InvalidHeader {
        /// The file.
        path: PathBuf,
        /// Which field is wrong, and what was expected.
        message: String,
    },
    /// An image of a dimensionality this code does not handle.
    #[error("{}: expected a 2-D or 3-D image, got shape {shape:?} (NIfTI x, y, z, ...)", path.display())]
    UnsupportedDimensionality {
        /// The file.
        path: PathBuf,
        /// The shape in NIfTI order.
        shape: Vec<usize>,
    },
    /// Voxel spacing that is zero, negative or not finite.
    #[error("{}: invalid voxel spacing {spacing:?} (x, y, z) in the header (expected positive, finite values)", path.display())]
    InvalidSpacing {
        /// The file.
        path: PathBuf,
        /// The spacing found, in NIfTI order.
        spacing: Vec<f64>,
    },
    /// A label map holding a value that is not a label.
    #[error("{}: not a label map: voxel value {value} is not an integer in [0, {max}]", path.display())]
    NotALabelMap {
        /// The file.
        path: PathBuf,
        /// The offending value.
        value: f64,
        /// The largest label supported.
        max: u16,
    },
    /// A JSON file that does not parse or lacks what nnU-Net requires.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Channels (or image and label) of one case that do not fit together.
    #[error("{} and {} do not match: {detail}", first.display(), other.display())]
    ChannelMismatch {
        /// The first file.
        first: PathBuf,
        /// The file that differs.
        other: PathBuf,
        /// Shapes and spacings of both.
        detail: String,
    },
    /// A preprocessed case that cannot be used.
    #[error("{}: {message}", path.display())]
    Preprocessed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A raw case that cannot be used as it is.
    #[error("{}: {}", path.display(), problems.join("; "))]
    InvalidCase {
        /// The raw data set's folder.
        path: PathBuf,
        /// Every problem found, each starting with the case id.
        problems: Vec<String>,
    },
    /// Plans that cannot be used (missing or circular configurations).
    #[error("plans: {0}")]
    Plan(String),
    /// Cross-validation folds that cannot be made.
    #[error("{0}")]
    Split(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
