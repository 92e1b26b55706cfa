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
    #[error("{}: checkpoint does not fit the {what} ({} problems):\n{}", path.display(), problems.len(), listed(problems))]
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

/// The first problems, one per line, and how many more there are: a checkpoint of another
/// architecture mismatches almost every key, and the first lines tell the story.
fn listed(problems: &[String]) -> String {
    const SHOWN: usize = 25;
    let mut text = problems
        .iter()
        .take(SHOWN)
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n");
    if problems.len() > SHOWN {
        text.push_str(&format!("\n  ... and {} more", problems.len() - SHOWN));
    }
    text
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
