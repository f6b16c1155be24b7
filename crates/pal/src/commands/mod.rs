//! One module per subcommand.

pub mod ask;
pub mod bench;
pub mod chat;
pub mod data;
pub mod demo;
pub mod eval;
pub mod fetch;
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

/// Loads an LLM (folder or .gguf) in f32 on the CPU.
pub fn load_llm(path: &std::path::Path) -> anyhow::Result<(Llama, Tokenizer)> {
    pal_models::load_llm(path, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading the LLM from {}", path.display()))
}
