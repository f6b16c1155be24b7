//! `pal bench modes`: the training step (forward + backward, frozen backbone) and inference of
//! PLITS, LAL and PAL side by side. Every measurement runs in a process of its own (so peak
//! memory is that measurement's), the measurements are interleaved over rounds (machines are
//! noisy), and the report puts them next to the [`crate::cost`] model and, optionally, the
//! PyTorch reference (`scripts/bench_modes_torch.py`) timed in the same rounds.
//!
//! The child-process protocol: the parent sends a [`ChildJob`] as one JSON argument, the child
//! ([`run_child`]) prints one JSON line, a [`ChildResult`]. How the child is launched is the
//! caller's (the `pal` binary re-runs itself).

pub mod measure;
pub mod parity;
pub mod plot;
pub mod report;

use std::path::PathBuf;
use std::process::Command;

use pal_models::audio_llm::Route;
use pal_models::LlamaConfig;
use pal_nn::{ComputeDevice, ComputeDtype};
use serde::{Deserialize, Serialize};

pub use measure::run_child;
pub use report::ModesReport;

use crate::report::{json_child, script};

/// What trains in a training measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    /// The adapter only (frozen LLM).
    Adapter,
    /// The adapter and rank-8 LoRA on the q/v projections.
    Lora,
}

impl std::str::FromStr for Trainable {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "adapter" => Ok(Self::Adapter),
            "lora" => Ok(Self::Lora),
            other => anyhow::bail!("--trainable takes adapter or lora, got '{other}'"),
        }
    }
}

/// Models the benchmark can build with random weights (their real weights are not at hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RandomShapes {
    /// Llama-3.2-1B.
    #[serde(rename = "llama-3.2-1b")]
    Llama32_1b,
    /// SmolLM2-135M (for machines without the fetched GGUF, such as a GPU machine).
    #[serde(rename = "smollm2-135m")]
    Smollm2_135m,
}

impl std::str::FromStr for RandomShapes {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let all = [Self::Llama32_1b, Self::Smollm2_135m];
        match all.into_iter().find(|shapes| shapes.torch_name() == s) {
            Some(shapes) => Ok(shapes),
            None => {
                let names: Vec<&str> = all.iter().map(|shapes| shapes.torch_name()).collect();
                anyhow::bail!("unknown --shapes '{s}' ({})", names.join(", "))
            }
        }
    }
}

/// Llama-3.2-1B's `config.json` (shapes only).
const LLAMA_32_1B_CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
 "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
 "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
 "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
 "original_max_position_embeddings": 8192}, "tie_word_embeddings": true}"#;

/// SmolLM2-135M-Instruct's `config.json` (shapes only).
const SMOLLM2_135M_CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
 "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
 "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
 "tie_word_embeddings": true}"#;

impl RandomShapes {
    /// The model's config.
    pub fn config(self) -> anyhow::Result<LlamaConfig> {
        match self {
            Self::Llama32_1b => Ok(LlamaConfig::from_hf_json(LLAMA_32_1B_CONFIG)?),
            Self::Smollm2_135m => Ok(LlamaConfig::from_hf_json(SMOLLM2_135M_CONFIG)?),
        }
    }

    /// How reports name the model.
    pub fn report_name(self) -> &'static str {
        match self {
            Self::Llama32_1b => "Llama-3.2-1B shapes, random weights",
            Self::Smollm2_135m => "SmolLM2-135M shapes, random weights",
        }
    }

    /// The name the PyTorch reference script takes for these shapes.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::Llama32_1b => "llama-3.2-1b",
            Self::Smollm2_135m => "smollm2-135m",
        }
    }
}

/// The model and shapes every measurement of a run shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    /// LLM file or folder; `None` with no `shapes`: the fetched SmolLM2-135M-Instruct.
    pub llm: Option<PathBuf>,
    /// Random weights with these shapes instead of a real LLM.
    pub shapes: Option<RandomShapes>,
    /// Text tokens per example (all trained).
    pub text_tokens: usize,
    /// Examples per training batch.
    pub batch: usize,
    /// Encoder width.
    pub d_enc: usize,
    /// First LAL layer (LAL and PAL).
    pub lal_start: usize,
    /// PAL's latent summary tokens.
    pub summary: usize,
    /// Timed steps per process (after one warm-up step).
    pub steps: usize,
    /// Tokens decoded per inference run.
    pub decode_tokens: usize,
    /// Where pal's measurements (and the PyTorch reference's timings) run.
    #[serde(with = "as_text")]
    pub device: ComputeDevice,
    /// The type the frozen LLM computes in; the adapter trains in f32 either way.
    #[serde(with = "as_text")]
    pub dtype: ComputeDtype,
}

impl Setup {
    /// The same setup on the CPU in f32 (the parity check compares f32 steps).
    pub fn on_cpu_f32(&self) -> Self {
        Self {
            device: ComputeDevice::Cpu,
            dtype: ComputeDtype::F32,
            ..self.clone()
        }
    }
}

/// Serde for a value written as its `Display` and read back by `FromStr` (device, dtype).
mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: std::fmt::Display, S: Serializer>(
        value: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: std::str::FromStr<Err = String>,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "task")]
pub enum Measurement {
    /// Training steps.
    Train {
        /// The mode.
        route: Route,
        /// Encoder tokens per clip.
        audio_tokens: usize,
        /// What trains.
        trainable: Trainable,
    },
    /// Batched prefill and greedy decoding.
    Infer {
        /// The mode.
        route: Route,
        /// Encoder tokens per clip.
        audio_tokens: usize,
        /// Sequences per batch.
        batch: usize,
    },
}

/// What the parent sends a child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildJob {
    /// Shared setup.
    pub setup: Setup,
    /// The one measurement to make.
    pub measurement: Measurement,
}

/// What a child process (pal's own, or the PyTorch reference script) prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildResult {
    /// Median seconds of a training step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_seconds: Option<f64>,
    /// Median seconds of a training step's forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_seconds: Option<f64>,
    /// Median seconds of an inference prefill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_seconds: Option<f64>,
    /// Decoded tokens per second (all sequences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_second: Option<f64>,
    /// Sequences per second (prefill and decode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_second: Option<f64>,
    /// Peak resident memory of the process.
    pub peak_rss_bytes: f64,
    /// Peak device memory on a GPU: PyTorch's `max_memory_allocated`; pal's device memory in use
    /// (total less free) sampled after each training forward and backward, each prefill and each
    /// run of decoding, less what was in use before the model was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_bytes: Option<f64>,
    /// Resident memory before the measurement (after loading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_before_bytes: Option<f64>,
    /// The PyTorch reference's torch version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch: Option<String>,
}

/// A whole run: the sweep and the setup.
pub struct ModesBench {
    /// Shared setup.
    pub setup: Setup,
    /// Encoder tokens per clip; several make a sweep and a plot.
    pub audio_tokens: Vec<usize>,
    /// What trains, one training measurement each.
    pub trainable: Vec<Trainable>,
    /// Inference batch sizes; empty skips inference.
    pub infer_batches: Vec<usize>,
    /// Rounds; each runs every measurement once.
    pub rounds: usize,
    /// A Python with torch: first check that the PyTorch reference computes pal's loss and
    /// gradients ([`parity`]), then time it, eager and under `torch.compile` (PLITS and LAL,
    /// adapter only).
    pub compare_python: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

/// The modes, in report order.
pub const ROUTES: [Route; 3] = [Route::Plits, Route::Lal, Route::Pal];

impl ModesBench {
    /// Runs every measurement `rounds` times, each in a child started by `launch` (which must run
    /// [`run_child`] on the job and print its result), and builds the report.
    pub fn run(&self, launch: &dyn Fn(&ChildJob) -> Command) -> anyhow::Result<ModesReport> {
        if let Some(shapes) = self.setup.shapes {
            shapes.config()?;
        }
        let torch_shapes = match (&self.setup.shapes, &self.setup.llm) {
            (Some(s), _) => Some(s.torch_name().to_string()),
            (None, None) => Some("smollm2-135m".to_string()),
            (None, Some(_)) => None,
        };
        let mut runs = report::Runs::default();
        let mut parity = vec![];
        let bf16_products = self.setup.dtype.precision(self.setup.device).bf16_products;
        // PyTorch's bf16 autocast on the CPU, where the CPU multiplies bf16 natively.
        let autocast = self.setup.device == pal_nn::ComputeDevice::Cpu
            && pal_nn::ops::bf16::Bf16Kernel::Avx512.available();
        if let (Some(python), Some(shapes), Some(&na)) = (
            &self.compare_python,
            &torch_shapes,
            self.audio_tokens.first(),
        ) {
            for route in [Route::Plits, Route::Lal] {
                let checked = self.parity(python, shapes, route, na)?;
                eprintln!(
                    "parity {route:?} Na {na}: loss {:.6} (pal) {:.6} (PyTorch); gradients against the f64 step: pal {:.1e}, PyTorch f32 {:.1e}",
                    checked.loss_pal, checked.loss_torch, checked.pal_error_vs_f64, checked.torch_error_vs_f64
                );
                anyhow::ensure!(
                    checked.ok,
                    "pal and the PyTorch reference disagree on a {route:?} step, so timing them would compare different work: {checked:?}"
                );
                parity.push(checked);
            }
        }
        for round in 0..self.rounds.max(1) {
            for &na in &self.audio_tokens {
                for &trainable in &self.trainable {
                    for route in ROUTES {
                        let m = Measurement::Train {
                            route,
                            audio_tokens: na,
                            trainable,
                        };
                        let result = self.child(launch, m)?;
                        eprintln!(
                            "round {round} {m:?}: {:.3} s/step",
                            result.step_seconds.unwrap_or(f64::NAN)
                        );
                        runs.record(report::Implementation::Pal, m, result);
                        // With bf16 products, pal in f32 too: its best is either.
                        if bf16_products {
                            let result = self.child_as(launch, m, ComputeDtype::F32)?;
                            eprintln!(
                                "round {round} {m:?} f32: {:.3} s/step",
                                result.step_seconds.unwrap_or(f64::NAN)
                            );
                            runs.record(report::Implementation::PalF32, m, result);
                        }
                    }
                    if let (Some(python), Some(shapes), Trainable::Adapter) =
                        (&self.compare_python, &torch_shapes, trainable)
                    {
                        use report::Implementation as I;
                        let mut variants = vec![
                            (I::Pytorch, false, false),
                            (I::PytorchCompiled, true, false),
                        ];
                        if autocast {
                            variants.push((I::PytorchAutocast, false, true));
                            variants.push((I::PytorchCompiledAutocast, true, true));
                        }
                        for (who, compiled, bf16) in variants {
                            for route in [Route::Plits, Route::Lal] {
                                let m = Measurement::Train {
                                    route,
                                    audio_tokens: na,
                                    trainable,
                                };
                                let result =
                                    self.torch(python, shapes, route, na, compiled, bf16)?;
                                eprintln!(
                                    "round {round} {} {route:?} Na {na}: {:.3} s/step",
                                    who.name(),
                                    result.step_seconds.unwrap_or(f64::NAN)
                                );
                                runs.record(who, m, result);
                            }
                        }
                    }
                }
                for &batch in &self.infer_batches {
                    for route in ROUTES {
                        let m = Measurement::Infer {
                            route,
                            audio_tokens: na,
                            batch,
                        };
                        let result = self.child(launch, m)?;
                        eprintln!(
                            "round {round} {m:?}: {:.2} samples/s",
                            result.samples_per_second.unwrap_or(f64::NAN)
                        );
                        runs.record(report::Implementation::Pal, m, result);
                    }
                }
            }
        }
        ModesReport::new(self, runs, parity)
    }

    /// pal's step written to a file, repeated and compared by the reference script.
    fn parity(
        &self,
        python: &std::path::Path,
        shapes: &str,
        route: Route,
        na: usize,
    ) -> anyhow::Result<parity::Parity> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("step.safetensors");
        // Both sides compute one step in f32 on the CPU: the same work, before either is timed.
        parity::write_step(&self.setup.on_cpu_f32(), route, na, &file)?;
        let mut cmd = self.torch_command(python, shapes, route, na)?;
        cmd.arg("--parity").arg(&file);
        #[derive(Deserialize)]
        struct Reply {
            parity: parity::Parity,
        }
        let reply: Reply = json_child(cmd, &format!("torch parity {route:?}"))?;
        Ok(reply.parity)
    }

    fn child(
        &self,
        launch: &dyn Fn(&ChildJob) -> Command,
        measurement: Measurement,
    ) -> anyhow::Result<ChildResult> {
        self.child_as(launch, measurement, self.setup.dtype)
    }

    /// [`Self::child`] with the backbone computing in `dtype`.
    fn child_as(
        &self,
        launch: &dyn Fn(&ChildJob) -> Command,
        measurement: Measurement,
        dtype: ComputeDtype,
    ) -> anyhow::Result<ChildResult> {
        let mut setup = self.setup.clone();
        setup.dtype = dtype;
        let job = ChildJob { setup, measurement };
        json_child(launch(&job), &format!("{measurement:?} ({dtype})"))
    }

    fn torch(
        &self,
        python: &std::path::Path,
        shapes: &str,
        route: Route,
        na: usize,
        compiled: bool,
        autocast: bool,
    ) -> anyhow::Result<ChildResult> {
        let mut cmd = self.torch_command(python, shapes, route, na)?;
        if compiled {
            cmd.arg("--compile");
        }
        if autocast {
            cmd.arg("--autocast");
        }
        let s = &self.setup;
        // The reference's frozen LLM in bf16 tensors only on a GPU (on the CPU, bf16 is autocast).
        let dtype = s.dtype.precision(s.device).dtype;
        let dtype = if dtype == candle_core::DType::BF16 {
            "bf16"
        } else {
            "f32"
        };
        cmd.args(["--device", &s.device.to_string()])
            .args(["--dtype", dtype]);
        json_child(
            cmd,
            &format!("torch {route:?} Na {na} compiled {compiled} autocast {autocast}"),
        )
    }

    /// The reference script with this run's shapes, threads and pal's allocator settings.
    fn torch_command(
        &self,
        python: &std::path::Path,
        shapes: &str,
        route: Route,
        na: usize,
    ) -> anyhow::Result<Command> {
        let s = &self.setup;
        let mode = match route {
            Route::Plits => "plits",
            Route::Lal => "lal",
            Route::Pal => anyhow::bail!("the PyTorch reference has no PAL"),
        };
        let mut cmd = Command::new(python);
        cmd.envs(crate::allocator_env());
        cmd.arg(script("bench_modes_torch.py"))
            .args(["--mode", mode, "--shapes", shapes])
            .args(["--batch", &s.batch.to_string()])
            .args(["--audio-tokens", &na.to_string()])
            .args(["--text-tokens", &s.text_tokens.to_string()])
            .args(["--d-enc", &s.d_enc.to_string()])
            .args(["--lal-start", &s.lal_start.to_string()])
            .args(["--steps", &s.steps.to_string()])
            .args(["--threads", &crate::threads().to_string()]);
        Ok(cmd)
    }
}
