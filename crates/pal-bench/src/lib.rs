//! pal's benchmarks. Each writes `PREFIX.json` and `PREFIX.md` (and a plot where it sweeps), and
//! none is ever a timed test: the figures in `docs/bench/` come from here.
//!
//! - [`llm`]: prefill and decode tokens/s of an LLM (optionally against transformers).
//! - [`audio`]: feature extraction and encoder throughput.
//! - [`encode`]: a manifest's clips encoded one at a time against `pal encode`'s batched path.
//! - [`long_audio`]: a question about recordings of 30 s to an hour, per mode.
//! - [`modes`]: PLITS, LAL and PAL training and inference steps side by side, each measurement in
//!   its own process, next to the [`cost`] model (and optionally PyTorch).
//! - [`report`]: what the reports share (medians, output files).
//! - [`selftest`]: pal's ops, training steps and generation on a device against the CPU in f64.

#![warn(missing_docs)]

pub mod audio;
pub mod cost;
pub mod encode;
pub mod llm;
pub mod long_audio;
pub mod modes;
pub mod report;
pub mod selftest;

use std::path::{Path, PathBuf};

/// The LLM at `path`, or the fetched SmolLM2-135M-Instruct when none is given.
pub fn llm_or_default(path: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(pal_assets::llm_or_default(path)?)
}

/// Loads an LLM (folder or .gguf) in f32 on the CPU.
pub fn load_llm(path: &Path) -> anyhow::Result<(pal_models::Llama, pal_models::Tokenizer)> {
    use anyhow::Context;
    pal_models::load_llm(path, candle_core::DType::F32, &candle_core::Device::Cpu)
        .with_context(|| format!("loading the LLM from {}", path.display()))
}

/// pal's glibc allocator settings (`M_MMAP_THRESHOLD`): the `pal` binary sets them with
/// `mallopt` at start, and reference scripts get them as glibc's environment variables
/// ([`allocator_env`]), so both sides of a comparison run under the same allocator.
pub const MALLOC_MMAP_THRESHOLD: i32 = 1 << 30;
/// `M_TRIM_THRESHOLD`; see [`MALLOC_MMAP_THRESHOLD`].
pub const MALLOC_TRIM_THRESHOLD: i32 = i32::MAX;

/// The environment that gives a glibc process (a Python reference) pal's allocator settings.
pub fn allocator_env() -> [(&'static str, String); 2] {
    [
        ("MALLOC_MMAP_THRESHOLD_", MALLOC_MMAP_THRESHOLD.to_string()),
        ("MALLOC_TRIM_THRESHOLD_", MALLOC_TRIM_THRESHOLD.to_string()),
    ]
}

/// Threads the benchmarks run on.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
