//! A ViT audio encoder on Kaldi fbank patches: the AST / EAT / SSLAM family (16x16 patches, CLS
//! token, 12 layers at base size). Loads Hugging Face AST folders (`ASTModel` or
//! `ASTForAudioClassification`, with or without the `audio_spectrogram_transformer.` prefix).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pal_audio::{KaldiFbank, WindowType};
use serde::Deserialize;

use crate::encoders::audio_encoder::AudioEncoder;
use crate::encoders::blocks::{GeluFfn, LayerNorm, MultiHeadAttention};
use crate::encoders::selection::LayerSelection;
use crate::encoders::windows::WindowPolicy;
use crate::error::{ModelError, Result};
use crate::formats::weights::{load_linear, Weights};

/// The AST config (Hugging Face `ASTConfig` fields).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AstConfig {
    /// Width.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Patch side (16).
    pub patch_size: usize,
    /// Patch stride along frequency.
    pub frequency_stride: usize,
    /// Patch stride along time.
    pub time_stride: usize,
    /// Input frames the position table covers (1024 = 10.24 s).
    pub max_length: usize,
    /// Fbank bins (128).
    pub num_mel_bins: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_eps() -> f64 {
    1e-12
}

impl AstConfig {
    /// Patches along frequency.
    pub fn freq_patches(&self) -> usize {
        (self.num_mel_bins - self.patch_size) / self.frequency_stride + 1
    }

    /// Patches along time for `frames` input frames.
    pub fn time_patches(&self, frames: usize) -> usize {
        (frames - self.patch_size) / self.time_stride + 1
    }
}

/// One pre-norm ViT layer.
#[derive(Clone, Debug)]
pub struct AstLayer {
    /// Norm before attention.
    pub layernorm_before: LayerNorm,
    /// Self-attention.
    pub attention: MultiHeadAttention,
    /// Norm before the FFN.
    pub layernorm_after: LayerNorm,
    /// FFN (`intermediate.dense`, `output.dense`).
    pub ffn: GeluFfn,
}

/// The AST model.
#[derive(Clone, Debug)]
pub struct Ast {
    /// Shape.
    pub config: AstConfig,
    /// `(1, 1, d)`.
    pub cls_token: Tensor,
    /// `(1, 1, d)`.
    pub distillation_token: Tensor,
    /// `(1, 2 + freq_patches * time_patches(max_length), d)`.
    pub position_embeddings: Tensor,
    /// Patch projection `(d, 1, p, p)` and bias.
    pub patch_projection: (Tensor, Tensor),
    /// Layers.
    pub layers: Vec<AstLayer>,
    /// Final norm.
    pub layernorm: LayerNorm,
}

impl Ast {
    /// Loads an AST model from Hugging Face-named weights.
    pub fn load(config: AstConfig, weights: &Weights) -> Result<Self> {
        let c = &config;
        if c.frequency_stride != c.time_stride {
            return Err(ModelError::Unsupported(
                "AST with different frequency and time strides is not supported".into(),
            ));
        }
        let prefix = if weights.contains("audio_spectrogram_transformer.embeddings.cls_token") {
            "audio_spectrogram_transformer."
        } else {
            ""
        };
        let d = c.hidden_size;
        let eps = c.layer_norm_eps;
        let n_pos = 2 + c.freq_patches() * c.time_patches(c.max_length);
        let e = format!("{prefix}embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = format!("{prefix}encoder.layer.{i}");
                Ok(AstLayer {
                    layernorm_before: LayerNorm::load(
                        weights,
                        &format!("{l}.layernorm_before"),
                        d,
                        eps,
                    )?,
                    attention: MultiHeadAttention {
                        q: load_linear(
                            weights,
                            &format!("{l}.attention.attention.query"),
                            d,
                            d,
                            true,
                        )?,
                        k: load_linear(
                            weights,
                            &format!("{l}.attention.attention.key"),
                            d,
                            d,
                            true,
                        )?,
                        v: load_linear(
                            weights,
                            &format!("{l}.attention.attention.value"),
                            d,
                            d,
                            true,
                        )?,
                        o: load_linear(
                            weights,
                            &format!("{l}.attention.output.dense"),
                            d,
                            d,
                            true,
                        )?,
                        heads: c.num_attention_heads,
                    },
                    layernorm_after: LayerNorm::load(
                        weights,
                        &format!("{l}.layernorm_after"),
                        d,
                        eps,
                    )?,
                    ffn: GeluFfn {
                        fc1: load_linear(
                            weights,
                            &format!("{l}.intermediate.dense"),
                            c.intermediate_size,
                            d,
                            true,
                        )?,
                        fc2: load_linear(
                            weights,
                            &format!("{l}.output.dense"),
                            d,
                            c.intermediate_size,
                            true,
                        )?,
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cls_token: weights.get(&format!("{e}.cls_token"), &[1, 1, d])?,
            distillation_token: weights.get(&format!("{e}.distillation_token"), &[1, 1, d])?,
            position_embeddings: weights
                .get(&format!("{e}.position_embeddings"), &[1, n_pos, d])?,
            patch_projection: (
                weights.get(
                    &format!("{e}.patch_embeddings.projection.weight"),
                    &[d, 1, c.patch_size, c.patch_size],
                )?,
                weights.get(&format!("{e}.patch_embeddings.projection.bias"), &[d])?,
            ),
            layers,
            layernorm: LayerNorm::load(weights, &format!("{prefix}layernorm"), d, eps)?,
            config,
        })
    }

    /// Loads a Hugging Face AST folder.
    pub fn from_folder(folder: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let path = folder.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound(path.clone()),
            _ => ModelError::io(&path, e),
        })?;
        let config: AstConfig = serde_json::from_str(&text)
            .map_err(|e| ModelError::format(&path, format!("not an AST config: {e}")))?;
        let weights = Weights::from_hf_folder(folder, dtype, device)?;
        Self::load(config, &weights)
    }

    /// Encodes normalised fbank features `(batch, frames, bins)` into
    /// `(batch, 2 + patches, d)`. `frames` may be shorter than `max_length` (the position table is
    /// sliced along time).
    pub fn forward(&self, fbank: &Tensor, layer: LayerSelection) -> Result<Tensor> {
        let c = &self.config;
        let (b, frames, bins) = fbank.dims3()?;
        if bins != c.num_mel_bins || frames < c.patch_size || frames > c.max_length {
            return Err(ModelError::Unsupported(format!(
                "AST takes {}..={} frames of {} bins, got {frames} x {bins}",
                c.patch_size, c.max_length, c.num_mel_bins
            )));
        }
        let d = c.hidden_size;
        let x = fbank.unsqueeze(1)?.transpose(2, 3)?.contiguous()?;
        let x = x.conv2d(&self.patch_projection.0, 0, c.time_stride, 1, 1)?;
        let x = x.broadcast_add(&self.patch_projection.1.reshape((1, d, 1, 1))?)?;
        let (fp, tp) = (x.dims()[2], x.dims()[3]);
        let x = x.flatten_from(2)?.transpose(1, 2)?;
        let pos = self
            .position_embeddings
            .narrow(1, 2, self.position_embeddings.dims()[1] - 2)?;
        let pos = pos
            .reshape((1, fp, c.time_patches(c.max_length), d))?
            .narrow(2, 0, tp)?
            .reshape((1, fp * tp, d))?;
        let special = Tensor::cat(&[&self.cls_token, &self.distillation_token], 1)?;
        let pos = Tensor::cat(&[&self.position_embeddings.narrow(1, 0, 2)?, &pos], 1)?;
        let mut x =
            Tensor::cat(&[&special.broadcast_as((b, 2, d))?, &x], 1)?.broadcast_add(&pos)?;
        let total = self.layers.len();
        layer.validate(total)?;
        let mut states = vec![];
        let wants = |i: usize| layer != LayerSelection::Last && layer.wants(i, total);
        if wants(0) {
            states.push(x.clone());
        }
        for (i, l) in self
            .layers
            .iter()
            .enumerate()
            .take(layer.layers_needed(total))
        {
            let h = l
                .attention
                .forward(&l.layernorm_before.forward(&x)?, None)?;
            let h = (&x + h)?;
            x = (&h + l.ffn.forward(&l.layernorm_after.forward(&h)?)?)?;
            if wants(i + 1) {
                states.push(x.clone());
            }
        }
        if layer == LayerSelection::Last {
            return self.layernorm.forward(&x);
        }
        layer.combine(states)
    }
}

/// AST as an [`AudioEncoder`]: Kaldi fbank (128 bins, Hanning window), normalised as AST
/// training did (`(x - mean) / (2 std)`), one window of `max_length` frames at a time.
pub struct AstEncoder {
    model: Ast,
    fbank: KaldiFbank,
    /// Fbank mean used for normalisation (AudioSet: -4.2677393).
    pub mean: f32,
    /// Fbank std used for normalisation (AudioSet: 4.5689974).
    pub std: f32,
    /// Which hidden state to return.
    pub layer: LayerSelection,
    /// Encode the clip's real length instead of padding each window to `max_length` frames.
    pub real_length: bool,
    /// Long-clip policy.
    pub windows: WindowPolicy,
    /// Identity of the weights.
    pub model_id: String,
}

impl AstEncoder {
    /// Wraps a loaded model with AudioSet normalisation.
    pub fn new(model: Ast, model_id: String) -> Self {
        let fbank = KaldiFbank::new(model.config.num_mel_bins, 16_000, WindowType::Hanning);
        Self {
            model,
            fbank,
            mean: -4.267_739_3,
            std: 4.568_997_4,
            layer: LayerSelection::Last,
            real_length: false,
            windows: WindowPolicy::default(),
            model_id,
        }
    }
}

impl AudioEncoder for AstEncoder {
    fn id(&self) -> String {
        format!(
            "ast:{}:{:?}:real_length={}:{}:{}",
            self.model_id, self.layer, self.real_length, self.mean, self.std
        )
    }

    fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    fn window_samples(&self) -> Option<usize> {
        // max_length frames of 10 ms, plus the 25 ms frame's tail.
        Some((self.model.config.max_length - 1) * 160 + 400)
    }

    fn max_samples(&self) -> Option<usize> {
        Some(self.window_samples()? * self.windows.max_windows)
    }

    fn encode(&self, samples: &[f32]) -> Result<Tensor> {
        let c = &self.model.config;
        let window = self.window_samples().expect("AST has a window");
        let device = self.model.cls_token.device();
        let dtype = self.model.cls_token.dtype();
        let mut outputs = vec![];
        for chunk in self.windows.split(samples, window)? {
            let (mut feats, mut frames) = self.fbank.compute(chunk);
            let target = if self.real_length {
                frames.max(c.patch_size)
            } else {
                c.max_length
            };
            feats.resize(target * c.num_mel_bins, 0.0);
            frames = target;
            let feats: Vec<f32> = feats
                .iter()
                .map(|x| (x - self.mean) / (2.0 * self.std))
                .collect();
            let x =
                Tensor::from_vec(feats, (1, frames, c.num_mel_bins), device)?.to_dtype(dtype)?;
            outputs.push(self.model.forward(&x, self.layer)?.squeeze(0)?);
        }
        Ok(Tensor::cat(&outputs, 0)?)
    }
}
