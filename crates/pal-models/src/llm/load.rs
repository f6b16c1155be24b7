//! One call that loads an LLM and its tokenizer from a Hugging Face folder or a GGUF file.

use std::path::Path;

use candle_core::{DType, Device};

use crate::error::{ModelError, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::weights::Weights;
use crate::llm::config::LlamaConfig;
use crate::llm::decoder::Llama;
use crate::text::tokenizer::Tokenizer;

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
        let file = GgufFile::open(path)?;
        let config = LlamaConfig::from_gguf(&file)?;
        let weights = file.weights(config.gguf_rotary_heads(), dtype, device)?;
        let llama = Llama::load(config, &weights)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
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
