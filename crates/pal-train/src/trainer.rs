//! The training loop, top to bottom: load the curriculum and the model, then for each stage:
//! its data ([`crate::stage_data`]: manifests encoded once with the frozen encoders, cached on
//! disk; feature shards streamed), batches, loss, backward, accumulation, clipping, AdamW,
//! metrics, checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use pal_models::audio_llm::{build, BuiltModel, ModelConfig};
use pal_models::audio_llm::{Example, Padding};
use pal_models::encoders::{AudioEncoder, CachedEncoder};

use crate::checkpoint::{self, TrainState};
use crate::curriculum::{Curriculum, Stage};
use crate::distributed::{sum_gradients, Collective, SingleProcess};
pub use crate::metrics::StepMetrics;
use crate::metrics::{self, MetricsLog};
use crate::optim::{accumulate, clip_grad_norm, lr_at, named_grads, AdamW, AdamWConfig};
use crate::stage_data::{RunContext, StageData};
use crate::TrainError;

/// Options of a training run besides the curriculum.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the run folder's latest checkpoint.
    pub resume: bool,
    /// Skip bad manifest lines and undecodable clips (each warned and counted).
    pub skip_bad: bool,
    /// No progress bar (logs only).
    pub quiet: bool,
    /// Use this model config instead of the curriculum's `model` (one curriculum, several
    /// integration modes).
    pub model: Option<PathBuf>,
    /// Use this run folder instead of the curriculum's `output`.
    pub output: Option<PathBuf>,
    /// Use this seed (the batch order) instead of the curriculum's `seed`.
    pub seed: Option<u64>,
    /// Cache encoder outputs here instead of in the run folder (runs that share clips and
    /// encoders, such as `pal probe`'s cells, encode each clip once).
    pub encoder_cache: Option<PathBuf>,
    /// Where the model trains.
    pub device: pal_nn::ComputeDevice,
    /// The type the frozen backbone and encoders compute in (the adapter stays f32).
    pub dtype: pal_nn::ComputeDtype,
    /// Called after every optimizer step (on rank 0); `false` stops the run after a checkpoint
    /// ([`TrainError::Stopped`]).
    pub on_step: Option<StepHook>,
}

/// A function called with each step's metrics; `false` stops training (the Python package's
/// `on_step` callback, and its Ctrl-C).
#[derive(Clone)]
pub struct StepHook(pub std::sync::Arc<dyn Fn(&StepMetrics) -> bool + Send + Sync>);

impl std::fmt::Debug for StepHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepHook")
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps done in total.
    pub steps: u64,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Examples skipped as bad.
    pub skipped: usize,
    /// The run folder.
    pub run_dir: PathBuf,
    /// What the frozen backbone computed in (`f32`, `bf16`, `f32 with bf16 products (amx)`).
    pub precision: String,
}

impl TrainSummary {
    /// What this invocation cost, as `train_summary.json` holds it (`scripts/results.sh` and
    /// `pal probe` read it): steps, final loss, `seconds`, peak RSS, whether it resumed, ranks
    /// and gradient engine, precision.
    pub fn json(
        &self,
        seconds: f64,
        resumed: bool,
        ranks: usize,
        engine: &str,
    ) -> serde_json::Value {
        let (peak_rss_bytes, _) = metrics::memory_bytes();
        serde_json::json!({
            "steps": self.steps,
            "final_loss": self.final_loss,
            "seconds": seconds,
            "peak_rss_bytes": peak_rss_bytes,
            "resumed": resumed,
            "ranks": ranks,
            "engine": engine,
            "precision": self.precision,
        })
    }

    /// Writes [`Self::json`] to the run folder's `train_summary.json`.
    pub fn write(
        &self,
        seconds: f64,
        resumed: bool,
        ranks: usize,
        engine: &str,
    ) -> Result<(), TrainError> {
        let path = self.run_dir.join("train_summary.json");
        let text = serde_json::to_string_pretty(&self.json(seconds, resumed, ranks, engine))
            .expect("a JSON value serialises");
        std::fs::write(&path, text).map_err(|e| TrainError::Io(path, e))
    }
}

/// Sets up what `trainable` needs in the model: LoRA adapters or trainable LLM weights
/// (idempotent: parameters that exist are reused).
pub fn apply_trainable(
    model: &mut pal_models::audio_llm::AudioLlm,
    params: &pal_nn::Params,
    trainable: &crate::curriculum::Trainable,
    frozen_ffn: bool,
) -> Result<(), TrainError> {
    use crate::curriculum::Trainable;
    match trainable {
        Trainable::Adapter => {}
        Trainable::Lora {
            rank,
            alpha,
            targets,
        } => model
            .llm
            .attach_lora(params, *rank, *alpha, targets, frozen_ffn)?,
        Trainable::Full if model.llm.dtype() != params.dtype() => {
            return Err(pal_models::ModelError::Unsupported(format!(
                "training the whole LLM needs --dtype f32 (a {:?} backbone is frozen; train the \
                 adapter or LoRA on it)",
                model.llm.dtype()
            ))
            .into())
        }
        Trainable::Full => model.llm.make_trainable(params, frozen_ffn)?,
    }
    Ok(())
}

/// Optimizer steps of a stage with `batches` batches per epoch.
fn stage_steps(stage: &Stage, batches: usize) -> u64 {
    match (stage.steps, stage.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => {
            let batches = batches as f64 * e;
            (batches / stage.grad_accum as f64).ceil().max(1.0) as u64
        }
        (None, None) => 1,
    }
}

/// One optimizer step's gradients over `micro` batches, token-weighted so that k micro-batches
/// give the same gradient as one batch k times larger. Returns (gradients, loss, tokens).
pub fn accumulated_gradients(
    model: &pal_models::audio_llm::AudioLlm,
    params: &pal_nn::Params,
    micro: &[Vec<Example>],
) -> Result<(HashMap<String, Tensor>, f64, usize), TrainError> {
    rank_gradients(model, params, micro, &SingleProcess)
}

/// This rank's share of one optimizer step's gradients: its `micro` batches (slices of the
/// global batches; some may be empty), each weighted by its trained tokens over the tokens of
/// all ranks, so that summing the ranks' gradients gives the gradient of the whole batch.
/// Returns (this rank's gradients, the loss over all ranks, the tokens of all ranks).
pub fn rank_gradients(
    model: &pal_models::audio_llm::AudioLlm,
    params: &pal_nn::Params,
    micro: &[Vec<Example>],
    collective: &dyn Collective,
) -> Result<(HashMap<String, Tensor>, f64, usize), TrainError> {
    let vars = params.vars();
    let mut prepared = micro
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| model.prepare(m, Padding::Right))
        .collect::<Result<Vec<_>, _>>()?;
    let counts: Vec<usize> = prepared
        .iter()
        .map(|p| p.targets.iter().flatten().filter(|t| t.is_some()).count())
        .collect();
    let mut total = [counts.iter().sum::<usize>() as f64];
    collective.sum_f64(&mut total)?;
    let total = total[0] as usize;
    if total == 0 {
        return Err(TrainError::Config(
            PathBuf::new(),
            "a training batch has no trained tokens".into(),
        ));
    }
    let mut grads = HashMap::new();
    let mut loss_sum = [0.0];
    for (batch, &count) in prepared.iter_mut().zip(&counts) {
        let (loss, _) = model.loss(batch)?;
        let weight = count as f64 / total as f64;
        let weighted = (loss * weight)?;
        loss_sum[0] += weighted.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        accumulate(&mut grads, named_grads(&vars, &weighted.backward()?))?;
    }
    collective.sum_f64(&mut loss_sum)?;
    Ok((grads, loss_sum[0], total))
}

/// Runs (or resumes) the curriculum at `path` in this process alone.
pub fn train(path: &Path, options: &TrainOptions) -> Result<TrainSummary, TrainError> {
    train_ranks(path, options, &SingleProcess)
}

/// Runs (or resumes) the curriculum at `path` as one rank of `collective`: every rank trains
/// on its slice of each batch and takes the same step; rank 0 alone writes the run folder
/// (configs, metrics, plot, checkpoints, adapter) and shows progress.
pub fn train_ranks(
    path: &Path,
    options: &TrainOptions,
    collective: &dyn Collective,
) -> Result<TrainSummary, TrainError> {
    let lead = collective.rank() == 0;
    let curriculum = Curriculum::load(path)?;
    let full = curriculum
        .stages
        .iter()
        .any(|s| matches!(s.trainable, crate::curriculum::Trainable::Full));
    if full && options.dtype == pal_nn::ComputeDtype::Bf16 {
        return Err(pal_models::ModelError::Unsupported(
            "training the whole LLM needs --dtype f32 (bf16 is for a frozen backbone; train the \
             adapter or LoRA on it, or use --dtype auto, which trains a whole LLM in f32)"
                .into(),
        )
        .into());
    }
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let run = options
        .output
        .clone()
        .unwrap_or_else(|| base.join(&curriculum.output));
    std::fs::create_dir_all(&run).map_err(|e| TrainError::Io(run.clone(), e))?;
    let model_path = options
        .model
        .clone()
        .unwrap_or_else(|| base.join(&curriculum.model));
    let model_config = ModelConfig::load(&model_path)?;
    if lead {
        // The run folder is self-contained: configs next to the weights.
        model_config
            .with_absolute_paths(model_path.parent().unwrap_or(Path::new(".")))
            .save(&run.join("model.toml"))?;
        std::fs::copy(path, run.join("curriculum.toml"))
            .map_err(|e| TrainError::Io(run.clone(), e))?;
    }
    // A whole LLM trains in f32 (its weights change: no frozen bf16 form to multiply with).
    let mut precision = options.dtype.precision(options.device);
    precision.bf16_products &= !full;
    let mut built = build(
        &model_config,
        model_path.parent().unwrap_or(Path::new(".")),
        precision.dtype,
        &options.device.open()?,
    )?;
    built.hold_precision(precision)?;
    let checkpoints = run.join("checkpoints");
    let BuiltModel {
        mut model,
        encoders,
        tokenizer,
        params,
        ..
    } = built;

    let mut state = TrainState {
        world_size: collective.size(),
        ..TrainState::default()
    };
    let mut optimizer = AdamW::new(AdamWConfig::default());
    if options.resume {
        if let Some(dir) = checkpoint::latest(&checkpoints) {
            // The parameters of every stage reached so far must exist before loading.
            let reached = checkpoint::read_state(&dir)?;
            if reached.world_size.max(1) != collective.size() {
                return Err(TrainError::Checkpoint(
                    dir.clone(),
                    format!(
                        "written by a run of {} rank(s); resume it with the same number of ranks (this run has {}), or start a new run folder",
                        reached.world_size.max(1),
                        collective.size()
                    ),
                ));
            }
            for stage in curriculum.stages.iter().take(reached.stage + 1) {
                apply_trainable(
                    &mut model,
                    &params,
                    &stage.trainable,
                    model_config.frozen_ffn,
                )?;
            }
            let ckpt = checkpoint::load(&dir, &params)?;
            state = ckpt.state;
            optimizer.restore(state.global_step, ckpt.optimizer)?;
            eprintln!(
                "resuming from {} (step {})",
                dir.display(),
                state.global_step
            );
        }
    }
    let log = if lead {
        Some(MetricsLog::open(&run, state.global_step)?)
    } else {
        None
    };
    // Frozen encoders: every clip is encoded once, and the outputs are cached on disk.
    let encoders: Vec<CachedEncoder<Box<dyn AudioEncoder>>> = encoders
        .into_iter()
        .map(|e| {
            let cache = options
                .encoder_cache
                .clone()
                .unwrap_or_else(|| run.join("cache").join("encoders"));
            CachedEncoder::new(e, cache)
        })
        .collect();
    let mut skipped_total = 0;
    let mut final_loss = f64::NAN;

    for (stage_index, stage) in curriculum.stages.iter().enumerate().skip(state.stage) {
        if stage_index > state.stage {
            state.stage = stage_index;
            state.stage_step = 0;
            state.batches = Default::default();
        }
        apply_trainable(
            &mut model,
            &params,
            &stage.trainable,
            model_config.frozen_ffn,
        )?;
        model.llm.checkpoint_layers = stage.activation_checkpointing;
        let vars: std::collections::BTreeMap<String, candle_core::Var> = params
            .vars()
            .into_iter()
            .filter(|(name, _)| stage.trainable.trains(name))
            .collect();
        let context = RunContext {
            base: &base,
            seed: options.seed.unwrap_or(curriculum.seed),
            skip_bad: options.skip_bad,
            max_clips: model.max_clips,
        };
        let mut data = StageData::load(
            stage,
            stage_index,
            &context,
            &tokenizer,
            &encoders,
            collective,
        )?;
        skipped_total += data.skipped;
        let total = stage_steps(stage, data.batches_per_epoch());
        optimizer.config.weight_decay = stage.weight_decay;
        let bar = if options.quiet || !lead {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total)
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(stage.name.clone());
        bar.set_position(state.stage_step);
        while state.stage_step < total {
            let start = Instant::now();
            let lr = lr_at(
                state.stage_step,
                total,
                stage.warmup_steps,
                stage.lr,
                stage.min_lr_ratio,
            );
            let micro: Vec<Vec<Example>> = (0..stage.grad_accum)
                .map(|_| data.next_batch(&mut state.batches, &tokenizer))
                .collect::<Result<_, _>>()?;
            let mut samples = [micro.iter().map(|m| m.len()).sum::<usize>() as f64];
            collective.sum_f64(&mut samples)?;
            let samples = samples[0];
            let (grads, loss, tokens) = rank_gradients(&model, &params, &micro, collective)?;
            let mut grads: HashMap<String, Tensor> = grads
                .into_iter()
                .filter(|(name, _)| vars.contains_key(name))
                .collect();
            let sync = Instant::now();
            sum_gradients(collective, &mut grads, &vars)?;
            let allreduce_s = sync.elapsed().as_secs_f64();
            let grad_norm = clip_grad_norm(&mut grads, stage.max_grad_norm)?;
            optimizer.step(&vars, &grads, lr)?;
            state.stage_step += 1;
            state.global_step += 1;
            final_loss = loss;
            let m = StepMetrics {
                step: state.global_step,
                stage: stage.name.clone(),
                loss,
                lr,
                grad_norm,
                samples_per_s: samples / start.elapsed().as_secs_f64(),
                tokens,
                step_s: start.elapsed().as_secs_f64(),
                allreduce_s,
            };
            if let Some(log) = &log {
                log.append(&m)?;
            }
            bar.set_position(state.stage_step);
            bar.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} {:.1} samples/s",
                m.samples_per_s
            ));
            // A step hook reports steps its own way (the Python package's progress bar).
            if options.quiet && lead && options.on_step.is_none() {
                eprintln!("step {} loss {loss:.4} lr {lr:.2e}", state.global_step);
            }
            let stop = lead && options.on_step.as_ref().is_some_and(|hook| !(hook.0)(&m));
            let checkpoint_due = state
                .global_step
                .is_multiple_of(curriculum.checkpoint_every)
                || state.stage_step == total
                || stop;
            if let Some(log) = log.as_ref().filter(|_| checkpoint_due) {
                checkpoint::save(&checkpoints, &state, &params, &optimizer.state_tensors())?;
                metrics::plot(&metrics::read(log.path())?, &run.join("loss.png"))?;
            }
            if stop {
                bar.abandon();
                return Err(TrainError::Stopped {
                    step: state.global_step,
                    run,
                });
            }
        }
        bar.finish();
    }
    if lead {
        params
            .save(&run.join("adapter.safetensors"))
            .map_err(|e| TrainError::Checkpoint(run.clone(), e.to_string()))?;
    }
    if skipped_total > 0 {
        eprintln!("warning: {skipped_total} bad examples were skipped");
    }
    Ok(TrainSummary {
        steps: state.global_step,
        final_loss,
        skipped: skipped_total,
        run_dir: run,
        precision: precision.describe(),
    })
}
