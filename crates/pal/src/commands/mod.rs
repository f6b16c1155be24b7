//! One module per subcommand.

pub mod ask;
pub mod bench;
pub mod chat;
pub mod data;
pub mod demo;
pub mod encode;
pub mod eval;
pub mod fetch;
pub mod probe;
pub mod selftest;
pub mod serve;
pub mod train;
pub mod transcribe;

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use pal_models::{Llama, Tokenizer};

/// The LLM given with `--llm`, or the fetched SmolLM2-135M-Instruct.
pub fn resolve_llm(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(pal_assets::llm_or_default(path.as_deref())?)
}

/// `--weights`: how the frozen LLM's linear weights are held at inference.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct WeightsArg {
    /// `auto`: a GGUF file's quantized weights for decoding (a sixth of the bytes per token) and
    /// f32 for prefill; `f32`: dequantized only; `quantized`: quantized only (least memory).
    #[arg(long = "weights", default_value = "auto")]
    pub weights: pal_models::WeightForm,
}

/// Loads a run folder on the CPU with the frozen LLM weights held in `weights`.
pub fn load_run(
    dir: &std::path::Path,
    weights: WeightsArg,
) -> anyhow::Result<pal_models::audio_llm::BuiltModel> {
    let mut built = pal_models::audio_llm::load_run(dir, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading the run folder {}", dir.display()))?;
    built.hold_weights(weights.weights).with_context(|| {
        format!(
            "holding the LLM weights of {} as {}",
            dir.display(),
            weights.weights
        )
    })?;
    Ok(built)
}

/// Loads an LLM (folder or .gguf) in f32 on the CPU.
pub fn load_llm(path: &std::path::Path) -> anyhow::Result<(Llama, Tokenizer)> {
    pal_models::load_llm(path, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading the LLM from {}", path.display()))
}
