//! Errors of the training and prediction crate.

use std::path::PathBuf;

/// What can go wrong in training, prediction or folder evaluation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing nnU-Net data failed.
    #[error(transparent)]
    Data(#[from] nnunet_data::Error),
    /// Scoring a case failed.
    #[error("{case}: {source}")]
    Metrics {
        /// The case (file name).
        case: String,
        /// The underlying error.
        #[source]
        source: meddino_eval::Error,
    },
    /// A folder could not be listed.
    #[error("cannot list {}: {source}", path.display())]
    ListFolder {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Predictions whose reference labels are missing.
    #[error("{} prediction(s) have no label file in {}: {}", files.len(), labels.display(), files.join(", "))]
    MissingLabels {
        /// The labels folder.
        labels: PathBuf,
        /// The prediction file names without a label.
        files: Vec<String>,
    },
    /// No prediction to evaluate.
    #[error("no prediction files ending in {file_ending:?} in {}", folder.display())]
    NoPredictions {
        /// The predictions folder.
        folder: PathBuf,
        /// The file ending looked for.
        file_ending: String,
    },
    /// A data set whose labels cannot be evaluated this way.
    #[error("{}: {message}", path.display())]
    UnsupportedLabels {
        /// The dataset.json.
        path: PathBuf,
        /// What is unsupported.
        message: String,
    },
    /// A label value beyond what label maps are read as.
    #[error("label {name:?} = {value} exceeds the largest supported label value 65535")]
    LabelOutOfRange {
        /// The label's name.
        name: String,
        /// Its value.
        value: u32,
    },
    /// A checkpoint that does not fit what it is loaded into.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The batch loader failed.
    #[error("data loader: {0}")]
    Loader(String),
    /// A training setup that cannot run (unknown trainer, missing weights, bad options).
    #[error("{0}")]
    Setup(String),
    /// An input volume that cannot be predicted.
    #[error("{0}")]
    Input(String),
    /// A file of the training output could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A backbone checkpoint could not be read or does not fit.
    #[error(transparent)]
    Backbone(#[from] meddino_backbone::Error),
    /// The network failed (bad input shape, build error).
    #[error(transparent)]
    Network(#[from] meddino_decoder::Error),
    /// A candle error (model building, forward, backward).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
