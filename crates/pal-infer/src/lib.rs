//! Text generation shared by `pal chat`, `ask`, `serve` and `eval`: chat-template rendering, sampling
//! and batched generation with a KV cache.

#![warn(missing_docs)]

pub mod ask;
pub mod continuous;
pub mod conversation;
pub mod generate;
pub mod reuse;
pub mod sampling;
pub mod sequence;
pub mod transcribe;

pub use conversation::{Conversation, ConversationState};
pub use generate::{
    generate, generate_batch, generate_batch_cached, generate_with_audio, FinishReason, Generation,
    GenerationParams,
};
pub use pal_models::text::chat_template::{ChatTemplate, Message};
pub use sampling::Sampler;
pub use transcribe::{transcribe, transcribe_windows};

/// Errors of generation and template rendering.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
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
