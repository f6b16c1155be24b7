//! The modes report: medians over rounds per measurement, the cost model's predictions beside
//! them, LAL against PLITS (and pal against PyTorch), as JSON and markdown.

use pal_models::audio_llm::Route;
use serde::Serialize;

use super::measure::setup_llm;
use super::parity::Parity;
use super::{ChildResult, Measurement, ModesBench, Trainable};
use crate::cost::{cost, Cost, CostMode, Shapes};
use crate::report::median;

/// Who ran a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Implementation {
    /// pal, in the bench's `--dtype`.
    Pal,
    /// pal in f32, beside a bench whose `--dtype` gave bf16 products.
    #[serde(rename = "pal-f32")]
    PalF32,
    /// The PyTorch reference script, eager.
    Pytorch,
    /// The PyTorch reference script under `torch.compile`.
    #[serde(rename = "pytorch-compile")]
    PytorchCompiled,
    /// The reference, eager, its frozen model under `torch.autocast` in bf16 (loss in f32).
    #[serde(rename = "pytorch-autocast")]
    PytorchAutocast,
    /// The reference under `torch.compile` and bf16 `torch.autocast`.
    #[serde(rename = "pytorch-compile-autocast")]
    PytorchCompiledAutocast,
}

impl Implementation {
    /// How tables name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pal => "pal",
            Self::PalF32 => "pal f32",
            Self::Pytorch => "pytorch",
            Self::PytorchCompiled => "pytorch compiled",
            Self::PytorchAutocast => "pytorch bf16 autocast",
            Self::PytorchCompiledAutocast => "pytorch compiled bf16 autocast",
        }
    }

    /// Whether this is pal (any precision).
    pub fn is_pal(self) -> bool {
        matches!(self, Self::Pal | Self::PalF32)
    }
}

/// Training or inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Training steps.
    Train,
    /// Prefill and decoding.
    Infer,
}

/// Every round's result of each measurement, in first-seen order.
#[derive(Default)]
pub struct Runs(Vec<(Implementation, Measurement, Vec<ChildResult>)>);

impl Runs {
    /// Adds one round's result.
    pub fn record(&mut self, who: Implementation, m: Measurement, result: ChildResult) {
        match self.0.iter_mut().find(|(w, k, _)| *w == who && *k == m) {
            Some((_, _, runs)) => runs.push(result),
            None => self.0.push((who, m, vec![result])),
        }
    }
}

/// One measurement's medians over rounds (with predictions for training steps).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Training or inference.
    pub task: Task,
    /// Who ran it.
    pub implementation: Implementation,
    /// The mode.
    pub mode: Route,
    /// Encoder tokens per clip.
    pub audio_tokens: usize,
    /// What trains (`adapter`, `lora`) or the inference batch size.
    pub variant: String,
    /// Rounds measured.
    pub rounds: usize,
    /// Peak resident memory of the measuring process.
    pub peak_rss_bytes: f64,
    /// Peak device memory on a GPU (see [`ChildResult::peak_gpu_bytes`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gpu_bytes: Option<f64>,
    /// Seconds per training step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_seconds: Option<f64>,
    /// Examples per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_per_second: Option<f64>,
    /// Cost model: FLOPs of a training step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_train_flops: Option<f64>,
    /// Cost model: activation bytes kept for backward.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_activation_bytes: Option<f64>,
    /// Memory the step itself added (peak minus before), pal only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_memory_bytes: Option<f64>,
    /// Seconds of an inference prefill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_seconds: Option<f64>,
    /// Decoded tokens per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_second: Option<f64>,
}

/// LAL against PLITS at one Na and trainable set.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Encoder tokens per clip.
    pub audio_tokens: usize,
    /// What trains.
    pub variant: String,
    /// LAL samples/s over PLITS samples/s.
    pub lal_throughput_over_plits: f64,
    /// The cost model's PLITS FLOPs over LAL FLOPs.
    pub predicted_flop_ratio_plits_over_lal: f64,
    /// 1 - LAL peak RSS / PLITS peak RSS.
    pub lal_peak_memory_saving: f64,
    /// 1 - LAL step memory / PLITS step memory.
    pub lal_step_memory_saving: f64,
    /// PyTorch LAL step time over pal's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pal_lal_speed_over_pytorch_lal: Option<f64>,
    /// PyTorch PLITS step time over pal's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pal_plits_speed_over_pytorch_plits: Option<f64>,
    /// Compiled PyTorch LAL step time over pal's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pal_lal_speed_over_compiled_lal: Option<f64>,
    /// Compiled PyTorch PLITS step time over pal's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pal_plits_speed_over_compiled_plits: Option<f64>,
    /// LAL: the fastest PyTorch variant's step time over pal's fastest (any precision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_pal_lal_speed_over_best_pytorch: Option<f64>,
    /// PLITS: likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_pal_plits_speed_over_best_pytorch: Option<f64>,
    /// Which PyTorch variant was fastest (LAL, PLITS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fastest_pytorch: Option<(String, String)>,
}

/// The report (`PREFIX.json`).
#[derive(Debug, Clone, Serialize)]
pub struct ModesReport {
    /// The command that made it.
    pub command: String,
    /// The LLM.
    pub model: String,
    /// Examples per training batch.
    pub batch: usize,
    /// Text tokens per example.
    pub text_tokens: usize,
    /// Encoder width.
    pub d_enc: usize,
    /// LAL layers, `first..last`.
    pub lal_layers: String,
    /// PAL summary tokens.
    pub summary_tokens: usize,
    /// Rounds.
    pub rounds: usize,
    /// Timed steps per process.
    pub steps_per_process: usize,
    /// Decoded tokens per inference run.
    pub decode_tokens: usize,
    /// Threads.
    pub threads: usize,
    /// The CPU: model name and the flags that decide pal's kernels.
    pub cpu: String,
    /// Where it ran (`cpu`, `cuda`).
    pub device: String,
    /// The frozen LLM's type (`f32`, `bf16`).
    pub dtype: String,
    /// Every measurement.
    pub measurements: Vec<Entry>,
    /// LAL against PLITS.
    pub lal_over_plits: Vec<Ratio>,
    /// The PyTorch reference's torch version, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch: Option<String>,
    /// The reference's loss and gradients against pal's, checked before timing.
    pub parity: Vec<Parity>,
}

fn trainable_name(t: Trainable) -> &'static str {
    match t {
        Trainable::Adapter => "adapter",
        Trainable::Lora => "lora",
    }
}

fn route_name(r: Route) -> &'static str {
    match r {
        Route::Plits => "plits",
        Route::Lal => "lal",
        Route::Pal => "pal",
    }
}

impl ModesReport {
    /// Aggregates a run.
    pub fn new(bench: &ModesBench, runs: Runs, parity: Vec<Parity>) -> anyhow::Result<Self> {
        let s = &bench.setup;
        // Only the config is needed: random weights (gigabytes at 1B shapes) are not built.
        let (config, model) = match s.shapes {
            Some(shapes) => (shapes.config()?, shapes.report_name().to_string()),
            None => {
                let (llm, name) = setup_llm(&s.on_cpu_f32())?;
                (llm.config, name)
            }
        };
        let layers = config.num_hidden_layers;
        let lal_layers = layers.saturating_sub(s.lal_start);
        let predicted = |route: Route, na: usize| -> Cost {
            let shapes = Shapes {
                batch: s.batch,
                audio_tokens: na,
                text_tokens: s.text_tokens,
                d_enc: s.d_enc,
            };
            let mode = match route {
                Route::Plits => CostMode::Plits { stack: 1 },
                Route::Lal => CostMode::Lal { layers: lal_layers },
                Route::Pal => CostMode::Pal {
                    layers: lal_layers,
                    summary: s.summary,
                },
            };
            cost(&config, mode, shapes, 4)
        };
        let measurements: Vec<Entry> = runs
            .0
            .iter()
            .map(|(who, m, results)| {
                let med = |f: fn(&ChildResult) -> Option<f64>| {
                    median(results.iter().filter_map(f).collect())
                };
                let peak = median(results.iter().map(|r| r.peak_rss_bytes).collect());
                let gpu = results.iter().any(|r| r.peak_gpu_bytes.is_some());
                let peak_gpu_bytes = gpu.then(|| med(|r| r.peak_gpu_bytes));
                match *m {
                    Measurement::Train {
                        route,
                        audio_tokens,
                        trainable,
                    } => {
                        let step = med(|r| r.step_seconds);
                        let c = predicted(route, audio_tokens);
                        Entry {
                            task: Task::Train,
                            implementation: *who,
                            mode: route,
                            audio_tokens,
                            variant: trainable_name(trainable).into(),
                            rounds: results.len(),
                            peak_rss_bytes: peak,
                            peak_gpu_bytes,
                            step_seconds: Some(step),
                            samples_per_second: Some(s.batch as f64 / step),
                            predicted_train_flops: Some(c.train_flops()),
                            predicted_activation_bytes: Some(c.activation_bytes),
                            step_memory_bytes: who
                                .is_pal()
                                .then(|| peak - med(|r| r.rss_before_bytes)),
                            prefill_seconds: None,
                            decode_tokens_per_second: None,
                        }
                    }
                    Measurement::Infer {
                        route,
                        audio_tokens,
                        batch,
                    } => Entry {
                        task: Task::Infer,
                        implementation: *who,
                        mode: route,
                        audio_tokens,
                        variant: batch.to_string(),
                        rounds: results.len(),
                        peak_rss_bytes: peak,
                        peak_gpu_bytes,
                        step_seconds: None,
                        samples_per_second: Some(med(|r| r.samples_per_second)),
                        predicted_train_flops: None,
                        predicted_activation_bytes: None,
                        step_memory_bytes: None,
                        prefill_seconds: Some(med(|r| r.prefill_seconds)),
                        decode_tokens_per_second: Some(med(|r| r.decode_tokens_per_second)),
                    },
                }
            })
            .collect();
        let find = |who: Implementation, route: Route, na: usize, variant: &str| {
            measurements.iter().find(|e| {
                e.task == Task::Train
                    && e.implementation == who
                    && e.mode == route
                    && e.audio_tokens == na
                    && e.variant == variant
            })
        };
        let nan = f64::NAN;
        // The fastest pal step, the fastest PyTorch step and that variant's name.
        let best = |route: Route, na: usize, variant: &str| {
            let step = |who| find(who, route, na, variant).and_then(|e| e.step_seconds);
            let pal = [Implementation::Pal, Implementation::PalF32]
                .into_iter()
                .filter_map(step)
                .reduce(f64::min)?;
            let (torch, name) = [
                Implementation::Pytorch,
                Implementation::PytorchCompiled,
                Implementation::PytorchAutocast,
                Implementation::PytorchCompiledAutocast,
            ]
            .into_iter()
            .filter_map(|who| step(who).map(|s| (s, who.name().to_string())))
            .reduce(|a, b| if b.0 < a.0 { b } else { a })?;
            Some((pal, torch, name))
        };
        let mut lal_over_plits = vec![];
        for &na in &bench.audio_tokens {
            for &trainable in &bench.trainable {
                let variant = trainable_name(trainable);
                let (Some(p), Some(l)) = (
                    find(Implementation::Pal, Route::Plits, na, variant),
                    find(Implementation::Pal, Route::Lal, na, variant),
                ) else {
                    continue;
                };
                let speed_over = |torch: Option<&Entry>, ours: &Entry| {
                    // (the reference's seconds per step over pal's: above 1, pal is faster)
                    torch.map(|t| t.step_seconds.unwrap_or(nan) / ours.step_seconds.unwrap_or(nan))
                };
                lal_over_plits.push(Ratio {
                    audio_tokens: na,
                    variant: variant.into(),
                    lal_throughput_over_plits: l.samples_per_second.unwrap_or(nan)
                        / p.samples_per_second.unwrap_or(nan),
                    predicted_flop_ratio_plits_over_lal: p.predicted_train_flops.unwrap_or(nan)
                        / l.predicted_train_flops.unwrap_or(nan),
                    lal_peak_memory_saving: 1.0 - l.peak_rss_bytes / p.peak_rss_bytes,
                    lal_step_memory_saving: 1.0
                        - l.step_memory_bytes.unwrap_or(nan) / p.step_memory_bytes.unwrap_or(nan),
                    pal_lal_speed_over_pytorch_lal: speed_over(
                        find(Implementation::Pytorch, Route::Lal, na, variant),
                        l,
                    ),
                    pal_plits_speed_over_pytorch_plits: speed_over(
                        find(Implementation::Pytorch, Route::Plits, na, variant),
                        p,
                    ),
                    pal_lal_speed_over_compiled_lal: speed_over(
                        find(Implementation::PytorchCompiled, Route::Lal, na, variant),
                        l,
                    ),
                    pal_plits_speed_over_compiled_plits: speed_over(
                        find(Implementation::PytorchCompiled, Route::Plits, na, variant),
                        p,
                    ),
                    best_pal_lal_speed_over_best_pytorch: best(Route::Lal, na, variant)
                        .map(|(pal, torch, _)| torch / pal),
                    best_pal_plits_speed_over_best_pytorch: best(Route::Plits, na, variant)
                        .map(|(pal, torch, _)| torch / pal),
                    fastest_pytorch: best(Route::Lal, na, variant)
                        .zip(best(Route::Plits, na, variant))
                        .map(|(l, p)| (l.2, p.2)),
                });
            }
        }
        let torch = runs
            .0
            .iter()
            .flat_map(|(_, _, results)| results.iter().filter_map(|r| r.torch.clone()))
            .next();
        Ok(Self {
            torch,
            parity,
            command: bench.command.clone(),
            model,
            batch: s.batch,
            text_tokens: s.text_tokens,
            d_enc: s.d_enc,
            lal_layers: format!("{}..{}", s.lal_start, layers.saturating_sub(1)),
            summary_tokens: s.summary,
            rounds: bench.rounds,
            steps_per_process: s.steps,
            decode_tokens: s.decode_tokens,
            threads: crate::threads(),
            cpu: crate::report::cpu_description(),
            device: s.device.to_string(),
            dtype: s.dtype.to_string(),
            measurements,
            lal_over_plits,
        })
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let num = |v: Option<f64>| v.unwrap_or(f64::NAN);
        let mut md = format!(
            "# PLITS, LAL and PAL side by side\n\n`{}`\n\nLLM: {}; batch {}, Nt {}, d_enc {}, LAL layers {}, PAL summary tokens {}; each measurement in its own process (peak memory is that process's), interleaved; median over {} rounds x {} steps; {} threads.\n\nCPU: {}.\n",
            self.command, self.model, self.batch, self.text_tokens, self.d_enc, self.lal_layers,
            self.summary_tokens, self.rounds, self.steps_per_process, self.threads, self.cpu
        );
        if self.device != "cpu" || self.dtype != "f32" {
            md.push_str(&format!(
                "\nOn {}, the frozen LLM in {} (the adapter, its gradients and the loss in f32). Peak GPU memory: PyTorch's `max_memory_allocated`; pal's device memory in use (total less free) sampled after each forward, backward, prefill and decoding run, less what was in use before the model was built.\n",
                self.device, self.dtype
            ));
        }
        // A peak-GPU column when anything ran on one.
        let any_gpu = self.measurements.iter().any(|e| e.peak_gpu_bytes.is_some());
        let gpu = |e: &Entry| match (any_gpu, e.peak_gpu_bytes) {
            (false, _) => String::new(),
            (true, Some(b)) => format!(" {:.0} |", b / 1048576.0),
            (true, None) => " - |".into(),
        };
        let (gpu_header, gpu_rule) = match any_gpu {
            true => (" peak GPU (MiB) |", "---|"),
            false => ("", ""),
        };
        let train: Vec<&Entry> = self
            .measurements
            .iter()
            .filter(|e| e.task == Task::Train)
            .collect();
        if !train.is_empty() {
            md.push_str(&format!("\n## Training step\n\n| implementation | trains | mode | Na | s/step | samples/s | peak RSS (MiB) | step memory (MiB) | predicted GFLOP | predicted activations (MiB) |{gpu_header}\n|---|---|---|---|---|---|---|---|---|---|{gpu_rule}\n"));
            for e in train {
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {:.3} | {:.2} | {:.0} | {} | {:.1} | {:.0} |{}\n",
                    e.implementation.name(),
                    e.variant,
                    route_name(e.mode),
                    e.audio_tokens,
                    num(e.step_seconds),
                    num(e.samples_per_second),
                    e.peak_rss_bytes / 1048576.0,
                    e.step_memory_bytes
                        .map(|v| format!("{:.0}", v / 1048576.0))
                        .unwrap_or_else(|| "-".into()),
                    num(e.predicted_train_flops) / 1e9,
                    num(e.predicted_activation_bytes) / 1048576.0,
                    gpu(e)
                ));
            }
        }
        if !self.lal_over_plits.is_empty() {
            md.push_str("\n## LAL against PLITS (and pal against PyTorch)\n\n| Na | trains | LAL throughput / PLITS | cost model PLITS FLOP / LAL FLOP | LAL peak memory saving | LAL step memory saving | pal LAL speed / PyTorch LAL (eager, compiled) | pal PLITS speed / PyTorch PLITS (eager, compiled) |\n|---|---|---|---|---|---|---|---|\n");
            let one = |v: Option<f64>| v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into());
            let times = |eager: Option<f64>, compiled: Option<f64>| match compiled {
                Some(_) => format!("{}, {}", one(eager), one(compiled)),
                None => one(eager),
            };
            for r in &self.lal_over_plits {
                md.push_str(&format!(
                    "| {} | {} | {:.2}x | {:.2}x | {:.0}% | {:.0}% | {} | {} |\n",
                    r.audio_tokens,
                    r.variant,
                    r.lal_throughput_over_plits,
                    r.predicted_flop_ratio_plits_over_lal,
                    100.0 * r.lal_peak_memory_saving,
                    100.0 * r.lal_step_memory_saving,
                    times(
                        r.pal_lal_speed_over_pytorch_lal,
                        r.pal_lal_speed_over_compiled_lal
                    ),
                    times(
                        r.pal_plits_speed_over_pytorch_plits,
                        r.pal_plits_speed_over_compiled_plits
                    )
                ));
            }
        }
        if self
            .lal_over_plits
            .iter()
            .any(|r| r.best_pal_lal_speed_over_best_pytorch.is_some())
        {
            md.push_str("\n## pal's fastest against PyTorch's fastest\n\nEach side's fastest step in any precision and variant it ran (above 1x, pal is faster).\n\n| Na | trains | LAL: pal speed / PyTorch | fastest PyTorch LAL | PLITS: pal speed / PyTorch | fastest PyTorch PLITS |\n|---|---|---|---|---|---|\n");
            for r in &self.lal_over_plits {
                let (lal, plits) = r.fastest_pytorch.clone().unwrap_or_default();
                md.push_str(&format!(
                    "| {} | {} | {:.2}x | {lal} | {:.2}x | {plits} |\n",
                    r.audio_tokens,
                    r.variant,
                    num(r.best_pal_lal_speed_over_best_pytorch),
                    num(r.best_pal_plits_speed_over_best_pytorch),
                ));
            }
        }
        if let Some(torch) = &self.torch {
            let [(mmap, mmap_value), (trim, trim_value)] = crate::allocator_env();
            md.push_str(&format!(
                "\n## The PyTorch reference\n\n`scripts/bench_modes_torch.py`, torch {torch}, {} threads, under pal's allocator settings ({mmap}={mmap_value}, {trim}={trim_value}). One `nn.Linear` per LAL layer, `F.rms_norm`, `F.scaled_dot_product_attention` with GQA, the frozen LLM without weight gradients; eager, and `torch.compile` (default mode; the first step, which compiles, is not timed); where the CPU has AVX512-BF16 or AMX, each also with the frozen model under `torch.autocast(\"cpu\", torch.bfloat16)` (the loss in f32). A step is forward and backward on both sides; neither takes an optimizer step.\n\nBefore timing, both sides ran one step on the same weights (the LLM pal loaded) and inputs, PyTorch also in f64. Gradient errors are the largest over the adapter's tensors of max|g - g_ref| / max|g_ref|; they agree when the losses are within 1e-4 and pal's gradients are within 2e-3 of the f64 step, or no further from it than twice PyTorch's own f32 gradients (f32 rounding through the whole backward):\n\n| mode | loss (pal) | loss (PyTorch) | loss relative error | pal against PyTorch f32 | pal against f64 | PyTorch f32 against f64 | tensors compared | agree |\n|---|---|---|---|---|---|---|---|---|\n",
                self.threads
            ));
            for p in &self.parity {
                md.push_str(&format!(
                    "| {} | {:.6} | {:.6} | {:.1e} | {:.1e} (`{}`) | {:.1e} | {:.1e} | {} | {} |\n",
                    p.mode,
                    p.loss_pal,
                    p.loss_torch,
                    p.loss_relative_error,
                    p.gradient_relative_error,
                    p.worst_gradient,
                    p.pal_error_vs_f64,
                    p.torch_error_vs_f64,
                    p.gradients_compared,
                    if p.ok { "yes" } else { "no" }
                ));
            }
        }
        let infer: Vec<&Entry> = self
            .measurements
            .iter()
            .filter(|e| e.task == Task::Infer)
            .collect();
        if !infer.is_empty() {
            let held = match (self.device.as_str(), self.dtype.as_str()) {
                ("cpu", "f32") => "Frozen LLM weights held as `--weights auto` holds them (a GGUF's quantized blocks on pal's kernels for decoding and prefill); random-weight shapes stay in f32.".to_string(),
                (device, dtype) => format!("Frozen LLM weights in {dtype} on {device} (the quantized forms are for f32 on the CPU)."),
            };
            md.push_str(&format!("\n## Inference (greedy, {} decoded tokens)\n\n{held}\n\n| mode | Na | batch | prefill (s) | decode tokens/s | samples/s | peak RSS (MiB) |{gpu_header}\n|---|---|---|---|---|---|---|{gpu_rule}\n", self.decode_tokens));
            for e in infer {
                md.push_str(&format!(
                    "| {} | {} | {} | {:.3} | {:.1} | {:.2} | {:.0} |{}\n",
                    route_name(e.mode),
                    e.audio_tokens,
                    e.variant,
                    num(e.prefill_seconds),
                    num(e.decode_tokens_per_second),
                    num(e.samples_per_second),
                    e.peak_rss_bytes / 1048576.0,
                    gpu(e)
                ));
            }
        }
        md
    }
}
