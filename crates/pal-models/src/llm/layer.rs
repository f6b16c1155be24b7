//! One Llama-family decoder layer (Gemma 3's too: sandwich norms, GeGLU, a sliding window): its
//! weights, and its forward, written once. Every way the decoder
//! runs a layer goes through [`DecoderLayer::forward`]: the plain path (inference, and training
//! that records every op), the frozen-layer node (which keeps the activations its written-out
//! backward needs, see [`crate::llm::frozen_layer`]) and the checkpointed node (which reruns it in
//! backward, see [`crate::llm::checkpointed_layer`]). Audio keys/values at LAL layers are made by
//! the same [`DecoderLayer::keys_values`] as the layer's own.

use candle_core::Tensor;
use pal_nn::ops::{rms_norm, rope};
use pal_nn::{
    attention_apart, attention_packed, attention_split, decode_attention, Linear, SequenceKeys,
};

use crate::error::{ModelError, Result};
use crate::llm::cache::LayerCache;
use crate::llm::config::{Activation, LlamaConfig};

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
    /// RMSNorm on the attention block's output before its residual add (Gemma's
    /// `post_attention_layernorm`; see [`LlamaConfig::sandwich_norms`]).
    pub attention_output_norm: Option<Tensor>,
    /// RMSNorm on the FFN's output before its residual add (Gemma's `post_feedforward_layernorm`).
    pub ffn_output_norm: Option<Tensor>,
    /// The sliding window of a local layer (see [`crate::llm::config::SlidingWindow`]): the
    /// caller's mask holds it in a prefill; decoding attends over the last `window` own keys.
    pub window: Option<usize>,
}

/// The linear layers of a decoder layer by their Hugging Face names, in
/// [`DecoderLayer::linears`] order; LoRA can target any of them.
pub const LINEAR_NAMES: &[&str] = &[
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

/// What the frozen-layer node's backward needs from a forward, all outside the graph.
pub struct LayerActivations {
    /// Layer input `(b, n, d)`.
    pub x: Tensor,
    /// Rotated queries `(b, q_heads, n, head_dim)`.
    pub q: Tensor,
    /// The layer's own keys (rotated) and values `(b, kv_heads, n, head_dim)`.
    pub k: Tensor,
    /// See `k`.
    pub v: Tensor,
    /// The prefix keys and values the queries also saw (detached), if any: the concatenation is
    /// rebuilt in backward rather than kept.
    pub prefix: Option<(Tensor, Tensor)>,
    /// Attention probabilities (see [`attention_split`]).
    pub probs: Tensor,
    /// Keys at the front with a softmax of their own (see [`crate::llm::KeyValuePrefix::own_softmax`]).
    pub own_softmax: usize,
    /// Hidden states after the attention block `(b, n, d)`.
    pub x1: Tensor,
    /// Gate projection, before the SiLU `(b, n, intermediate)`.
    pub gate: Tensor,
    /// Up projection `(b, n, intermediate)`.
    pub up: Tensor,
}

impl DecoderLayer {
    /// The seven linear layers.
    pub fn linears(&self) -> [&Linear; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }

    /// Whether nothing in the layer trains: no trainable weight or norm, no LoRA. Only then may
    /// the layer run outside the graph (frozen-layer node, activation checkpointing).
    pub fn is_frozen(&self) -> bool {
        let norms = [
            Some(&self.input_layernorm),
            Some(&self.post_attention_layernorm),
            self.q_norm.as_ref(),
            self.k_norm.as_ref(),
            self.attention_output_norm.as_ref(),
            self.ffn_output_norm.as_ref(),
        ];
        self.linears()
            .iter()
            .all(|l| !l.weight.is_variable() && l.lora.is_none())
            && norms.iter().flatten().all(|n| !n.is_variable())
    }

    /// Keys and values `(b, kv_heads, n, head_dim)` of normed rows `h` `(b, n, d)`: `k_proj`, the
    /// per-head key norm (Qwen3), RoPE with `rope_tables` (cos, sin) when given; `v_proj`. The
    /// layer's own keys and LAL's audio keys are both made here.
    pub fn keys_values(
        &self,
        config: &LlamaConfig,
        h: &Tensor,
        rope_tables: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let kv_heads = config.num_key_value_heads;
        let mut k = split_heads(&self.k_proj.forward(h)?, kv_heads, config.head_dim)?;
        let v = split_heads(&self.v_proj.forward(h)?, kv_heads, config.head_dim)?;
        if let Some(kn) = &self.k_norm {
            k = rms_norm(&k, kn, config.rms_norm_eps)?;
        }
        if let Some((cos, sin)) = rope_tables {
            k = rope(&k, cos, sin)?;
        }
        Ok((k, v))
    }

    /// The layer on `x` `(b, n, d)`: pre-norm attention over `[prefix ; cached ; new rows]`, then
    /// the SwiGLU FFN on the new rows only. The new rows' keys and values are appended to `cache`.
    pub fn forward(
        &self,
        config: &LlamaConfig,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        Ok(self.run(config, x, cos, sin, mask, cache, false)?.0)
    }

    /// [`DecoderLayer::forward`] outside the autograd graph (input and prefix detached), keeping
    /// the activations a written-out backward needs.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_saving(
        &self,
        config: &LlamaConfig,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<(Tensor, LayerActivations)> {
        let (y, saved) = self.run(config, &x.detach(), cos, sin, mask, cache, true)?;
        Ok((y, saved.expect("kept when asked")))
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        config: &LlamaConfig,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
        keep: bool,
    ) -> Result<(Tensor, Option<LayerActivations>)> {
        let c = config;
        let (b, n, _) = x.dims3()?;
        let eps = c.rms_norm_eps;
        // Attention block: x1 = x + o(attention(rope(q), [prefix; rope(k)], [prefix; v])).
        let h = rms_norm(x, &self.input_layernorm, eps)?;
        let q = self.queries(c, &h, cos, sin)?;
        let (k_own, v_own) = self.keys_values(c, &h, Some((cos, sin)))?;
        let own_softmax = cache.prefix.as_ref().map_or(0, |p| p.own_softmax_rows());
        let prefix_tracks = cache
            .prefix
            .as_ref()
            .is_some_and(|p| p.k.track_op() || p.v.track_op());
        let in_place = !keep && !x.track_op() && !k_own.track_op() && !prefix_tracks;
        let prefix = cache.prefix.as_ref().map(|p| match keep {
            true => (p.k.detach(), p.v.detach()),
            false => (p.k.clone(), p.v.clone()),
        });
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let (attn, probs) = if !keep && cache.attends_packed() {
            // Inference over a packed prefix (a clip's LAL keys in bf16): the new rows go into
            // the cache's buffers; `mask` covers them only (the prefix's rows are all real).
            let packed = cache.prefix.as_ref().and_then(|p| p.packed.clone());
            let apart = cache.append_apart(&k_own.detach(), &v_own.detach())?;
            let packed = packed.expect("attends_packed checked it");
            let own_softmax = own_softmax != 0;
            let out = attention_packed(&q, &packed, &apart.k, &apart.v, mask, scale, own_softmax)?;
            (out, None)
        } else if cache.prefix.as_ref().is_some_and(|p| p.packed.is_some()) {
            return Err(ModelError::Unsupported(
                "a LAL prefix held packed in bf16 is attended by inference only, and keeps no \
                 attention probabilities (load the model with --dtype f32)"
                    .into(),
            ));
        } else if in_place && cache.prefix.is_some() {
            // Inference with a prefix (a clip's LAL keys): the new rows go into the cache's
            // buffers, the prefix is read where it lies (never copied per request).
            let apart = cache.append_apart(&k_own, &v_own)?;
            let (pk, pv) = apart.prefix.as_ref().expect("the cache has a prefix");
            let (out, probs) =
                attention_apart(&q, (pk, pv), &apart.k, &apart.v, mask, scale, own_softmax)?;
            (out, Some(probs))
        } else {
            let (k, v) = if in_place {
                // Inference: the new rows are written into the cache's buffers.
                cache.append_in_place(&k_own, &v_own)?
            } else {
                let (k, v) = match (&cache.k, &cache.v) {
                    (Some(pk), Some(pv)) => (
                        Tensor::cat(&[pk, &k_own], 2)?,
                        Tensor::cat(&[pv, &v_own], 2)?,
                    ),
                    _ => (k_own.clone(), v_own.clone()),
                };
                cache.k = Some(k.clone());
                cache.v = Some(v.clone());
                match &prefix {
                    Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                    None => (k, v),
                }
            };
            let (out, probs) = attention_split(&q, &k, &v, mask, scale, own_softmax)?;
            (out, Some(probs))
        };
        if let (true, Some(probs)) = (cache.record_attention, &probs) {
            cache.attention = Some(probs.detach());
        }
        let attn = attn
            .transpose(1, 2)?
            .reshape((b, n, c.num_attention_heads * c.head_dim))?;
        let x1 = self.attention_residual(c, x, &attn)?;
        let (y, gate, up) = self.ffn(c, &x1, !keep)?;
        let saved = keep.then(|| LayerActivations {
            x: x.clone(),
            q,
            k: k_own,
            v: v_own,
            prefix,
            probs: probs.expect("kept when not packed"),
            own_softmax,
            x1,
            gate,
            up,
        });
        Ok((y, saved))
    }
}

impl DecoderLayer {
    /// Rotated queries `(b, q_heads, n, head_dim)` of normed rows `h` `(b, n, d)`: `q_proj`, the
    /// per-head query norm (Qwen3), RoPE.
    fn queries(&self, c: &LlamaConfig, h: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let mut q = split_heads(&self.q_proj.forward(h)?, c.num_attention_heads, c.head_dim)?;
        if let Some(qn) = &self.q_norm {
            q = rms_norm(&q, qn, c.rms_norm_eps)?;
        }
        Ok(rope(&q, cos, sin)?)
    }

    /// `x + o(attn)`, the attention output normed first where the model has sandwich norms.
    fn attention_residual(&self, c: &LlamaConfig, x: &Tensor, attn: &Tensor) -> Result<Tensor> {
        let out = self.o_proj.forward(attn)?;
        Ok(match &self.attention_output_norm {
            Some(norm) => (x + rms_norm(&out, norm, c.rms_norm_eps)?)?,
            None => (x + out)?,
        })
    }

    /// The FFN block on `x1` `(b, n, d)`: `y = x1 + down(act(gate) * up)`, with gate, up =
    /// W h2, h2 = rmsnorm(x1) (and the FFN's output normed where the model has sandwich norms).
    /// Returns `y`, and `gate` and `up` (which a backward needs). `inference`: a SiLU gate in
    /// one fused pass ([`pal_nn::ops::silu_mul`]); a forward that keeps activations for a
    /// written-out backward uses candle's `silu` and `mul`, whose rounding that backward
    /// matches. (An activation-checkpointed layer's untracked forward also takes the fused pass;
    /// its backward recomputes the layer with candle's ops, 1e-7 apart.)
    fn ffn(
        &self,
        c: &LlamaConfig,
        x1: &Tensor,
        inference: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let h2 = rms_norm(x1, &self.post_attention_layernorm, c.rms_norm_eps)?;
        let gate = self.gate_proj.forward(&h2)?;
        let up = self.up_proj.forward(&h2)?;
        let gated = match (c.hidden_act, inference) {
            (Activation::Silu, true) => pal_nn::ops::silu_mul(&gate, &up)?,
            (Activation::Silu, false) => (gate.silu()? * &up)?,
            (Activation::GeluTanh, _) => (gate.gelu()? * &up)?,
        };
        let out = self.down_proj.forward(&gated)?;
        let y = match &self.ffn_output_norm {
            Some(norm) => (x1 + rms_norm(&out, norm, c.rms_norm_eps)?)?,
            None => (x1 + out)?,
        };
        Ok((y, gate, up))
    }

    /// One decoding step of sequences that each keep their own cache (continuous batching):
    /// row `i` of `x` `(b, 1, d)` is sequence `i`'s new token, `caches[i]` its cache (batch 1,
    /// its LAL prefix in front, no padding). The projections and the FFN run on all rows at
    /// once; each row attends over its own prefix and cache, where its keys and values are
    /// appended. Inference only.
    pub fn decode_rows(
        &self,
        config: &LlamaConfig,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        caches: &mut [&mut LayerCache],
    ) -> Result<Tensor> {
        let c = config;
        let b = x.dims3()?.0;
        let h = rms_norm(x, &self.input_layernorm, c.rms_norm_eps)?;
        let q = self.queries(c, &h, cos, sin)?;
        let (k_new, v_new) = self.keys_values(c, &h, Some((cos, sin)))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let mut keys = Vec::with_capacity(b);
        for (i, cache) in caches.iter_mut().enumerate() {
            let own_softmax = cache.prefix.as_ref().is_some_and(|p| p.own_softmax);
            // (Decoding keeps no probabilities: a packed prefix is always attended packed.)
            let packed = cache
                .prefix
                .as_ref()
                .and_then(|p| p.packed.as_ref()?.first().cloned());
            let mut apart = cache.append_apart(&k_new.narrow(0, i, 1)?, &v_new.narrow(0, i, 1)?)?;
            if let Some(window) = self.window {
                // A local layer sees its last `window` positions (one sequence, no padding).
                let rows = apart.k.dim(2)?;
                if rows > window {
                    apart.k = apart.k.narrow(2, rows - window, window)?;
                    apart.v = apart.v.narrow(2, rows - window, window)?;
                }
            }
            keys.push((apart, own_softmax, packed));
        }
        let sequences: Vec<SequenceKeys> = keys
            .iter()
            .map(|(apart, own_softmax, packed)| SequenceKeys {
                prefix: apart.prefix.as_ref().map(|(k, v)| (k, v)),
                prefix_own_softmax: *own_softmax,
                packed: packed.as_ref(),
                k: &apart.k,
                v: &apart.v,
            })
            .collect();
        let attn = decode_attention(&q, &sequences, scale)?
            .transpose(1, 2)?
            .reshape((b, 1, c.num_attention_heads * c.head_dim))?;
        let x1 = self.attention_residual(c, x, &attn)?;
        Ok(self.ffn(c, &x1, true)?.0)
    }
}

/// `(b, n, heads * head_dim)` to `(b, heads, n, head_dim)`.
fn split_heads(t: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let (b, n, _) = t.dims3()?;
    Ok(t.reshape((b, n, heads, head_dim))?
        .transpose(1, 2)?
        .contiguous()?)
}
