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

/// The LLM given with `--llm`, or the fetched SmolLM2-135M-Instruct.
pub fn resolve_llm(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(pal_assets::llm_or_default(path.as_deref())?)
}

/// `--weights`: how the frozen LLM's linear weights are held at inference.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct WeightsArg {
    /// `auto`: a GGUF file's quantized weights (a sixth of the bytes per token) for decoding and
    /// prefill on pal's kernels (Q4_0, Q4_1, Q8_0), for decoding only with the k-quants, and an
    /// f32 copy for the rest; `f32`: dequantized only; `quantized`: quantized only (least memory).
    #[arg(long = "weights", default_value = "auto")]
    pub weights: pal_models::WeightForm,
}

/// `--device` and `--dtype`: where a model runs and the type its frozen backbone computes in.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct DeviceArgs {
    /// `cpu`, or `cuda` (GPU 0, or under `mpirun`/`srun` the GPU of the node-local rank; a
    /// build with `--features cuda`, see scripts/build_cuda.sh).
    #[arg(long, default_value = "cpu")]
    pub device: pal_nn::ComputeDevice,
    /// `f32`, or `bf16`: the frozen LLM and encoders in bf16, the adapter (and LoRA) in f32
    /// master copies, the loss in f32. For GPUs; on a CPU bf16 is correct but slow.
    #[arg(long, default_value = "f32")]
    pub dtype: pal_nn::ComputeDtype,
}

/// Loads a run folder on `device` with the frozen LLM weights held in `weights` (the quantized
/// forms are for f32 on the CPU; elsewhere the weights stay in `--dtype`).
pub fn load_run(
    dir: &std::path::Path,
    weights: WeightsArg,
    device: DeviceArgs,
) -> anyhow::Result<pal_models::audio_llm::BuiltModel> {
    let mut built =
        pal_models::audio_llm::load_run(dir, device.dtype.dtype(), &device.device.open()?)
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
