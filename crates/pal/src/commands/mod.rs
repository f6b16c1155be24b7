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
use pal_models::{assets, Llama, Tokenizer};

/// The LLM given with `--llm`, or the fetched SmolLM2-135M-Instruct.
pub fn resolve_llm(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match path {
        Some(p) => Ok(p),
        None => {
            let default = assets::SMOLLM2_135M.main_file();
            anyhow::ensure!(
                default.exists(),
                "no --llm given and {} is not fetched yet: run `pal fetch` first",
                default.display()
            );
            Ok(default)
        }
    }
}

/// Loads an LLM (folder or .gguf) in f32 on the CPU.
pub fn load_llm(path: &std::path::Path) -> anyhow::Result<(Llama, Tokenizer)> {
    pal_models::load_llm(path, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading the LLM from {}", path.display()))
}

/// Peak and current resident memory of this process, in bytes (Linux `/proc`).
pub fn memory_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
