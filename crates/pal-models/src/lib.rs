//! Weight formats, tokenizers and model code for pal.
//!
//! - [`weights`]: tensors by Hugging Face name, from safetensors (single or sharded) or GGUF.
//! - [`tokenizer`]: a `tokenizers` tokenizer plus special tokens and chat template, from a Hugging
//!   Face folder or GGUF metadata.
//! - [`llama`]: the Llama-family decoder (Llama 3.x, SmolLM2, Qwen2/2.5, Qwen3).
//! - [`load_llm`]: one call that loads a model and its tokenizer from a folder or a `.gguf` file.

pub mod assets;
pub mod ast;
pub mod audio_llm;
pub mod chat_template;
pub mod connector;
pub mod cost;
pub mod ct2;
pub mod encoder;
pub mod error;
pub mod frozen_layer;
pub mod gguf;
pub mod lal_prefix;
pub mod layers;
pub mod llama;
pub mod model_config;
pub mod tokenizer;
pub mod weights;
pub mod whisper;

pub use error::{ModelError, Result};
pub use llama::{KvCache, Llama, LlamaConfig};
pub use tokenizer::Tokenizer;
pub use weights::Weights;

use std::path::Path;

use candle_core::{DType, Device};

/// Loads an LLM and its tokenizer from a Hugging Face model folder (config.json, safetensors,
/// tokenizer.json) or a GGUF file (weights dequantized to `dtype`).
pub fn load_llm(path: &Path, dtype: DType, device: &Device) -> Result<(Llama, Tokenizer)> {
    if path.is_dir() {
        let config = LlamaConfig::from_hf_folder(path)?;
        let weights = Weights::from_hf_folder(path, dtype, device)?;
        let llama = Llama::load(config, &weights)?;
        let tokenizer = Tokenizer::from_hf_folder(path)?;
        Ok((llama, tokenizer))
    } else if path.extension().is_some_and(|e| e == "gguf") {
        let file = gguf::GgufFile::open(path)?;
        let config = file.llama_config()?;
        let weights = file.weights(&config, dtype, device)?;
        let llama = Llama::load(config, &weights)?;
        let tokenizer = file.tokenizer()?;
        Ok((llama, tokenizer))
    } else if !path.exists() {
        Err(ModelError::NotFound(path.to_path_buf()))
    } else {
        Err(ModelError::Format {
            path: path.to_path_buf(),
            message: "expected a model folder (config.json + safetensors) or a .gguf file".into(),
        })
    }
}
