//! The Llama-family decoder: Llama 3.x (rope scaling "llama3"), SmolLM2 (tied embeddings),
//! Qwen2/Qwen2.5 (q/k/v bias) and Qwen3 (q/k RMSNorm). Weights are named as in Hugging Face
//! checkpoints (`model.layers.N.self_attn.q_proj.weight`, ...).
//!
//! All ops come from `pal-nn`, so the same code runs inference and training: a weight that is a
//! candle `Var` is trained, any other weight is frozen and gets no gradient.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pal_nn::ops::{rms_norm, rope};
use pal_nn::{attention, causal_mask, Linear};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::layers::load_linear;
use crate::weights::Weights;

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
    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
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
}

impl LlamaConfig {
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
        let model_type = raw.model_type.unwrap_or_else(|| "llama".into());
        let (attention_bias, qk_norm) = match model_type.as_str() {
            "llama" | "mistral" => (raw.attention_bias.unwrap_or(false), false),
            "qwen2" => (true, false),
            "qwen3" => (raw.attention_bias.unwrap_or(false), true),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "model_type '{other}' is not supported (llama, mistral, qwen2, qwen3 are)"
                )))
            }
        };
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(ModelError::Unsupported(format!(
                    "hidden_act '{act}' (only silu)"
                )));
            }
        }
        // transformers 5 writes `rope_parameters` (with rope_theta inside), 4.x `rope_scaling`.
        let rope = raw.rope_parameters.or(raw.rope_scaling);
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
        Ok(Self {
            model_type,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias,
            qk_norm,
        })
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

/// Precomputed RoPE cos/sin, `(positions, head_dim / 2)`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTable {
    /// Tables for positions `0..len`.
    pub fn new(config: &LlamaConfig, len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let inv_freq = config.rope_inv_freq();
        let half = inv_freq.len();
        let mut angles = Vec::with_capacity(len * half);
        for p in 0..len {
            angles.extend(inv_freq.iter().map(|f| p as f64 * f));
        }
        let angles = Tensor::from_vec(angles, (len, half), device)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// Number of positions in the table.
    pub fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// cos and sin at `positions` (`(batch, rows)`, u32): each `(batch, rows, head_dim / 2)`.
    pub fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, n) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = self.cos.dims()[1];
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, n, half))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, n, half))?;
        Ok((cos, sin))
    }
}

/// One decoder layer's weights.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// RMSNorm before attention.
    pub input_layernorm: Tensor,
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    /// Per-head query RMSNorm (Qwen3).
    pub q_norm: Option<Tensor>,
    /// Per-head key RMSNorm (Qwen3).
    pub k_norm: Option<Tensor>,
    /// RMSNorm before the FFN.
    pub post_attention_layernorm: Tensor,
    /// SwiGLU gate.
    pub gate_proj: Linear,
    /// SwiGLU up projection.
    pub up_proj: Linear,
    /// SwiGLU down projection.
    pub down_proj: Linear,
}

/// Linear layers of a decoder layer that LoRA can target (Hugging Face names).
pub const LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The FFN's linear layers.
pub const FFN_LINEARS: &[&str] = &["gate_proj", "up_proj", "down_proj"];

impl DecoderLayer {
    /// The linear layer named as in Hugging Face checkpoints (`q_proj`, ..., `down_proj`).
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        Some(match name {
            "q_proj" => &mut self.q_proj,
            "k_proj" => &mut self.k_proj,
            "v_proj" => &mut self.v_proj,
            "o_proj" => &mut self.o_proj,
            "gate_proj" => &mut self.gate_proj,
            "up_proj" => &mut self.up_proj,
            "down_proj" => &mut self.down_proj,
            _ => return None,
        })
    }
}

/// Extra keys/values that precede a layer's own (LAL audio keys): every query sees every valid
/// prefix row, and the prefix never goes through the layer's FFN.
#[derive(Clone, Debug)]
pub struct KeyValuePrefix {
    /// `(batch, kv_heads, rows, head_dim)`, already normed, projected and rotated.
    pub k: Tensor,
    /// `(batch, kv_heads, rows, head_dim)`.
    pub v: Tensor,
    /// `(batch, rows)`, 1 for real rows and 0 for padding.
    pub valid: Tensor,
    /// `(2, batch, kv_heads, rows, head_dim)` when `k` and `v` are the two halves of one tensor
    /// (a LAL prefix in training): a frozen layer then takes this tensor as one input, so its
    /// gradient arrives in one piece instead of as two zero-padded halves.
    pub stacked: Option<Tensor>,
}

/// Keys and values cached for one layer, `(batch, kv_heads, rows, head_dim)`, after an optional
/// fixed prefix.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    /// Fixed prefix (LAL audio keys/values), not part of `k`/`v`.
    pub prefix: Option<KeyValuePrefix>,
    /// Cached keys.
    pub k: Option<Tensor>,
    /// Cached values.
    pub v: Option<Tensor>,
}

/// The KV cache of a whole model, plus which cached rows are real (not padding) and the next
/// position of each batch item.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// One entry per layer.
    pub layers: Vec<LayerCache>,
    /// `(batch, cached_rows)`, 1 for real rows and 0 for padding; `None` before the first step.
    pub key_valid: Option<Tensor>,
    /// Position the next real token of each batch item gets.
    pub next_position: Vec<u32>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            key_valid: None,
            next_position: vec![],
        }
    }

    /// Number of cached rows.
    pub fn len(&self) -> usize {
        self.key_valid.as_ref().map(|t| t.dims()[1]).unwrap_or(0)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the first `rows` cached rows (prefixes stay): a conversation whose latest turn
    /// re-tokenized differently from what was generated rolls back to the common part.
    pub fn truncate(&mut self, rows: usize) -> Result<()> {
        let len = self.len();
        if rows >= len {
            return Ok(());
        }
        let valid = self
            .key_valid
            .as_ref()
            .expect("non-empty cache has validity");
        let dropped: Vec<u32> = valid
            .narrow(1, rows, len - rows)?
            .sum(1)?
            .to_dtype(DType::U32)?
            .to_vec1()?;
        for (next, d) in self.next_position.iter_mut().zip(dropped) {
            *next -= d;
        }
        self.key_valid = Some(valid.narrow(1, 0, rows)?);
        for layer in &mut self.layers {
            layer.k = layer.k.as_ref().map(|k| k.narrow(2, 0, rows)).transpose()?;
            layer.v = layer.v.as_ref().map(|v| v.narrow(2, 0, rows)).transpose()?;
        }
        Ok(())
    }
}

/// A Llama-family decoder.
#[derive(Clone, Debug)]
pub struct Llama {
    /// Shape and options.
    pub config: LlamaConfig,
    /// `(vocab, d)` token embeddings.
    pub embed_tokens: Tensor,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: Tensor,
    /// Output projection (the embedding matrix when tied).
    pub lm_head: Linear,
    /// RoPE tables.
    pub rope: RopeTable,
    /// Rows that went through an FFN since the model was built (instrumentation: LAL's audio must
    /// never reach an FFN).
    pub ffn_rows: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Activation checkpointing: when training with frozen LLM weights, keep only each layer's
    /// inputs and output and recompute the layer in backward (see [`CheckpointedLayer`]).
    pub checkpoint_layers: bool,
    /// Train layers whose weights are all frozen as single graph nodes with a written-out
    /// backward (see [`crate::frozen_layer`]): the same gradients with far less memory traffic.
    /// On by default; off records every op of the layer (the reference the tests compare with).
    pub frozen_layer_nodes: bool,
}

impl Llama {
    /// A model with `config`'s shapes and random weights (normal, std 0.02; norms 1): for
    /// benchmarks at the shapes of models that are not at hand.
    pub fn random(config: LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let c = &config;
        let (d, dh, ff) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q_dim, kv_dim) = (c.num_attention_heads * dh, c.num_key_value_heads * dh);
        let mut shapes: Vec<(String, Vec<usize>)> =
            vec![("model.embed_tokens.weight".into(), vec![c.vocab_size, d])];
        shapes.push(("model.norm.weight".into(), vec![d]));
        if !c.tie_word_embeddings {
            shapes.push(("lm_head.weight".into(), vec![c.vocab_size, d]));
        }
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for (name, shape) in [
                ("input_layernorm", vec![d]),
                ("post_attention_layernorm", vec![d]),
                ("self_attn.q_proj", vec![q_dim, d]),
                ("self_attn.k_proj", vec![kv_dim, d]),
                ("self_attn.v_proj", vec![kv_dim, d]),
                ("self_attn.o_proj", vec![d, q_dim]),
                ("mlp.gate_proj", vec![ff, d]),
                ("mlp.up_proj", vec![ff, d]),
                ("mlp.down_proj", vec![d, ff]),
            ] {
                shapes.push((format!("{p}.{name}.weight"), shape));
            }
            if c.attention_bias {
                for (name, n) in [("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)] {
                    shapes.push((format!("{p}.self_attn.{name}.bias"), vec![n]));
                }
            }
            if c.qk_norm {
                shapes.push((format!("{p}.self_attn.q_norm.weight"), vec![dh]));
                shapes.push((format!("{p}.self_attn.k_norm.weight"), vec![dh]));
            }
        }
        let tensors = shapes
            .into_iter()
            .map(|(name, shape)| {
                let t = if shape.len() == 1 {
                    Tensor::ones(shape, DType::F32, device)?
                } else {
                    Tensor::randn(0f32, 0.02, shape, device)?
                };
                Ok((name, t.to_dtype(dtype)?))
            })
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        let weights = Weights::from_tensors("random weights", tensors, dtype, device);
        Self::load(config, &weights)
    }

    /// Builds the model from weights named as in Hugging Face checkpoints.
    pub fn load(config: LlamaConfig, weights: &Weights) -> Result<Self> {
        let c = &config;
        let (d, dh) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.num_attention_heads * dh, c.num_key_value_heads * dh);
        let linear = |name: &str, out: usize, inp: usize, bias: bool| {
            load_linear(weights, name, out, inp, bias)
        };
        let embed_tokens = weights.get("model.embed_tokens.weight", &[c.vocab_size, d])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let qk_norm = |n: &str| -> Result<Option<Tensor>> {
                if c.qk_norm {
                    Ok(Some(
                        weights.get(&format!("{p}.self_attn.{n}.weight"), &[dh])?,
                    ))
                } else {
                    Ok(None)
                }
            };
            layers.push(DecoderLayer {
                input_layernorm: weights.get(&format!("{p}.input_layernorm.weight"), &[d])?,
                q_proj: linear(&format!("{p}.self_attn.q_proj"), q_dim, d, c.attention_bias)?,
                k_proj: linear(
                    &format!("{p}.self_attn.k_proj"),
                    kv_dim,
                    d,
                    c.attention_bias,
                )?,
                v_proj: linear(
                    &format!("{p}.self_attn.v_proj"),
                    kv_dim,
                    d,
                    c.attention_bias,
                )?,
                o_proj: linear(&format!("{p}.self_attn.o_proj"), d, q_dim, false)?,
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
                post_attention_layernorm: weights
                    .get(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
                gate_proj: linear(&format!("{p}.mlp.gate_proj"), c.intermediate_size, d, false)?,
                up_proj: linear(&format!("{p}.mlp.up_proj"), c.intermediate_size, d, false)?,
                down_proj: linear(&format!("{p}.mlp.down_proj"), d, c.intermediate_size, false)?,
            });
        }
        let norm = weights.get("model.norm.weight", &[d])?;
        let lm_head = match weights.get_opt("lm_head.weight", &[c.vocab_size, d])? {
            Some(w) if !c.tie_word_embeddings => Linear::new(w, None),
            _ if c.tie_word_embeddings => Linear::new(embed_tokens.clone(), None),
            _ => {
                return Err(ModelError::MissingTensor {
                    path: weights.path().to_path_buf(),
                    name: "lm_head.weight".into(),
                })
            }
        };
        let rope_len = c.max_position_embeddings.max(4096);
        let rope = RopeTable::new(c, rope_len, weights.dtype(), weights.device())?;
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            ffn_rows: Default::default(),
            checkpoint_layers: false,
            frozen_layer_nodes: true,
        })
    }

    /// Attaches LoRA adapters (rank `rank`, scale `alpha / rank`) to the `targets` of every layer;
    /// their parameters are created in `params` as `llm.layers.N.TARGET.lora_a` / `lora_b`
    /// (`B` starts at zero). With `frozen_ffn`, FFN targets are refused.
    pub fn attach_lora(
        &mut self,
        params: &pal_nn::Params,
        rank: usize,
        alpha: f64,
        targets: &[String],
        frozen_ffn: bool,
    ) -> Result<()> {
        for t in targets {
            if !LORA_TARGETS.contains(&t.as_str()) {
                return Err(ModelError::Unsupported(format!(
                    "unknown LoRA target '{t}' (one of {})",
                    LORA_TARGETS.join(", ")
                )));
            }
            if frozen_ffn && FFN_LINEARS.contains(&t.as_str()) {
                return Err(ModelError::Unsupported(format!(
                    "LoRA target '{t}' is an FFN weight, but the model config sets frozen_ffn"
                )));
            }
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for t in targets {
                let linear = layer.linear_mut(t).expect("checked above");
                let (out, inp) = linear.weight.dims2()?;
                let name = format!("llm.layers.{i}.{t}");
                let bound = 1.0 / (inp as f64).sqrt();
                let a = params.get(
                    &format!("{name}.lora_a"),
                    &[rank, inp],
                    pal_nn::Init::Uniform(bound),
                )?;
                let b = params.get(&format!("{name}.lora_b"), &[out, rank], pal_nn::Init::Zeros)?;
                linear.lora = Some(pal_nn::Lora {
                    a,
                    b,
                    scale: alpha / rank as f64,
                });
            }
        }
        Ok(())
    }

    /// Makes every LLM weight trainable (registered in `params` as `llm.` + its Hugging Face
    /// name), except the FFN weights when `frozen_ffn` is set.
    pub fn make_trainable(&mut self, params: &pal_nn::Params, frozen_ffn: bool) -> Result<()> {
        let tied = self.config.tie_word_embeddings;
        self.embed_tokens = params.adopt("llm.model.embed_tokens.weight", &self.embed_tokens)?;
        if tied {
            self.lm_head.weight = self.embed_tokens.clone();
        } else {
            self.lm_head.weight = params.adopt("llm.lm_head.weight", &self.lm_head.weight)?;
        }
        self.norm = params.adopt("llm.model.norm.weight", &self.norm)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("llm.model.layers.{i}");
            layer.input_layernorm = params.adopt(
                &format!("{p}.input_layernorm.weight"),
                &layer.input_layernorm,
            )?;
            layer.post_attention_layernorm = params.adopt(
                &format!("{p}.post_attention_layernorm.weight"),
                &layer.post_attention_layernorm,
            )?;
            if let Some(n) = &layer.q_norm {
                layer.q_norm = Some(params.adopt(&format!("{p}.self_attn.q_norm.weight"), n)?);
            }
            if let Some(n) = &layer.k_norm {
                layer.k_norm = Some(params.adopt(&format!("{p}.self_attn.k_norm.weight"), n)?);
            }
            for t in LORA_TARGETS {
                if frozen_ffn && FFN_LINEARS.contains(t) {
                    continue;
                }
                let group = if FFN_LINEARS.contains(t) {
                    "mlp"
                } else {
                    "self_attn"
                };
                let linear = layer.linear_mut(t).expect("known target");
                linear.weight = params.adopt(&format!("{p}.{group}.{t}.weight"), &linear.weight)?;
                if let Some(b) = &linear.bias {
                    linear.bias = Some(params.adopt(&format!("{p}.{group}.{t}.bias"), b)?);
                }
            }
        }
        Ok(())
    }

    /// The dtype activations are computed in.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Token embeddings of `tokens` (`(batch, rows)`, u32) as `(batch, rows, d)`.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, n) = tokens.dims2()?;
        let flat = tokens.flatten_all()?;
        Ok(self
            .embed_tokens
            .index_select(&flat, 0)?
            .reshape((b, n, self.config.hidden_size))?)
    }

    /// Logits of final hidden states: `(.., d)` to `(.., vocab)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }

    /// Mean cross-entropy of the next-token predictions from final hidden rows `(rows, d)`
    /// against `targets` `(rows)`. A frozen output projection without bias or LoRA runs with the
    /// loss as one node ([`pal_nn::ops::linear_cross_entropy`]); otherwise logits, then loss.
    pub fn cross_entropy(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let head = &self.lm_head;
        if self.frozen_layer_nodes
            && !head.weight.is_variable()
            && head.bias.is_none()
            && head.lora.is_none()
        {
            return Ok(pal_nn::ops::linear_cross_entropy(
                hidden,
                &head.weight,
                targets,
            )?);
        }
        Ok(pal_nn::ops::cross_entropy(&self.logits(hidden)?, targets)?)
    }

    /// Logits for every row of `tokens` (`(batch, rows)`, u32). `valid` is `(batch, rows)` with 1
    /// for real tokens and 0 for padding (left or right); `None` means all real.
    pub fn forward(
        &self,
        tokens: &Tensor,
        valid: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let hidden = self.forward_embeds(&self.embed(tokens)?, valid, cache)?;
        self.logits(&hidden)
    }

    /// Runs the decoder over input embeddings `(batch, rows, d)` and returns the final-normed hidden
    /// states. New rows are appended to `cache`; positions continue from the cache, counting only
    /// real rows, so left and right padding give each real token its unpadded position.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        valid: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, n, _) = embeds.dims3()?;
        let device = embeds.device();
        let valid_rows: Vec<Vec<u32>> = match valid {
            Some(v) => v.to_dtype(DType::U32)?.to_vec2::<u32>()?,
            None => vec![vec![1; n]; b],
        };
        if valid_rows.len() != b || valid_rows.iter().any(|r| r.len() != n) {
            return Err(ModelError::Unsupported(format!(
                "valid mask must be ({b}, {n}), got {:?}",
                valid.map(|v| v.dims().to_vec())
            )));
        }
        if cache.next_position.is_empty() {
            cache.next_position = vec![0; b];
        }
        if cache.next_position.len() != b {
            return Err(ModelError::Unsupported(format!(
                "cache holds a batch of {}, input has {b}",
                cache.next_position.len()
            )));
        }
        let mut positions = Vec::with_capacity(b * n);
        for (row, next) in valid_rows.iter().zip(cache.next_position.iter_mut()) {
            for &is_real in row {
                positions.push(*next);
                *next += is_real.min(1);
            }
        }
        let max_pos = positions.iter().copied().max().unwrap_or(0) as usize;
        if max_pos >= self.rope.len() {
            return Err(ModelError::Unsupported(format!(
                "position {max_pos} exceeds the model's RoPE table ({} positions)",
                self.rope.len()
            )));
        }
        let positions = Tensor::from_vec(positions, (b, n), device)?;
        let (cos, sin) = self.rope.at(&positions)?;

        let new_valid =
            Tensor::from_vec(valid_rows.concat(), (b, n), device)?.to_dtype(DType::F32)?;
        let key_valid = match &cache.key_valid {
            Some(old) => Tensor::cat(&[old, &new_valid], 1)?,
            None => new_valid,
        };
        let any_padding = key_valid.min_all()?.to_scalar::<f32>()? < 0.5;
        let mask = if n == 1 && !any_padding {
            None
        } else {
            let keys = key_valid.dims()[1];
            Some(causal_mask(
                n,
                keys,
                any_padding.then_some(&key_valid),
                self.dtype(),
                device,
            )?)
        };
        let keys = key_valid.dims()[1];
        cache.key_valid = Some(key_valid);

        let mut x = embeds.clone();
        for (index, (layer, layer_cache)) in
            self.layers.iter().zip(cache.layers.iter_mut()).enumerate()
        {
            // A layer with a key prefix (LAL) sees `[prefix ; text]` keys.
            let prefix_mask = match &layer_cache.prefix {
                Some(prefix) => Some(self.prefix_mask(prefix, mask.as_ref(), b, n, keys)?),
                None => None,
            };
            let layer_mask = prefix_mask.as_ref().or(mask.as_ref());
            let prefix_trains = layer_cache
                .prefix
                .as_ref()
                .is_some_and(|p| p.k.track_op() || p.v.track_op());
            x = if self.checkpoint_layers && x.track_op() {
                self.checkpointed_layer_forward(index, &x, &cos, &sin, layer_mask, layer_cache)?
            } else if self.frozen_layer_nodes
                && (x.track_op() || prefix_trains)
                && layer_cache.k.is_none()
                && crate::frozen_layer::supported(layer)
            {
                self.frozen_layer_forward(layer, &x, &cos, &sin, layer_mask, layer_cache)?
            } else {
                self.layer_forward(layer, &x, &cos, &sin, layer_mask, layer_cache)?
            };
        }
        Ok(rms_norm(&x, &self.norm, self.config.rms_norm_eps)?)
    }

    /// Layer `index` with activation checkpointing: the output is computed outside the graph and
    /// attached to it by a [`CheckpointedLayer`] op over the layer's trainable inputs (the hidden
    /// states and, for LAL layers, the audio keys/values), which recomputes the layer in backward.
    /// Only for frozen LLM weights: a trainable weight inside the layer would lose its gradient.
    fn checkpointed_layer_forward(
        &self,
        index: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let layer = &self.layers[index];
        let trainable = [
            &layer.q_proj,
            &layer.k_proj,
            &layer.v_proj,
            &layer.o_proj,
            &layer.gate_proj,
            &layer.up_proj,
            &layer.down_proj,
        ]
        .iter()
        .any(|l| l.weight.is_variable() || l.lora.is_some())
            || layer.input_layernorm.is_variable();
        if trainable {
            return Err(ModelError::Unsupported(
                "activation checkpointing needs frozen LLM weights (an adapter-only stage)".into(),
            ));
        }
        let detached_prefix = cache.prefix.as_ref().map(|p| KeyValuePrefix {
            k: p.k.detach(),
            v: p.v.detach(),
            valid: p.valid.clone(),
            stacked: None,
        });
        let mut scratch = LayerCache {
            prefix: detached_prefix,
            k: None,
            v: None,
        };
        let y = self.layer_forward(layer, &x.detach(), cos, sin, mask, &mut scratch)?;
        cache.k = scratch.k;
        cache.v = scratch.v;
        let (pk, pv, valid) = match &cache.prefix {
            Some(p) => (p.k.clone(), p.v.clone(), Some(p.valid.clone())),
            None => {
                let dummy = Tensor::zeros(1, x.dtype(), x.device())?;
                (dummy.clone(), dummy, None)
            }
        };
        let op = CheckpointedLayer {
            llm: self.clone(),
            index,
            output: pal_nn::ops::Precomputed::new("checkpointed layer", y),
            cos: cos.clone(),
            sin: sin.clone(),
            mask: mask.cloned(),
            prefix_valid: valid,
        };
        Ok(x.apply_op3(&pk, &pv, op)?)
    }

    /// The mask of a layer with a key prefix: `[prefix validity ; text mask]` along the keys.
    fn prefix_mask(
        &self,
        prefix: &KeyValuePrefix,
        text_mask: Option<&Tensor>,
        b: usize,
        n: usize,
        keys: usize,
    ) -> Result<Tensor> {
        let dtype = self.dtype();
        let rows = prefix.valid.dims()[1];
        let neg = pal_nn::mask_value(DType::F32);
        let hidden = ((1.0 - prefix.valid.to_dtype(DType::F32)?)? * neg)?.to_dtype(dtype)?;
        let prefix_part = hidden
            .reshape((b, 1, 1, rows))?
            .broadcast_as((b, 1, n, rows))?;
        let text_part = match text_mask {
            Some(m) => m.broadcast_as((b, 1, n, keys))?,
            None => Tensor::zeros((b, 1, n, keys), dtype, self.device())?,
        };
        Ok(Tensor::cat(
            &[&prefix_part.contiguous()?, &text_part.contiguous()?],
            3,
        )?)
    }

    /// One decoder layer: pre-norm attention over `[prefix ; cache ; new rows]`, then the SwiGLU
    /// FFN (on the new rows only).
    pub fn layer_forward(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, n, _) = x.dims3()?;
        let eps = c.rms_norm_eps;
        let h = rms_norm(x, &layer.input_layernorm, eps)?;
        let heads = |t: Tensor, count: usize| -> Result<Tensor> {
            Ok(t.reshape((b, n, count, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut q = heads(layer.q_proj.forward(&h)?, c.num_attention_heads)?;
        let mut k = heads(layer.k_proj.forward(&h)?, c.num_key_value_heads)?;
        let v = heads(layer.v_proj.forward(&h)?, c.num_key_value_heads)?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = rms_norm(&q, qn, eps)?;
            k = rms_norm(&k, kn, eps)?;
        }
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        let (k, v) = match (&cache.k, &cache.v) {
            (Some(pk), Some(pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            _ => (k, v),
        };
        cache.k = Some(k.clone());
        cache.v = Some(v.clone());
        let (k, v) = match &cache.prefix {
            Some(p) => (Tensor::cat(&[&p.k, &k], 2)?, Tensor::cat(&[&p.v, &v], 2)?),
            None => (k, v),
        };
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let attn = attention(&q, &k, &v, mask, scale)?;
        let attn = attn
            .transpose(1, 2)?
            .reshape((b, n, c.num_attention_heads * c.head_dim))?;
        let x = (x + layer.o_proj.forward(&attn)?)?;
        let h = rms_norm(&x, &layer.post_attention_layernorm, eps)?;
        self.ffn_rows
            .fetch_add(b * n, std::sync::atomic::Ordering::Relaxed);
        let gate = layer.gate_proj.forward(&h)?.silu()?;
        let ffn = layer
            .down_proj
            .forward(&(gate * layer.up_proj.forward(&h)?)?)?;
        Ok((x + ffn)?)
    }

    /// Log-probabilities over the vocabulary for the last row of `logits` `(batch, rows, vocab)`.
    pub fn last_row(logits: &Tensor) -> Result<Tensor> {
        let n = logits.dim(1)?;
        Ok(logits
            .narrow(1, n - 1, 1)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .contiguous()?)
    }
}

/// The graph node of a checkpointed layer: inputs `(hidden, prefix keys, prefix values)`, output
/// the layer's output. Forward hands over the output computed outside the graph; backward
/// recomputes the layer with gradient tracking and returns the inputs' gradients, so the layer's
/// intermediate activations are never kept.
struct CheckpointedLayer {
    llm: Llama,
    index: usize,
    output: pal_nn::ops::Precomputed,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    prefix_valid: Option<Tensor>,
}

impl candle_core::CustomOp3 for CheckpointedLayer {
    fn name(&self) -> &'static str {
        "pal-checkpointed-layer"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.output.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        self.output.cuda()
    }

    fn bwd(
        &self,
        x: &Tensor,
        pk: &Tensor,
        pv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let xv = candle_core::Var::from_tensor(x)?;
        let (pkv, pvv) = (
            candle_core::Var::from_tensor(pk)?,
            candle_core::Var::from_tensor(pv)?,
        );
        let prefix = self.prefix_valid.as_ref().map(|valid| KeyValuePrefix {
            k: pkv.as_tensor().clone(),
            v: pvv.as_tensor().clone(),
            valid: valid.clone(),
            stacked: None,
        });
        let mut cache = LayerCache {
            prefix,
            k: None,
            v: None,
        };
        let layer = &self.llm.layers[self.index];
        let y = self
            .llm
            .layer_forward(
                layer,
                xv.as_tensor(),
                &self.cos,
                &self.sin,
                self.mask.as_ref(),
                &mut cache,
            )
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let grads = (y * grad)?.sum_all()?.backward()?;
        let has_prefix = self.prefix_valid.is_some();
        Ok((
            grads.get(xv.as_tensor()).cloned(),
            if has_prefix {
                grads.get(pkv.as_tensor()).cloned()
            } else {
                None
            },
            if has_prefix {
                grads.get(pvv.as_tensor()).cloned()
            } else {
                None
            },
        ))
    }
}
