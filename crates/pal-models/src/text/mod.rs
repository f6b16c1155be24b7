//! Text: the tokenizer, chat templates, and a conversation turned into model input segments.
//!
//! - [`tokenizer`]: a `tokenizers` tokenizer plus special tokens and chat template, from a Hugging
//!   Face folder or GGUF metadata.
//! - [`chat_template`]: Jinja chat templates rendered with minijinja.
//! - [`segments`]: a conversation rendered and cut into text and audio-placeholder segments.

pub mod chat_template;
pub mod segments;
pub mod tokenizer;

pub use chat_template::{ChatTemplate, Message};
pub use segments::Segment;
pub use tokenizer::Tokenizer;
