//! One call that loads an LLM and its tokenizer from a Hugging Face folder or a GGUF file.

use std::path::Path;

use candle_core::{DType, Device};

use crate::error::{ModelError, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::weights::Weights;
use crate::llm::config::LlamaConfig;
use crate::llm::decoder::Llama;
use crate::llm::weight_form::{self, WeightForm, WeightsInUse};
use crate::text::tokenizer::Tokenizer;

impl Llama {
    /// The LLM of a Hugging Face model folder (config.json and safetensors), weights in `dtype`.
    pub fn from_hf_folder(folder: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = LlamaConfig::from_hf_folder(folder)?;
        let weights =
            Weights::from_hf_folder(folder, dtype, device)?.with_norm_shift(config.hf_norm_shift());
        Llama::load(config, &weights)
    }
}

/// Loads an LLM and its tokenizer from a Hugging Face model folder (config.json, safetensors,
/// tokenizer.json) or a GGUF file (weights dequantized to `dtype`).
pub fn load_llm(path: &Path, dtype: DType, device: &Device) -> Result<(Llama, Tokenizer)> {
    if path.is_dir() {
        let llama = Llama::from_hf_folder(path, dtype, device)?;
        let mut tokenizer = Tokenizer::from_hf_folder(path)?;
        if tokenizer.chat_template.is_none() {
            // A base model's folder may carry no template: its family's, as from its GGUF.
            tokenizer.chat_template =
                crate::text::chat_template::family_template(&llama.config.model_type)
                    .map(str::to_string);
        }
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

/// [`load_llm`] with the frozen linear weights then held in `form` ([`weight_form`]). For
/// `quantized` from a GGUF file, every matrix it holds quantized is read as stored and never
/// dequantized, so that loading takes little more memory than the model then holds (the f32
/// forms of Gemma 3 270M's weights alone are 1.1 GB; its quantized ones 0.3 GB).
pub fn load_llm_held(
    path: &Path,
    dtype: DType,
    device: &Device,
    form: WeightForm,
) -> Result<(Llama, Tokenizer, WeightsInUse)> {
    let gguf = !path.is_dir() && path.extension().is_some_and(|e| e == "gguf");
    let quantized_first = gguf && form == WeightForm::Quantized && dtype == DType::F32;
    let file = match quantized_first && device.is_cpu() {
        true => Some(GgufFile::open(path)?),
        false => None,
    };
    // Token embeddings are looked up in the quantized table only where its rows can be read
    // alone (pal's kernel types); otherwise the model needs their f32 form: load as usual.
    let embeddings = match &file {
        Some(f) => f.stored_type("model.embed_tokens.weight")?,
        None => None,
    };
    let rows_readable = embeddings.is_some_and(|(ty, shape)| {
        shape.len() == 2 && pal_nn::ops::QuantizedWeight::reads_rows_of(ty, shape[1])
    });
    let Some(file) = file.filter(|_| rows_readable) else {
        let (mut llm, tokenizer) = load_llm(path, dtype, device)?;
        let used = weight_form::apply(&mut llm, path, form)?;
        return Ok((llm, tokenizer, used));
    };
    let config = LlamaConfig::from_gguf(&file)?;
    let rotary_heads = config.gguf_rotary_heads();
    let (weights, stored) = file.weights_beside_quantized(rotary_heads, dtype, device, true)?;
    let mut llm = Llama::load(config, &weights)?;
    drop(weights);
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let used = weight_form::hold(&mut llm, Some(stored), path, form)?;
    Ok((llm, tokenizer, used))
}
