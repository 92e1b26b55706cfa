//! Errors of the decoder crate.

/// What can go wrong building or running a decoder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An invalid decoder configuration.
    #[error("invalid decoder config: {0}")]
    Config(String),
    /// An input of the wrong shape or dtype.
    #[error("{0}")]
    Input(String),
    /// A backbone error (building, loading, running the encoder).
    #[error(transparent)]
    Backbone(#[from] meddino_backbone::Error),
    /// A candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
