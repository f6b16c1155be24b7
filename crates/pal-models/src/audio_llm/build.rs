//! Building a model from its config: the LLM and encoders loaded from where the config says,
//! the adapter created (or loaded from a run folder), the tokenizer beside them.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use pal_nn::Params;

use crate::audio_llm::config::{Attachment, EncoderKind, EncoderSpec, ModelConfig};
use crate::audio_llm::model::AudioLlm;
use crate::encoders::ast::{Ast, AstEncoder};
use crate::encoders::audio_encoder::{encode_clip, AudioEncoder};
use crate::encoders::external::ExternalEncoder;
use crate::encoders::pooled::PooledEncoder;
use crate::encoders::whisper::{Whisper, WhisperAudioEncoder};
use crate::encoders::windows::WindowPolicy;
use crate::error::{ModelError, Result};
use crate::llm::load::load_llm_held;
use crate::llm::weight_form::WeightForm;
use crate::text::tokenizer::Tokenizer;

/// Resolves `asset:NAME` to the fetched asset and relative paths against `base`.
pub fn resolve_path(spec: &str, base: &Path) -> Result<PathBuf> {
    if let Some(name) = spec.strip_prefix("asset:") {
        let asset = pal_assets::ALL
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| ModelError::Unsupported(format!("unknown asset '{name}'")))?;
        if !asset.is_present() {
            return Err(ModelError::Unsupported(format!(
                "asset '{name}' is not fetched: run `pal fetch`"
            )));
        }
        return Ok(if asset.files.len() == 1 {
            asset.main_file()
        } else {
            asset.dir()
        });
    }
    let p = PathBuf::from(spec);
    Ok(if p.is_absolute() { p } else { base.join(p) })
}

/// A built model: the audio-LLM, its encoders, the tokenizer and the adapter parameters.
pub struct BuiltModel {
    /// The audio-LLM.
    pub model: AudioLlm,
    /// One encoder per attachment, same order.
    pub encoders: Vec<Box<dyn AudioEncoder>>,
    /// The LLM's tokenizer.
    pub tokenizer: Tokenizer,
    /// Trainable adapter parameters.
    pub params: Params,
    /// Where the LLM was loaded from (its quantized weights are read from there again).
    pub llm_path: PathBuf,
}

impl BuiltModel {
    /// The clip (16 kHz mono samples) encoded by every encoder of the model, in order: the
    /// `audio` of one [`crate::audio_llm::Example`].
    pub fn encode_clip(&self, samples: &[f32]) -> Result<Vec<Tensor>> {
        encode_clip(&self.encoders, samples)
    }

    /// Packs the frozen LLM's linear weights in bf16 when `precision` asks for bf16 products
    /// (see [`crate::llm::decoder::Llama::hold_bf16`]); returns the bytes packed.
    pub fn hold_precision(&mut self, precision: pal_nn::Precision) -> Result<usize> {
        if precision.bf16_products {
            self.model.llm.hold_bf16()
        } else {
            Ok(0)
        }
    }
}

/// The run's Whisper with its decoder, for transcription: the first Whisper encoder of the
/// run's `model.toml` whose folder also holds the decoder; `None` when there is none.
pub fn run_transcriber(
    run: &Path,
    dtype: DType,
    device: &Device,
) -> Result<
    Option<(
        crate::encoders::whisper::Whisper,
        crate::encoders::whisper::WhisperTokenizer,
    )>,
> {
    use crate::encoders::whisper::{Whisper, WhisperTokenizer};
    let config = ModelConfig::load(&run.join("model.toml"))?;
    let Some(spec) = config
        .encoders
        .iter()
        .find(|e| e.kind == EncoderKind::Whisper)
    else {
        return Ok(None);
    };
    let folder = resolve_path(&spec.path, run)?;
    let Ok(model) = Whisper::from_folder(&folder, true, dtype, device) else {
        return Ok(None);
    };
    let tokenizer = WhisperTokenizer::from_folder(&folder, &model.config, "en")?;
    Ok(Some((model, tokenizer)))
}

/// The config's encoders alone (paths relative to `base`), in order: what `pal encode` needs.
pub fn build_encoders(
    config: &ModelConfig,
    base: &Path,
    dtype: DType,
    device: &Device,
) -> Result<Vec<Box<dyn AudioEncoder>>> {
    let mut encoders: Vec<Box<dyn AudioEncoder>> = vec![];
    for spec in &config.encoders {
        let path = resolve_path(&spec.path, base)?;
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let encoder: Box<dyn AudioEncoder> = match spec.kind {
            EncoderKind::Whisper => {
                let w = Whisper::from_folder(&path, false, dtype, device)?;
                let mut e = WhisperAudioEncoder::new(w.encoder, w.config.num_mel_bins, id);
                e.layer = spec.layer;
                e.real_length = spec.real_length;
                e.windows = window_policy(config, spec, e.window_samples());
                Box::new(e)
            }
            EncoderKind::Ast => {
                let mut e = AstEncoder::new(Ast::from_folder(&path, dtype, device)?, id);
                e.layer = spec.layer;
                e.real_length = spec.real_length;
                e.windows = window_policy(config, spec, e.window_samples());
                Box::new(e)
            }
            EncoderKind::Shards => Box::new(ExternalEncoder::from_shards(&path, &spec.name)?),
        };
        let encoder: Box<dyn AudioEncoder> = match spec.pool {
            0 => {
                return Err(ModelError::Unsupported(format!(
                    "encoder '{}': pool must be at least 1",
                    spec.name
                )))
            }
            1 => encoder,
            pool => Box::new(PooledEncoder::new(encoder, pool)),
        };
        encoders.push(encoder);
    }
    Ok(encoders)
}

/// The windows an encoder of `spec` takes per clip: its `max_windows`, or, where the config sets
/// `max_audio_seconds`, as many of its windows (`window` samples) as that fills (the model
/// checks the seconds themselves, [`crate::audio_llm::limits`]).
fn window_policy(config: &ModelConfig, spec: &EncoderSpec, window: Option<usize>) -> WindowPolicy {
    let max_windows = match (config.max_audio_seconds, window) {
        (Some(seconds), Some(window)) if window > 0 => {
            let samples = seconds * pal_audio::SAMPLE_RATE as f64;
            (samples / window as f64).ceil().max(1.0) as usize
        }
        _ => spec.max_windows,
    };
    WindowPolicy { max_windows }
}

/// Loads everything a config names (paths relative to `base`) and creates the adapter parameters:
/// the LLM and encoders in `dtype` on `device`, the adapter in [`Params::master_dtype`] of it
/// (f32 beside a bf16 backbone).
pub fn build(
    config: &ModelConfig,
    base: &Path,
    dtype: DType,
    device: &Device,
) -> Result<BuiltModel> {
    build_held(config, base, dtype, device, WeightForm::F32)
}

/// [`build`] with the LLM's frozen linear weights held in `form` as they load
/// ([`crate::llm::load_llm_held`]).
pub fn build_held(
    config: &ModelConfig,
    base: &Path,
    dtype: DType,
    device: &Device,
    form: WeightForm,
) -> Result<BuiltModel> {
    let llm_path = resolve_path(&config.llm.path, base)?;
    let (llm, tokenizer, _) = load_llm_held(&llm_path, dtype, device, form)?;
    let encoders = build_encoders(config, base, dtype, device)?;
    let attachments: Vec<Attachment> = config
        .encoders
        .iter()
        .zip(&encoders)
        .map(|(spec, encoder)| Attachment {
            name: spec.name.clone(),
            d_enc: encoder.dim(),
            route: spec.route,
            connector: spec.connector.clone(),
            summary: spec.summary.clone(),
            lal: spec.lal.clone(),
        })
        .collect();
    let params = Params::new(config.seed, Params::master_dtype(dtype), device);
    if config.max_clips == 0 {
        return Err(ModelError::Unsupported(
            "max_clips = 0 in the model config: a model takes at least one clip".into(),
        ));
    }
    let mut model = AudioLlm::new(llm, &attachments, &params)?;
    model.max_clips = config.max_clips;
    model.audio_limits = config.audio_limits()?;
    Ok(BuiltModel {
        model,
        encoders,
        tokenizer,
        params,
        llm_path,
    })
}

/// A run folder loaded for inference as `--weights`, `--device` and `--dtype` say: the LLM's
/// frozen linear weights held in `weights`, and, with f32 weights, their bf16 products for
/// prefill where `dtype` asks for them (quantized forms take prefill otherwise). Attention over
/// LAL prefixes runs in bf16 where `dtype` says so ([`pal_nn::Precision::bf16_prefix`]),
/// whatever the weights' form ([`crate::llm::Llama::bf16_prefix`]).
pub fn load_run_for_inference(
    dir: &Path,
    weights: WeightForm,
    device: pal_nn::ComputeDevice,
    dtype: pal_nn::ComputeDtype,
) -> Result<BuiltModel> {
    let precision = dtype.precision(device);
    let mut built = load_run_held(dir, precision.dtype, &device.open()?, weights)?;
    if weights == WeightForm::F32 {
        built.hold_precision(precision)?;
    }
    built.model.llm.bf16_prefix = precision.bf16_prefix;
    built.model.keeps_graph = false;
    Ok(built)
}

/// Loads a run folder (`model.toml` + `adapter.safetensors`, as `pal train` writes them): the
/// model with its trained adapter, the backbone in `dtype`.
pub fn load_run(dir: &Path, dtype: DType, device: &Device) -> Result<BuiltModel> {
    load_run_held(dir, dtype, device, WeightForm::F32)
}

/// [`load_run`] with the LLM's frozen linear weights held in `form` as they load.
pub fn load_run_held(
    dir: &Path,
    dtype: DType,
    device: &Device,
    form: WeightForm,
) -> Result<BuiltModel> {
    let config = ModelConfig::load(&dir.join("model.toml"))?;
    let built = build_held(&config, dir, dtype, device, form)?;
    let adapter = dir.join("adapter.safetensors");
    if !adapter.exists() {
        return Err(ModelError::NotFound(adapter));
    }
    built
        .params
        .load(&adapter)
        .map_err(|e| ModelError::format(&adapter, e))?;
    Ok(built)
}

/// Writes a run folder for `config` (paths relative to `base`) with a freshly initialised,
/// untrained adapter: what a server or a protocol test needs before any training.
pub fn write_untrained_run(config: &ModelConfig, base: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    config
        .with_absolute_paths(base)
        .save(&dir.join("model.toml"))?;
    let built = build(config, base, DType::F32, &Device::Cpu)?;
    let adapter = dir.join("adapter.safetensors");
    built
        .params
        .save(&adapter)
        .map_err(|e| ModelError::format(&adapter, e))
}
