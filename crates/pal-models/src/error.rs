//! Errors of model loading and model code: each names the file and, where it applies, the tensor.

use std::path::PathBuf;

/// A model-loading or model-running error.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The path does not exist.
    #[error("{0}: no such file or folder")]
    NotFound(PathBuf),
    /// An I/O error while reading a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file exists but is not what it should be (bad JSON, bad header, truncated).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the model needs is not in the weights.
    #[error("{path}: tensor '{name}' is missing")]
    MissingTensor {
        /// The weight file (or folder).
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor has a shape other than the config implies.
    #[error("{path}: tensor '{name}' has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// The weight file (or folder).
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// An unsupported configuration (architecture, rope scaling, tokenizer type).
    #[error("{0}")]
    Unsupported(String),
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A tensor computation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    /// A [`ModelError::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::Format {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// A [`ModelError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
