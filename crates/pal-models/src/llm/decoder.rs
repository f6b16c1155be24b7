//! The Llama-family decoder: Llama 3.x (rope scaling "llama3"), SmolLM2 (tied embeddings),
//! Qwen2/Qwen2.5 (q/k/v bias), Qwen3 (q/k RMSNorm) and Gemma 3 (q/k RMSNorm, sandwich norms,
//! GeGLU, scaled embeddings, local sliding-window layers with their own RoPE base). Weights are
//! named as in Hugging Face checkpoints (`model.layers.N.self_attn.q_proj.weight`, ...).
//!
//! All ops come from `pal-nn`, so the same code runs inference and training: a weight that is a
//! candle `Var` is trained, any other weight is frozen and gets no gradient. Each layer runs
//! through [`DecoderLayer::forward`]; in training, a frozen layer runs as one node with a
//! written-out backward ([`frozen_layer`]) or checkpointed ([`checkpointed_layer`]).

use std::sync::atomic::Ordering;

use candle_core::{DType, Device, Tensor};
use pal_nn::ops::rms_norm;
use pal_nn::{causal_mask, Linear};

use crate::error::{ModelError, Result};
use crate::formats::weights::{load_linear, Weights};
use crate::llm::cache::{KeyValuePrefix, KvCache};
use crate::llm::config::LlamaConfig;
use crate::llm::layer::DecoderLayer;
use crate::llm::rope::RopeTable;
use crate::llm::{checkpointed_layer, frozen_layer};

/// cos and sin of some positions from each RoPE table of a model ([`Llama::ropes_at`]).
pub struct LayerRopes {
    /// From the table of every layer (of the global ones where some are local).
    pub global: (Tensor, Tensor),
    /// From the local layers' own table, where they have one.
    pub local: Option<(Tensor, Tensor)>,
}

impl LayerRopes {
    /// The cos and sin `layer` rotates with: the local ones for a sliding-window layer.
    pub fn of(&self, layer: &DecoderLayer) -> (&Tensor, &Tensor) {
        match (&self.local, layer.window) {
            (Some((cos, sin)), Some(_)) => (cos, sin),
            _ => (&self.global.0, &self.global.1),
        }
    }
}

/// A Llama-family decoder.
#[derive(Clone, Debug)]
pub struct Llama {
    /// Shape and options.
    pub config: LlamaConfig,
    /// `(vocab, d)` token embeddings.
    pub embed_tokens: Tensor,
    /// The embeddings in their file's quantized form, looked up row by row instead of
    /// `embed_tokens` (`--weights quantized`, which frees the f32 table).
    pub embed_quantized: Option<std::sync::Arc<pal_nn::ops::QuantizedWeight>>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: Tensor,
    /// Output projection (the embedding matrix when tied).
    pub lm_head: Linear,
    /// RoPE tables (of every layer, or of the global layers where some are local).
    pub rope: RopeTable,
    /// RoPE tables of the local (sliding-window) layers, where they have their own base.
    pub rope_local: Option<RopeTable>,
    /// Rows that went through an FFN since the model was built (instrumentation: LAL's audio must
    /// never reach an FFN).
    pub ffn_rows: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Activation checkpointing: when training with frozen LLM weights, keep only each layer's
    /// inputs and output and recompute the layer in backward (see [`checkpointed_layer`]).
    pub checkpoint_layers: bool,
    /// Train layers whose weights are all frozen as single graph nodes with a written-out
    /// backward (see [`frozen_layer`]): the same gradients with far less memory traffic.
    /// On by default; off records every op of the layer (the reference the tests compare with).
    pub frozen_layer_nodes: bool,
    /// Attention over a LAL prefix runs in bf16 on the CPU's bf16 kernel, the prefix packed
    /// once as its keys are computed ([`pal_nn::ops::bf16::prefix`]): set for inference where
    /// the precision says so ([`pal_nn::Precision::bf16_prefix`]: any x86-64 CPU with AVX2 unless
    /// `--dtype f32`; see
    /// [`crate::audio_llm::build::load_run_for_inference`]; training never sets it: attention
    /// over a packed prefix carries no gradient). Off, the prefix is attended in f32.
    pub bf16_prefix: bool,
}

impl Llama {
    /// A model with `config`'s shapes and random weights (normal, std 0.02; norms 1): for
    /// benchmarks at the shapes of models that are not at hand.
    pub fn random(config: LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        Self::generated(config, dtype, device, |_, shape| {
            Tensor::randn(0f32, 0.02, shape, device).map_err(Into::into)
        })
    }

    /// A model with `config`'s shapes and weights that depend only on `seed` (uniform in
    /// ±0.05; norms 1), the same on every device and dtype: a device can be compared with the
    /// CPU on one model.
    pub fn seeded(config: LlamaConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let mut index = 0u64;
        Self::generated(config, dtype, device, |_, shape| {
            index += 1;
            let n = shape.iter().product();
            let values: Vec<f64> = pal_nn::gradcheck::pseudo_random(n, seed.wrapping_add(index))
                .into_iter()
                .map(|v| v * 0.05)
                .collect();
            Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
        })
    }

    /// A model whose weight matrices come from `matrix(name, shape)` and whose norms are 1.
    fn generated(
        config: LlamaConfig,
        dtype: DType,
        device: &Device,
        mut matrix: impl FnMut(&str, Vec<usize>) -> Result<Tensor>,
    ) -> Result<Self> {
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
            if c.sandwich_norms {
                for name in ["pre_feedforward_layernorm", "post_feedforward_layernorm"] {
                    shapes.push((format!("{p}.{name}.weight"), vec![d]));
                }
            }
        }
        let mut tensors = std::collections::HashMap::new();
        for (name, shape) in shapes {
            let t = if shape.len() == 1 {
                Tensor::ones(shape, DType::F32, device)?
            } else {
                matrix(&name, shape)?
            };
            tensors.insert(name, t.to_dtype(dtype)?.to_device(device)?);
        }
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
            // Sandwich norms (Gemma): `post_attention_layernorm` norms the attention output, and
            // the FFN's pre-norm is `pre_feedforward_layernorm`.
            let norm = |name: &str| weights.get(&format!("{p}.{name}.weight"), &[d]);
            let (pre_ffn, attention_output_norm, ffn_output_norm) = match c.sandwich_norms {
                true => (
                    norm("pre_feedforward_layernorm")?,
                    Some(norm("post_attention_layernorm")?),
                    Some(norm("post_feedforward_layernorm")?),
                ),
                false => (norm("post_attention_layernorm")?, None, None),
            };
            let window = c
                .sliding_window
                .as_ref()
                .filter(|w| w.is_local(i))
                .map(|w| w.window);
            layers.push(DecoderLayer {
                input_layernorm: norm("input_layernorm")?,
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
                post_attention_layernorm: pre_ffn,
                gate_proj: linear(&format!("{p}.mlp.gate_proj"), c.intermediate_size, d, false)?,
                up_proj: linear(&format!("{p}.mlp.up_proj"), c.intermediate_size, d, false)?,
                down_proj: linear(&format!("{p}.mlp.down_proj"), d, c.intermediate_size, false)?,
                attention_output_norm,
                ffn_output_norm,
                window,
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
        let rope = RopeTable::new(
            &c.rope_inv_freq(),
            rope_len,
            weights.dtype(),
            weights.device(),
        )?;
        let rope_local = c
            .local_rope_inv_freq()
            .map(|f| RopeTable::new(&f, rope_len, weights.dtype(), weights.device()))
            .transpose()?;
        Ok(Self {
            config,
            embed_tokens,
            embed_quantized: None,
            layers,
            norm,
            lm_head,
            rope,
            rope_local,
            ffn_rows: Default::default(),
            checkpoint_layers: false,
            frozen_layer_nodes: true,
            bf16_prefix: false,
        })
    }

    /// Packs every frozen f32 linear weight (the layers' and the output projection's) in bf16,
    /// so that their products run on the CPU's bf16 kernels ([`pal_nn::ops::bf16`]); returns
    /// the bytes the packed forms hold.
    pub fn hold_bf16(&mut self) -> Result<usize> {
        let mut bytes = 0;
        for layer in &mut self.layers {
            for name in crate::llm::layer::LINEAR_NAMES {
                let linear = layer.linear_mut(name).expect("known linear");
                linear.hold_bf16()?;
                bytes += linear.bf16.as_ref().map_or(0, |w| w.bytes());
            }
        }
        self.lm_head.hold_bf16()?;
        bytes += self.lm_head.bf16.as_ref().map_or(0, |w| w.bytes());
        Ok(bytes)
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

    /// cos and sin at `positions` (`(batch, rows)`, u32) from every RoPE table the model has,
    /// each layer's picked by [`LayerRopes::of`].
    pub fn ropes_at(&self, positions: &Tensor) -> Result<LayerRopes> {
        Ok(LayerRopes {
            global: self.rope.at(positions)?,
            local: self
                .rope_local
                .as_ref()
                .map(|t| t.at(positions))
                .transpose()?,
        })
    }

    /// Token embeddings of `tokens` (`(batch, rows)`, u32) as `(batch, rows, d)`, scaled by
    /// [`LlamaConfig::embedding_scale`] where the model has one.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, n) = tokens.dims2()?;
        let flat = tokens.flatten_all()?;
        let rows = match &self.embed_quantized {
            Some(q) => q
                .rows(&flat.to_vec1::<u32>()?)?
                .to_device(tokens.device())?,
            None => self.embed_tokens.index_select(&flat, 0)?,
        }
        .reshape((b, n, self.config.hidden_size))?;
        Ok(match self.config.embedding_scale {
            // Gemma rounds the scale to the model's type before multiplying.
            Some(scale) => {
                let scale = Tensor::new(scale as f32, rows.device())?.to_dtype(rows.dtype())?;
                rows.broadcast_mul(&scale)?
            }
            None => rows,
        })
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
            && head.holds_f32()
            && head.bias.is_none()
            && head.lora.is_none()
        {
            return Ok(pal_nn::ops::linear_cross_entropy_with(
                hidden,
                &head.weight,
                head.bf16.as_ref(),
                targets,
            )?);
        }
        // The loss in the trained parameters' type: f32 from a half-precision backbone.
        let logits = self.logits(hidden)?;
        let logits = logits.to_dtype(pal_nn::Params::master_dtype(logits.dtype()))?;
        Ok(pal_nn::ops::cross_entropy(&logits, targets)?)
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
        let window_part = self.window_mask(&positions, &valid_rows, cache, b, n)?;
        let ropes = self.ropes_at(&Tensor::from_vec(positions, (b, n), device)?)?;

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
        // Local layers' mask: the causal (and padding) mask plus the window.
        let local_mask = match (window_part, &mask) {
            (Some(w), Some(m)) => Some(
                m.broadcast_add(&w)?
                    .clamp(pal_nn::mask_value(DType::F32) as f32, 0f32)?,
            ),
            (Some(w), None) => Some(w),
            (None, _) => None,
        };

        let mut x = embeds.clone();
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let local = layer.window.is_some();
            let mask = match local {
                true => local_mask.as_ref().or(mask.as_ref()),
                false => mask.as_ref(),
            };
            let (cos, sin) = ropes.of(layer);
            // A layer with a key prefix (LAL) sees `[prefix ; text]` keys.
            // (A packed prefix is attended apart, its rows all real: the mask is the text's.)
            let packed = layer_cache.attends_packed();
            let prefix_mask = match &layer_cache.prefix {
                Some(prefix) if !packed => Some(self.prefix_mask(prefix, mask, b, n, keys)?),
                _ => None,
            };
            let layer_mask = prefix_mask.as_ref().or(mask);
            let prefix_trains = layer_cache
                .prefix
                .as_ref()
                .is_some_and(|p| p.k.track_op() || p.v.track_op());
            self.ffn_rows.fetch_add(b * n, Ordering::Relaxed);
            let c = &self.config;
            x = if packed {
                layer.forward(c, &x, cos, sin, layer_mask, layer_cache)?
            } else if self.checkpoint_layers && x.track_op() {
                checkpointed_layer::forward(layer, c, &x, cos, sin, layer_mask, layer_cache)?
            } else if self.frozen_layer_nodes
                && (x.track_op() || prefix_trains)
                && layer_cache.k.is_none()
                && frozen_layer::supported(layer, c)
            {
                frozen_layer::forward(layer, c, &x, cos, sin, layer_mask, layer_cache)?
            } else {
                layer.forward(c, &x, cos, sin, layer_mask, layer_cache)?
            };
        }
        Ok(rms_norm(&x, &self.norm, self.config.rms_norm_eps)?)
    }

    /// One decoding step of sequences that each keep their own cache, so that they can join and
    /// leave a running batch between steps (continuous batching): `tokens[i]` is sequence `i`'s
    /// next token, `caches[i]` its cache (one sequence, no padding, its LAL prefix in front).
    /// The linear layers run on all rows at once; each row attends over its own cache. Returns
    /// logits `(rows, vocab)`. Inference only.
    pub fn decode_step(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let b = tokens.len();
        if caches.len() != b || caches.iter().any(|c| c.next_position.len() != 1) {
            return Err(ModelError::Unsupported(format!(
                "decode_step takes one cache of one sequence per token ({b} tokens, {} caches)",
                caches.len()
            )));
        }
        let device = self.device();
        let positions: Vec<u32> = caches.iter().map(|c| c.next_position[0]).collect();
        if let Some(&max) = positions.iter().max() {
            if max as usize >= self.rope.len() {
                return Err(ModelError::Unsupported(format!(
                    "position {max} exceeds the model's RoPE table ({} positions)",
                    self.rope.len()
                )));
            }
        }
        let ropes = self.ropes_at(&Tensor::from_vec(positions, (b, 1), device)?)?;
        let one = Tensor::ones((1, 1), DType::F32, device)?;
        for cache in caches.iter_mut() {
            cache.key_valid = Some(match &cache.key_valid {
                Some(old) => Tensor::cat(&[old, &one], 1)?,
                None => one.clone(),
            });
            cache.next_position[0] += 1;
        }
        let ids = Tensor::from_vec(tokens.to_vec(), (b, 1), device)?;
        let mut x = self.embed(&ids)?;
        for (index, layer) in self.layers.iter().enumerate() {
            self.ffn_rows.fetch_add(b, Ordering::Relaxed);
            let mut layer_caches: Vec<&mut crate::llm::cache::LayerCache> =
                caches.iter_mut().map(|c| &mut c.layers[index]).collect();
            let (cos, sin) = ropes.of(layer);
            x = layer.decode_rows(&self.config, &x, cos, sin, &mut layer_caches)?;
        }
        let hidden = rms_norm(&x, &self.norm, self.config.rms_norm_eps)?;
        Ok(self.logits(&hidden)?.squeeze(1)?)
    }

    /// What the local layers' mask adds to the causal one, `(b, 1, n, keys)`: the mask value
    /// where a key's position is `window` or more before the query's. `None` when no layer is
    /// local or no query is that far from any key. `positions` are the new rows' (`b * n`);
    /// the cached keys' positions are counted back from them by the cache's validity (the
    /// first text row's position is not 0 where LAL audio keys take positions before it).
    fn window_mask(
        &self,
        positions: &[u32],
        valid_rows: &[Vec<u32>],
        cache: &KvCache,
        b: usize,
        n: usize,
    ) -> Result<Option<Tensor>> {
        let Some(window) = self.config.sliding_window.as_ref().map(|w| w.window) else {
            return Ok(None);
        };
        if n == 0 {
            return Ok(None);
        }
        let cached: Vec<Vec<f32>> = match &cache.key_valid {
            Some(v) => v.to_dtype(DType::F32)?.to_vec2::<f32>()?,
            None => vec![Vec::new(); b],
        };
        let mut key_positions: Vec<Vec<i64>> = Vec::with_capacity(b);
        for (r, (old, new)) in cached.iter().zip(valid_rows).enumerate() {
            let cached_real = old.iter().filter(|&&v| v > 0.5).count() as i64;
            let mut next = positions[r * n] as i64 - cached_real;
            let mut row = Vec::with_capacity(old.len() + new.len());
            for is_real in old
                .iter()
                .map(|&v| v > 0.5)
                .chain(new.iter().map(|&v| v > 0))
            {
                row.push(next);
                next += is_real as i64;
            }
            key_positions.push(row);
        }
        let keys = key_positions.first().map_or(0, |r| r.len());
        let reach = |q: u32, k: i64| q as i64 - k >= window as i64;
        let far = (0..b).any(|r| {
            let first_key = key_positions[r].first().copied().unwrap_or(0);
            (0..n).any(|i| reach(positions[r * n + i], first_key))
        });
        if !far {
            return Ok(None);
        }
        let neg = pal_nn::mask_value(DType::F32) as f32;
        let mut values = Vec::with_capacity(b * n * keys);
        for (r, row) in key_positions.iter().enumerate() {
            for i in 0..n {
                let q = positions[r * n + i];
                values.extend(row.iter().map(|&k| if reach(q, k) { neg } else { 0.0 }));
            }
        }
        let mask = Tensor::from_vec(values, (b, 1, n, keys), self.device())?;
        Ok(Some(mask.to_dtype(self.dtype())?))
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
