//! The shape and options of a Llama-family model (Llama 3.x, SmolLM2, Qwen2/2.5, Qwen3, and
//! Gemma 3 from GGUF), read from a Hugging Face `config.json` or from GGUF metadata, and the RoPE
//! frequencies they imply.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::formats::gguf::GgufFile;

/// Rope frequency scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1+ scaling: long wavelengths divided by `factor`, smooth in between.
    Llama3 {
        /// Frequency divisor for long wavelengths.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are fully scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context length the model was trained at before scaling.
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor`.
    Linear {
        /// Position divisor.
        factor: f64,
    },
    /// One divisor per frequency (llama.cpp's `rope_freqs.weight`, how GGUF stores llama3 scaling).
    Factors {
        /// Divisor of each inverse frequency.
        factors: Vec<f64>,
    },
}

/// The FFN's gate activation: `down(act(gate) * up)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU (SwiGLU: Llama, Qwen).
    #[default]
    Silu,
    /// GELU with the tanh approximation (GeGLU: Gemma).
    GeluTanh,
}

/// Layers that attend over a sliding window of recent positions, interleaved with global ones
/// (Gemma 3: five local layers, then one global).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlidingWindow {
    /// A query at position `p` sees keys at positions `p - window + 1 ..= p` in a local layer.
    pub window: usize,
    /// Every `global_every`-th layer (indices `global_every - 1`, `2 * global_every - 1`, ...)
    /// is global; the others are local.
    pub global_every: usize,
    /// RoPE base of the local layers (the global ones use `rope_theta`).
    pub rope_theta: f64,
}

impl SlidingWindow {
    /// Whether layer `index` attends over the window only.
    pub fn is_local(&self, index: usize) -> bool {
        self.global_every == 0 || !(index + 1).is_multiple_of(self.global_every)
    }
}

/// The shape and options of a Llama-family model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Family name as in config.json (`llama`, `qwen2`, `qwen3`).
    pub model_type: String,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual width `d`.
    pub hidden_size: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Longest context the model was trained for (size of the RoPE table).
    pub max_position_embeddings: usize,
    /// Output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have a bias (Qwen2).
    pub attention_bias: bool,
    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// The FFN's gate activation.
    #[serde(default)]
    pub hidden_act: Activation,
    /// RMSNorm on the attention block's and the FFN's outputs before each residual add, beside
    /// the usual pre-norms (Gemma 2/3).
    #[serde(default)]
    pub sandwich_norms: bool,
    /// Token embeddings are multiplied by this as they are looked up (Gemma: `sqrt(d)`); inputs
    /// given as embeddings (PLITS's audio rows) are not.
    #[serde(default)]
    pub embedding_scale: Option<f64>,
    /// Local (sliding-window) layers, if any.
    #[serde(default)]
    pub sliding_window: Option<SlidingWindow>,
}

/// config.json as written by transformers 4.x and 5.x (fields we read).
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    // Gemma 3 (`gemma3_text`).
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    rope_local_base_freq: Option<f64>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    use_bidirectional_attention: Option<bool>,
}

impl LlamaConfig {
    /// `(query heads, key/value heads)` when this model's GGUF file stores its q/k projections
    /// with llama.cpp's rotary permutation (the `llama` architecture), which loading undoes.
    pub fn gguf_rotary_heads(&self) -> Option<(usize, usize)> {
        (self.model_type == "llama").then_some((self.num_attention_heads, self.num_key_value_heads))
    }

    /// Reads `config.json` from a Hugging Face model folder.
    pub fn from_hf_folder(folder: &Path) -> Result<Self> {
        let path = folder.join("config.json");
        if !path.exists() {
            return Err(ModelError::NotFound(path));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        Self::from_hf_json(&text).map_err(|e| match e {
            ModelError::Unsupported(m) => ModelError::format(&path, m),
            other => other,
        })
    }

    /// Parses the text of a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Unsupported(format!("invalid config.json: {e}")))?;
        let model_type = raw.model_type.clone().unwrap_or_else(|| "llama".into());
        let gemma = model_type == "gemma3_text";
        let (attention_bias, qk_norm) = match model_type.as_str() {
            "llama" | "mistral" => (raw.attention_bias.unwrap_or(false), false),
            "qwen2" => (true, false),
            "qwen3" => (raw.attention_bias.unwrap_or(false), true),
            "gemma3_text" => (raw.attention_bias.unwrap_or(false), true),
            "gemma3" => {
                return Err(ModelError::Unsupported(
                    "Gemma 3's image-text checkpoints (model_type 'gemma3': 4B and up) are not supported; its text-only ones (model_type 'gemma3_text': 270M, 1B) are".into(),
                ))
            }
            other => {
                return Err(ModelError::Unsupported(format!(
                    "model_type '{other}' is not supported (llama, mistral, qwen2, qwen3, gemma3_text are)"
                )))
            }
        };
        let activation = raw
            .hidden_activation
            .as_deref()
            .or(raw.hidden_act.as_deref());
        let hidden_act = match (gemma, activation) {
            (false, None | Some("silu")) => Activation::Silu,
            (true, None | Some("gelu_pytorch_tanh")) => Activation::GeluTanh,
            (_, Some(other)) => {
                return Err(ModelError::Unsupported(format!(
                    "hidden activation '{other}' (silu; gelu_pytorch_tanh for Gemma 3)"
                )))
            }
        };
        // transformers 5 writes `rope_parameters` (with rope_theta inside), 4.x `rope_scaling`;
        // for Gemma 3, 5 writes one per layer type (`full_attention`, `sliding_attention`).
        let rope = raw.rope_parameters.clone().or(raw.rope_scaling.clone());
        let (rope, local_rope) = match rope {
            Some(r) if r.get("full_attention").is_some() => (
                r.get("full_attention").cloned(),
                r.get("sliding_attention").cloned(),
            ),
            other => (other, None),
        };
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                rope.as_ref()
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10000.0);
        let rope_scaling = match rope {
            Some(r) => parse_rope_scaling(&r)?,
            None => None,
        };
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        let sliding_window = match gemma {
            true => Some(gemma_layers(&raw, head_dim, local_rope.as_ref())?),
            false => None,
        };
        Ok(Self {
            model_type: match gemma {
                // As its GGUF names it: one name for the family, whatever file it came from.
                true => "gemma3".into(),
                false => model_type,
            },
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(gemma),
            attention_bias,
            qk_norm,
            hidden_act,
            sandwich_norms: gemma,
            embedding_scale: gemma.then(|| (raw.hidden_size as f64).sqrt()),
            sliding_window,
        })
    }

    /// What a Hugging Face checkpoint's RMSNorm weights lack, added as they load: Gemma stores
    /// `w` of its `x_normed * (1 + w)` (its GGUF converter adds the one; other families store the
    /// scale itself).
    pub fn hf_norm_shift(&self) -> f64 {
        match self.model_type.as_str() {
            "gemma3" => 1.0,
            _ => 0.0,
        }
    }

    /// The config from a GGUF file's `{arch}.*` metadata keys (llama, qwen2, qwen3 or gemma3).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.architecture()?;
        let (attention_bias, qk_norm) = match arch.as_str() {
            "llama" => (false, false),
            "qwen2" => (true, false),
            "qwen3" | "gemma3" => (false, true),
            other => {
                return Err(ModelError::format(
                    file.path(),
                    format!(
                        "architecture '{other}' is not supported (llama, qwen2, qwen3, gemma3 are)"
                    ),
                ))
            }
        };
        let gemma = arch == "gemma3";
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = file.usize_of(&key("embedding_length"))?;
        let heads = file.usize_of(&key("attention.head_count"))?;
        let vocab_size = match file.usize_of(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => file.strings_of("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = if file.has_tensor("rope_freqs.weight") {
            let factors = file.dequantize("rope_freqs.weight", &Device::Cpu)?;
            Some(RopeScaling::Factors {
                factors: factors.to_dtype(DType::F64)?.to_vec1::<f64>()?,
            })
        } else {
            match file.string_of(&key("rope.scaling.type")).ok().as_deref() {
                None | Some("none") => None,
                Some("linear") => Some(RopeScaling::Linear {
                    factor: file.f64_of(&key("rope.scaling.factor"))?,
                }),
                Some(other) => {
                    return Err(ModelError::format(
                        file.path(),
                        format!("rope scaling '{other}' is not supported (linear is)"),
                    ))
                }
            }
        };
        let layers = file.usize_of(&key("block_count"))?;
        if gemma && layers == 62 {
            // Gemma 3 27B scales attention by 1/sqrt(d / heads), not 1/sqrt(head_dim).
            return Err(ModelError::format(
                file.path(),
                "Gemma 3 27B is not supported (its attention scale differs); 270M to 12B are",
            ));
        }
        Ok(Self {
            model_type: arch.clone(),
            vocab_size,
            hidden_size,
            intermediate_size: file.usize_of(&key("feed_forward_length"))?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: file
                .usize_of(&key("attention.head_count_kv"))
                .unwrap_or(heads),
            head_dim: file
                .usize_of(&key("attention.key_length"))
                .unwrap_or(hidden_size / heads),
            rms_norm_eps: file.f64_of(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: file.f64_of(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: file.usize_of(&key("context_length")).unwrap_or(4096),
            tie_word_embeddings: !file.has_tensor("output.weight"),
            attention_bias,
            qk_norm,
            hidden_act: match gemma {
                true => Activation::GeluTanh,
                false => Activation::Silu,
            },
            sandwich_norms: gemma,
            embedding_scale: gemma.then(|| (hidden_size as f64).sqrt()),
            // Gemma 3's GGUF stores the window but not the layer pattern or the local RoPE base:
            // five local layers per global one, base 10,000 (as llama.cpp and transformers read it).
            sliding_window: match gemma {
                true => Some(SlidingWindow {
                    window: file.usize_of(&key("attention.sliding_window"))?,
                    global_every: 6,
                    rope_theta: 10_000.0,
                }),
                false => None,
            },
        })
    }

    /// Inverse RoPE frequencies of the local (sliding-window) layers, where the model has them:
    /// their own base, unscaled.
    pub fn local_rope_inv_freq(&self) -> Option<Vec<f64>> {
        let window = self.sliding_window.as_ref()?;
        let local = Self {
            rope_theta: window.rope_theta,
            rope_scaling: None,
            ..self.clone()
        };
        Some(local.rope_inv_freq())
    }

    /// Inverse RoPE frequencies (`head_dim / 2` of them), with scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Factors { factors }) => {
                base.iter().zip(factors).map(|(f, s)| f / s).collect()
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Gemma 3's local and global layers from its `config.json`: a window, its pattern (one global
/// layer after every five local ones, from `layer_types` or `sliding_window_pattern`) and the
/// local layers' RoPE base; refused where the model needs what pal does not compute (an
/// attention scale other than `1/sqrt(head_dim)`, logit soft-capping, bidirectional attention)
/// or where the layers follow another pattern.
fn gemma_layers(
    raw: &HfConfig,
    head_dim: usize,
    local_rope: Option<&serde_json::Value>,
) -> Result<SlidingWindow> {
    let unsupported = |m: String| Err(ModelError::Unsupported(m));
    if let Some(scalar) = raw.query_pre_attn_scalar {
        if scalar != head_dim as f64 {
            return unsupported(format!(
                "query_pre_attn_scalar {scalar} (pal scales attention by 1/sqrt(head_dim), head_dim {head_dim})"
            ));
        }
    }
    for (name, value) in [
        ("final_logit_softcapping", raw.final_logit_softcapping),
        ("attn_logit_softcapping", raw.attn_logit_softcapping),
    ] {
        if let Some(v) = value {
            return unsupported(format!("{name} {v} (pal does not soft-cap logits)"));
        }
    }
    if raw.use_bidirectional_attention == Some(true) {
        return unsupported(
            "use_bidirectional_attention (an embedding model: pal's decoder is causal)".into(),
        );
    }
    let Some(window) = raw.sliding_window else {
        return unsupported("Gemma 3's config.json has no 'sliding_window'".into());
    };
    let rope_theta = raw
        .rope_local_base_freq
        .or_else(|| local_rope?.get("rope_theta")?.as_f64())
        .unwrap_or(10_000.0);
    let Some(types) = &raw.layer_types else {
        return Ok(SlidingWindow {
            window,
            global_every: raw.sliding_window_pattern.unwrap_or(6),
            rope_theta,
        });
    };
    let layers = SlidingWindow {
        window,
        global_every: types
            .iter()
            .position(|t| t == "full_attention")
            .map_or(0, |i| i + 1),
        rope_theta,
    };
    let follows = types.len() == raw.num_hidden_layers
        && types.iter().enumerate().all(|(i, t)| match t.as_str() {
            "sliding_attention" => layers.is_local(i),
            "full_attention" => !layers.is_local(i),
            _ => false,
        });
    if !follows {
        return unsupported(format!(
            "layer_types {types:?}: pal takes one full_attention layer after every n sliding_attention ones, for each of the {} layers",
            raw.num_hidden_layers
        ));
    }
    Ok(layers)
}

fn parse_rope_scaling(value: &serde_json::Value) -> Result<Option<RopeScaling>> {
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        value
            .get(key)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| ModelError::Unsupported(format!("rope scaling '{kind}' needs '{key}'")))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        other => Err(ModelError::Unsupported(format!(
            "rope scaling type '{other}' is not supported (default, linear, llama3 are)"
        ))),
    }
}
