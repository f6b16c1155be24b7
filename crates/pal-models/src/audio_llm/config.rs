//! The model config file (TOML): which LLM, which encoders, each encoder's route and options,
//! and the attachment types it builds. It is saved next to every checkpoint so that a run can be
//! rebuilt exactly. Every table refuses keys it does not know.
//!
//! ```toml
//! seed = 0            # initialisation of the adapter parameters
//! frozen_ffn = false  # never train FFN weights, even when the LLM is tuned
//! max_clips = 1       # audio clips one request may hold (each at its own place in the prompt)
//! max_audio_seconds = 3600   # longest clip (default: each encoder's max_windows windows)
//! max_audio_mib = 2048       # most memory one clip's audio may hold (default: no limit)
//!
//! [llm]
//! path = "asset:smollm2-135m-instruct"   # a .gguf file, an HF folder, or a fetched asset
//!
//! [[encoders]]
//! name = "whisper"
//! kind = "whisper"                       # whisper | ast | shards (an external encoder's shard set)
//! path = "asset:whisper-tiny.en"
//! layer = "last"                         # "last", { index = 3 }, { mean = [2, 4] }
//! real_length = true
//! route = "pal"                          # plits | lal | pal
//! connector = { type = "mlp", stack = 2 }          # plits
//! summary = { type = "latent", queries = 32, layers = 1 }   # pal
//! lal = { start = 0, projector = "linear", audio_norm = "layer_input_norm", rope = "prefix" }
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::encoders::selection::LayerSelection;
use crate::encoders::windows::WindowPolicy;
use crate::error::{ModelError, Result};

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
    /// Most audio clips one example or request may hold; each clip goes through every encoder
    /// and takes its own place in the prompt (a server refuses requests with more).
    #[serde(default = "one")]
    pub max_clips: usize,
    /// Longest clip, seconds. Unset, each encoder takes `max_windows` windows (4 x 30 s for
    /// Whisper); set, it replaces them: a clip of any length up to it is encoded window by
    /// window, and LAL keeps its keys and values, never its samples (PLITS still refuses a clip
    /// whose tokens pass the LLM's context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_audio_seconds: Option<f64>,
    /// Most memory one clip's audio may hold, MiB: its encoder outputs and LAL keys and values,
    /// estimated from its length before any of it is encoded
    /// ([`crate::audio_llm::limits::audio_bytes`]). Unset: no limit beyond the length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_audio_mib: Option<f64>,
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
    /// An external encoder known by a feature shard set (`path`): its id and width come from
    /// the set's index; training and evaluation read its features from shards.
    Shards,
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
    #[serde(default = "default_max_windows")]
    pub max_windows: usize,
    /// Output frames averaged together (1: none): 2 or 4 halve or quarter the audio keys and
    /// values LAL keeps and the tokens PLITS adds (see [`crate::encoders::pooled`]).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub pool: usize,
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
fn is_one(n: &usize) -> bool {
    *n == 1
}
fn default_max_windows() -> usize {
    WindowPolicy::default().max_windows
}

impl ModelConfig {
    /// The clip limits `max_audio_seconds` and `max_audio_mib` make; refuses limits that are
    /// not positive numbers.
    pub fn audio_limits(&self) -> Result<crate::audio_llm::limits::AudioLimits> {
        let positive = |name: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(ModelError::Unsupported(format!(
                "{name} = {x} in the model config: give a positive number"
            ))),
            _ => Ok(v),
        };
        let seconds = positive("max_audio_seconds", self.max_audio_seconds)?;
        let mib = positive("max_audio_mib", self.max_audio_mib)?;
        Ok(crate::audio_llm::limits::AudioLimits {
            max_seconds: seconds,
            max_bytes: mib.map(|m| (m * (1 << 20) as f64) as usize),
        })
    }

    /// Reads a config file; errors name the file and the offending field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound(path.to_path_buf()),
            _ => ModelError::io(path, e),
        })?;
        crate::formats::config_toml::parse(&text).map_err(|e| ModelError::format(path, e))
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

/// How an encoder's tokens reach the LLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Tokens in the input sequence.
    Plits,
    /// Keys/values at selected layers only.
    Lal,
    /// Summary tokens in the sequence plus the full sequence through LAL.
    Pal,
}

/// Projector of LAL: encoder tokens to the LLM width, one per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LalProjector {
    /// `Linear(d_enc, d)`.
    #[default]
    Linear,
    /// Linear-GELU-Linear.
    Mlp,
}

/// Norm applied to projected audio before the layer's key/value projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LalAudioNorm {
    /// The layer's own (frozen) input RMSNorm, as text gets.
    #[default]
    LayerInputNorm,
    /// A trainable LayerNorm per layer.
    Own,
}

/// RoPE of the audio keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LalRope {
    /// Audio keys at positions `0..Na`, text from `Na` on.
    #[default]
    Prefix,
    /// No rotation of audio keys; text positions as without audio.
    None,
}

/// LAL options of one encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LalConfig {
    /// Layers that receive audio keys/values; default all (from `start`).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// With `layers` unset: first layer that receives audio ("delayed integration").
    #[serde(default)]
    pub start: usize,
    /// Projector kind.
    #[serde(default)]
    pub projector: LalProjector,
    /// Norm of projected audio.
    #[serde(default)]
    pub audio_norm: LalAudioNorm,
    /// RoPE of audio keys.
    #[serde(default)]
    pub rope: LalRope,
    /// Gated LAL: the audio keys get a softmax of their own, apart from the text's, and each
    /// layer's audio values a learned gate per key/value head, `tanh(g)` with `g` starting at 0
    /// (LLaMA-Adapter's zero-init attention). The untrained model is the LLM itself, and audio
    /// can never take attention away from the text, however long or unfamiliar the clip.
    #[serde(default)]
    pub gate: bool,
    /// With `gate`: the gate is `tanh(gate_scale * g)`. Under Adam a parameter moves by about the
    /// learning rate per step whatever its gradient's size, so a scale of 10 lets the gate open
    /// about 10 times faster than the projectors learn.
    #[serde(default = "unit_scale")]
    pub gate_scale: f64,
}

impl Default for LalConfig {
    fn default() -> Self {
        Self {
            layers: None,
            start: 0,
            projector: LalProjector::default(),
            audio_norm: LalAudioNorm::default(),
            rope: LalRope::default(),
            gate: false,
            gate_scale: unit_scale(),
        }
    }
}

fn unit_scale() -> f64 {
    1.0
}

impl LalConfig {
    /// The LAL layers for a model with `num_layers` layers, checked.
    pub fn resolve_layers(&self, num_layers: usize) -> Result<Vec<usize>> {
        let layers: Vec<usize> = match &self.layers {
            Some(l) => l.clone(),
            None => (self.start..num_layers).collect(),
        };
        if let Some(bad) = layers.iter().find(|&&l| l >= num_layers) {
            return Err(ModelError::Unsupported(format!(
                "lal layer {bad} does not exist (the LLM has {num_layers} layers)"
            )));
        }
        let mut sorted = layers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        Ok(sorted)
    }
}

/// How one encoder is attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Name (prefix of its parameters, e.g. `whisper`).
    pub name: String,
    /// Width of the encoder's tokens.
    pub d_enc: usize,
    /// Route.
    pub route: Route,
    /// Connector for `plits`.
    #[serde(default)]
    pub connector: ConnectorConfig,
    /// Summary connector for `pal` (latent queries, 32 by default).
    #[serde(default = "default_summary")]
    pub summary: ConnectorConfig,
    /// LAL options for `lal` and `pal`.
    #[serde(default)]
    pub lal: LalConfig,
}

/// PAL's default summary connector: 32 latent queries, one cross-attention layer.
pub fn default_summary() -> ConnectorConfig {
    ConnectorConfig::Latent {
        queries: DEFAULT_SUMMARY_QUERIES,
        layers: 1,
    }
}

impl Attachment {
    /// An attachment with default options for `route`.
    pub fn new(name: &str, d_enc: usize, route: Route) -> Self {
        Self {
            name: name.into(),
            d_enc,
            route,
            connector: ConnectorConfig::default(),
            summary: default_summary(),
            lal: LalConfig::default(),
        }
    }
}

/// Which connector turns encoder tokens into LLM input tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConnectorConfig {
    /// `k` consecutive frames concatenated, then Linear-GELU-Linear (`Na / k` tokens).
    Mlp {
        /// Frames stacked per token.
        #[serde(default = "one")]
        stack: usize,
    },
    /// `queries` learned queries cross-attend over the frames (`layers` layers), then an MLP.
    Latent {
        /// Number of output tokens `S`.
        #[serde(default = "default_queries")]
        queries: usize,
        /// Cross-attention layers (1 or 2).
        #[serde(default = "one")]
        layers: usize,
    },
}

/// Latent queries of a latent connector when not given, and of PAL's default summary.
pub const DEFAULT_SUMMARY_QUERIES: usize = 32;

fn one() -> usize {
    1
}
fn default_queries() -> usize {
    DEFAULT_SUMMARY_QUERIES
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self::Mlp { stack: 1 }
    }
}
