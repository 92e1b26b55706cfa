//! Errors of the backbone crate.

use std::path::PathBuf;

/// What can go wrong building, loading or running a backbone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration the model cannot be built from.
    #[error("invalid backbone config: {0}")]
    Config(String),
    /// An input of the wrong shape.
    #[error("{0}")]
    Input(String),
    /// A checkpoint whose tensors do not fit the model; every problem is listed by key.
    #[error("{}: checkpoint does not fit the {what}:\n{}", path.display(), problems.join("\n"))]
    StateDict {
        /// The checkpoint file.
        path: PathBuf,
        /// What it was loaded into.
        what: String,
        /// One line per missing, unexpected or mis-shaped tensor.
        problems: Vec<String>,
    },
    /// A file that is not a checkpoint this crate reads.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
