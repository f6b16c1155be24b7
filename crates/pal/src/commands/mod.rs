//! One module per subcommand.

pub mod ask;
pub mod bench;
pub mod chat;
pub mod data;
pub mod demo;
pub mod encode;
pub mod eval;
pub mod fetch;
pub mod init;
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
    /// prefill on pal's kernels (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K: all of a Q4_K_M file), for
    /// decoding only with other types, and an f32 copy for the rest; `f32`: dequantized only; `quantized`: quantized only (least memory).
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
    /// `auto`, `f32` or `bf16`. On the CPU, `bf16` runs the frozen backbone's products in bf16
    /// (AMX or AVX512-BF16, f32 accumulation; activations, adapter and loss stay f32), and
    /// `auto` does so where the CPU has AMX, f32 elsewhere; both hold a clip's LAL keys and
    /// values in bf16 at inference on any x86-64 CPU with AVX2 (`f32` keeps them f32). On a GPU,
    /// `bf16` holds the frozen LLM and encoders in bf16 (the adapter in f32 master copies),
    /// `auto` means f32.
    #[arg(long, default_value = "auto")]
    pub dtype: pal_nn::ComputeDtype,
}

impl DeviceArgs {
    /// What `--dtype` means on `--device`.
    pub fn precision(&self) -> pal_nn::Precision {
        self.dtype.precision(self.device)
    }
}

/// Loads a run folder on `device` with the frozen LLM weights held in `weights` (the quantized
/// forms are for f32 on the CPU; elsewhere the weights stay in `--dtype`).
pub fn load_run(
    dir: &std::path::Path,
    weights: WeightsArg,
    device: DeviceArgs,
) -> anyhow::Result<pal_models::audio_llm::BuiltModel> {
    pal_models::audio_llm::build::load_run_for_inference(
        dir,
        weights.weights,
        device.device,
        device.dtype,
    )
    .with_context(|| {
        format!(
            "loading the run folder {} with its LLM weights as {}",
            dir.display(),
            weights.weights
        )
    })
}
