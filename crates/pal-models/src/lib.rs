//! Model code for pal, in data-path order (each folder imports only the ones above it):
//!
//! - [`formats`]: weight files (safetensors, GGUF, CTranslate2), renamed to Hugging Face names.
//! - [`text`]: tokenizer, chat template, a conversation as model input segments.
//! - [`llm`]: the Llama-family decoder, its KV cache, LoRA, and the training nodes with a
//!   written-out backward.
//! - [`encoders`]: the [`encoders::AudioEncoder`] interface, Whisper, AST, the on-disk cache.
//! - [`audio_llm`]: encoders joined to the LLM by PLITS, LAL or PAL; the model config and build.

#![warn(missing_docs)]

pub mod audio_llm;
pub mod encoders;
pub mod error;
pub mod formats;
pub mod llm;
pub mod text;

pub use error::{ModelError, Result};
pub use formats::weights::Weights;
pub use llm::{load_llm, load_llm_held, KvCache, Llama, LlamaConfig, WeightForm, WeightsInUse};
pub use text::Tokenizer;
