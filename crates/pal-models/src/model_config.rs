//! The model config file (TOML): which LLM, which encoders, each encoder's route and options.
//! It is saved next to every checkpoint so that a run can be rebuilt exactly.
//!
//! ```toml
//! seed = 0            # initialisation of the adapter parameters
//! frozen_ffn = false  # never train FFN weights, even when the LLM is tuned
//!
//! [llm]
//! path = "asset:smollm2-135m-instruct"   # a .gguf file, an HF folder, or a fetched asset
//!
//! [[encoders]]
//! name = "whisper"
//! kind = "whisper"                       # whisper | ast
//! path = "asset:whisper-tiny.en"
//! layer = "last"                         # "last", { index = 3 }, { mean = [2, 4] }
//! real_length = true
//! route = "pal"                          # plits | lal | pal
//! connector = { type = "mlp", stack = 2 }          # plits
//! summary = { type = "latent", queries = 32, layers = 1 }   # pal
//! lal = { start = 0, projector = "linear", audio_norm = "layer_input_norm", rope = "prefix" }
//! ```

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use pal_nn::Params;
use serde::{Deserialize, Serialize};

use crate::assets;
use crate::ast::{Ast, AstEncoder};
use crate::audio_llm::{default_summary, Attachment, AudioLlm, LalConfig, Route};
use crate::connector::ConnectorConfig;
use crate::encoder::{AudioEncoder, LayerSelection, WhisperAudioEncoder, WindowPolicy};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use crate::whisper::Whisper;

/// The whole model config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Seed of the adapter's initial weights.
    #[serde(default)]
    pub seed: u64,
    /// FFN weights are never trained (the paper's frozen-FFN ablation).
    #[serde(default)]
    pub frozen_ffn: bool,
    /// The backbone.
    pub llm: LlmSpec,
    /// Encoders, in order.
    pub encoders: Vec<EncoderSpec>,
}

/// Where the LLM comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    /// `.gguf`, HF folder, or `asset:NAME`.
    pub path: String,
}

/// Encoder families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// Whisper encoder (HF or CTranslate2 folder).
    Whisper,
    /// AST-family ViT on Kaldi fbank (HF folder).
    Ast,
}

/// One encoder and how it is attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSpec {
    /// Name; prefix of its adapter parameters.
    pub name: String,
    /// Family.
    pub kind: EncoderKind,
    /// Folder or `asset:NAME`.
    pub path: String,
    /// Hidden state to use.
    #[serde(default)]
    pub layer: LayerSelection,
    /// Encode the real clip length instead of padding to the encoder's window.
    #[serde(default = "yes")]
    pub real_length: bool,
    /// Most encoder windows per clip.
    #[serde(default = "four")]
    pub max_windows: usize,
    /// Route into the LLM.
    pub route: Route,
    /// PLITS connector.
    #[serde(default)]
    pub connector: ConnectorConfig,
    /// PAL summary connector.
    #[serde(default = "default_summary")]
    pub summary: ConnectorConfig,
    /// LAL options.
    #[serde(default)]
    pub lal: LalConfig,
}

fn yes() -> bool {
    true
}
fn four() -> usize {
    4
}

impl ModelConfig {
    /// Reads a config file; errors name the file and the offending field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound(path.to_path_buf()),
            _ => ModelError::io(path, e),
        })?;
        toml::from_str(&text).map_err(|e| ModelError::format(path, e))
    }

    /// The same config with relative paths made absolute against `base` (asset names stay), so
    /// that a copy saved elsewhere (a run folder) still finds its models.
    pub fn with_absolute_paths(&self, base: &Path) -> Self {
        let fix = |p: &str| -> String {
            if p.starts_with("asset:") || Path::new(p).is_absolute() {
                p.to_string()
            } else {
                let joined = base.join(p);
                joined
                    .canonicalize()
                    .unwrap_or(joined)
                    .display()
                    .to_string()
            }
        };
        let mut out = self.clone();
        out.llm.path = fix(&self.llm.path);
        for e in &mut out.encoders {
            e.path = fix(&e.path);
        }
        out
    }

    /// Writes the config (atomically: temp file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| ModelError::format(path, e))?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    }
}

/// Resolves `asset:NAME` to the fetched asset and relative paths against `base`.
pub fn resolve_path(spec: &str, base: &Path) -> Result<PathBuf> {
    if let Some(name) = spec.strip_prefix("asset:") {
        let asset = assets::ALL
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
}

/// Loads everything a config names (paths relative to `base`) and creates the adapter parameters.
pub fn build(
    config: &ModelConfig,
    base: &Path,
    dtype: DType,
    device: &Device,
) -> Result<BuiltModel> {
    let llm_path = resolve_path(&config.llm.path, base)?;
    let (llm, tokenizer) = crate::load_llm(&llm_path, dtype, device)?;
    let mut encoders: Vec<Box<dyn AudioEncoder>> = vec![];
    let mut attachments = vec![];
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
                e.windows = WindowPolicy {
                    max_windows: spec.max_windows,
                };
                Box::new(e)
            }
            EncoderKind::Ast => {
                let mut e = AstEncoder::new(Ast::from_folder(&path, dtype, device)?, id);
                e.layer = spec.layer;
                e.real_length = spec.real_length;
                e.windows = WindowPolicy {
                    max_windows: spec.max_windows,
                };
                Box::new(e)
            }
        };
        attachments.push(Attachment {
            name: spec.name.clone(),
            d_enc: encoder.dim(),
            route: spec.route,
            connector: spec.connector.clone(),
            summary: spec.summary.clone(),
            lal: spec.lal.clone(),
        });
        encoders.push(encoder);
    }
    let params = Params::new(config.seed, dtype, device);
    let model = AudioLlm::new(llm, &attachments, &params)?;
    Ok(BuiltModel {
        model,
        encoders,
        tokenizer,
        params,
    })
}

/// Loads a run folder (`model.toml` + `adapter.safetensors`, as `pal train` writes them): the
/// model with its trained adapter.
pub fn load_run(dir: &Path, dtype: DType, device: &Device) -> Result<BuiltModel> {
    let config = ModelConfig::load(&dir.join("model.toml"))?;
    let built = build(&config, dir, dtype, device)?;
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
