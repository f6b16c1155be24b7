//! A Llama decoder layer with frozen weights as one autograd node with a written-out backward.
//!
//! candle's backward gives every recorded op a zero-filled gradient buffer plus an add, even a
//! reshape or a copy, and a decoder layer records about 35 ops. When the layer's weights are
//! frozen (an adapter-only stage, the usual way to train PLITS, LAL and PAL), only the gradients
//! of its inputs are needed: the hidden states and, at LAL layers, the audio key/value prefix.
//! So the layer runs outside the graph ([`DecoderLayer::forward_saving`], the one layer forward),
//! keeps the activations its backward needs, and joins the
//! graph as a single op whose backward is the layer's chain rule: the SwiGLU FFN, the
//! post-attention RMSNorm, the output projection, [`attention_split_backward`], the inverse RoPE, the
//! q/k/v projections and the input RMSNorm, each as input gradients only. Same numbers as
//! recording every op (tests compare both in f64), with far less memory traffic.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use pal_nn::ops::{rms_norm_input_grad, rope, Precomputed};
use pal_nn::{attention_split_backward, Linear};

use crate::error::Result;
use crate::llm::cache::{KeyValuePrefix, LayerCache};
use crate::llm::config::LlamaConfig;
use crate::llm::layer::{DecoderLayer, LayerActivations};

/// Whether `layer` of a model of `config` can run as one node: [`DecoderLayer::is_frozen`], a
/// SiLU gate, and none of what the written-out backward does not cover: per-head q/k norms
/// (Qwen3, Gemma), sandwich norms (Gemma), a sliding window.
pub fn supported(layer: &DecoderLayer, config: &LlamaConfig) -> bool {
    layer.is_frozen()
        && config.hidden_act == crate::llm::config::Activation::Silu
        && layer.q_norm.is_none()
        && layer.k_norm.is_none()
        && layer.attention_output_norm.is_none()
        && layer.ffn_output_norm.is_none()
        && layer.window.is_none()
        && layer.linears().iter().all(|l| l.holds_f32())
}

/// The graph node: inputs `(hidden, prefix keys, prefix values)`, output the layer's output.
struct FrozenLayer {
    layer: DecoderLayer,
    saved: LayerActivations,
    output: Precomputed,
    prefix_rows: usize,
    /// The prefix came as one stacked `(2, ...)` input (second input), not as k and v.
    stacked_prefix: bool,
    cos: Tensor,
    sin: Tensor,
    scale: f64,
    eps: f64,
}

/// `g W` for a frozen linear `y = x W^T`: the input gradient, with the rows flattened so that it
/// is one matrix product.
fn input_grad(g: &Tensor, linear: &Linear) -> candle_core::Result<Tensor> {
    let (out_dim, in_dim) = linear.weight.dims2()?;
    let mut dims = g.dims().to_vec();
    let rows = g.elem_count() / out_dim;
    let dx = linear.input_grad(&g.contiguous()?.reshape((rows, out_dim))?)?;
    *dims.last_mut().expect("rank >= 1") = in_dim;
    dx.reshape(dims)
}

/// `[prefix ; own]` keys and values along the rows.
fn with_prefix(
    prefix: &Option<(Tensor, Tensor)>,
    k: &Tensor,
    v: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    match prefix {
        Some((pk, pv)) => Ok((Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?)),
        None => Ok((k.clone(), v.clone())),
    }
}

/// `layer` on `x` as one graph node (see the module docs); the caller checks [`supported`] and
/// that `x` or the layer's prefix needs a gradient.
pub fn forward(
    layer: &DecoderLayer,
    config: &LlamaConfig,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    cache: &mut LayerCache,
) -> Result<Tensor> {
    let (y, saved) = layer.forward_saving(config, x, cos, sin, mask, cache)?;
    let prefix_rows = match &saved.prefix {
        Some((pk, _)) => pk.dim(2)?,
        None => 0,
    };
    let dummy = || Tensor::zeros(1, x.dtype(), x.device());
    let (pk, pv, stacked_prefix) = match &cache.prefix {
        Some(KeyValuePrefix {
            stacked: Some(kv), ..
        }) => (kv.clone(), dummy()?, true),
        Some(p) => (p.k.clone(), p.v.clone(), false),
        None => (dummy()?, dummy()?, false),
    };
    let node = FrozenLayer {
        layer: layer.clone(),
        saved,
        output: Precomputed::new("frozen layer", y),
        prefix_rows,
        stacked_prefix,
        cos: cos.clone(),
        sin: sin.clone(),
        scale: 1.0 / (config.head_dim as f64).sqrt(),
        eps: config.rms_norm_eps,
    };
    Ok(x.apply_op3(&pk, &pv, node)?)
}

impl FrozenLayer {
    /// `(dx, d prefix k, d prefix v)` for the output gradient `dy`.
    fn gradients(&self, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (s, l) = (&self.saved, &self.layer);
        let (b, n, _) = dy.dims3()?;
        let (q_heads, kv_heads, dh) = (s.q.dim(1)?, s.k.dim(1)?, s.q.dim(3)?);
        // FFN: y = x1 + down(silu(gate) * up), with gate, up = W h2, h2 = rmsnorm(x1).
        let dm = input_grad(dy, &l.down_proj)?;
        let sig = (s.gate.neg()?.exp()? + 1.0)?.recip()?;
        let silu = (&s.gate * &sig)?;
        let d_up = (&dm * &silu)?;
        // silu'(a) = sig(a) (1 + a (1 - sig(a))) = sig + silu (1 - sig).
        let d_silu = (&sig + (&silu * (1.0 - &sig)?)?)?;
        let d_gate = ((&dm * &s.up)? * d_silu)?;
        let dh2 = (input_grad(&d_gate, &l.gate_proj)? + input_grad(&d_up, &l.up_proj)?)?;
        let dx1 = (dy + rms_norm_input_grad(&s.x1, &l.post_attention_layernorm, &dh2, self.eps)?)?;
        // Attention block: x1 = x + o(attention(rope(q), [prefix; rope(k)], [prefix; v])).
        let d_attn = input_grad(&dx1, &l.o_proj)?
            .reshape((b, n, q_heads, dh))?
            .transpose(1, 2)?;
        let (k, v) = with_prefix(&s.prefix, &s.k, &s.v)?;
        let (dq, dk, dv) =
            attention_split_backward(&s.q, &k, &v, &s.probs, &d_attn, self.scale, s.own_softmax)?;
        let p = self.prefix_rows;
        let neg_sin = self.sin.neg()?;
        let rows_first =
            |t: Tensor, heads: usize| t.transpose(1, 2)?.contiguous()?.reshape((b, n, heads * dh));
        let dq = rows_first(rope(&dq, &self.cos, &neg_sin)?, q_heads)?;
        let dk_own = rope(&dk.narrow(2, p, n)?.contiguous()?, &self.cos, &neg_sin)?;
        let dk_own = rows_first(dk_own, kv_heads)?;
        let dv_own = rows_first(dv.narrow(2, p, n)?, kv_heads)?;
        let dh1 = ((input_grad(&dq, &l.q_proj)? + input_grad(&dk_own, &l.k_proj)?)?
            + input_grad(&dv_own, &l.v_proj)?)?;
        let dx = (dx1 + rms_norm_input_grad(&s.x, &l.input_layernorm, &dh1, self.eps)?)?;
        Ok((
            dx,
            dk.narrow(2, 0, p)?.contiguous()?,
            dv.narrow(2, 0, p)?.contiguous()?,
        ))
    }
}

impl CustomOp3 for FrozenLayer {
    fn name(&self) -> &'static str {
        "pal-frozen-layer"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
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
        let (dx, dpk, dpv) = self.gradients(grad)?;
        let has_prefix = self.prefix_rows > 0;
        if self.stacked_prefix {
            let d_stacked = (has_prefix && pk.track_op())
                .then(|| Tensor::stack(&[&dpk, &dpv], 0))
                .transpose()?;
            return Ok((x.track_op().then_some(dx), d_stacked, None));
        }
        Ok((
            x.track_op().then_some(dx),
            (has_prefix && pk.track_op()).then_some(dpk),
            (has_prefix && pv.track_op()).then_some(dpv),
        ))
    }
}
