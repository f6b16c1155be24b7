//! Text generation shared by `pal chat`, `ask`, `serve` and `eval`: chat-template rendering, sampling
//! and batched generation with a KV cache.

pub mod chat_template;
pub mod generate;
pub mod sampling;
pub mod transcribe;

pub use chat_template::{ChatTemplate, Message};
pub use generate::{generate, FinishReason, Generation, GenerationParams};
pub use sampling::Sampler;
pub use transcribe::transcribe;

/// Errors of generation and template rendering.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// Bad generation parameters or inputs.
    #[error("{0}")]
    Invalid(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] pal_models::ModelError),
    /// A tensor computation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`InferError`].
pub type Result<T> = std::result::Result<T, InferError>;
