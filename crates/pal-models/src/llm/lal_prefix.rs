//! One layer's LAL key/value prefix as one autograd node with a written-out backward, for the
//! usual configuration: a linear projector, the layer's own (frozen) input RMSNorm and frozen k/v
//! projections. The forward is what [`DecoderLayer::keys_values`] computes from
//! `A = E P^T + p`, `k = rope(rmsnorm(A) W_k^T)`, `v = rmsnorm(A) W_v^T`, run outside the graph;
//! the backward yields only what trains, `dP = dA^T E` and `dp = sum(dA)`, without recording the
//! dozen intermediate ops (each of which candle's backward would give a zero-filled buffer and an
//! add). Same numbers as recording the ops; `frozen_layer_nodes = false` switches both off.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use pal_nn::ops::{
    frozen_linear_with, input_grad, kv_heads_to_rows, kv_rows_to_heads, matmul, rms_norm,
    rms_norm_input_grad, KvShape, Precomputed,
};
use pal_nn::Linear;

use crate::error::Result;
use crate::llm::layer::DecoderLayer;

/// The node: inputs `(projector weight, projector bias)`, output keys and values stacked,
/// `(2, b, kv_heads, Na, head_dim)`.
struct LalPrefix {
    layer: DecoderLayer,
    /// `[W_k; W_v]`, `(2 * kv_heads * head_dim, d)`.
    kv_weight: Tensor,
    /// Encoder frames with a column of ones, `(b * Na, d_enc + 1)`, constants.
    frames: Tensor,
    /// Projected audio `(b * Na, d)`, the RMSNorm's input.
    projected: Tensor,
    rope: Option<(Tensor, Tensor)>,
    /// `(b, Na, kv_heads, head_dim)`.
    shape: (usize, usize, usize, usize),
    eps: f64,
    output: Precomputed,
}

/// Whether layer `layer`'s prefix with `projector` can run as one node.
pub fn supported(layer: &DecoderLayer, projector: &Linear) -> bool {
    let frozen = |l: &Linear| !l.weight.is_variable() && l.lora.is_none() && l.holds_f32();
    frozen(&layer.k_proj)
        && frozen(&layer.v_proj)
        && layer.k_norm.is_none()
        && layer.k_proj.bias.is_some() == layer.v_proj.bias.is_some()
        && !layer.input_layernorm.is_variable()
        && projector.lora.is_none()
        && projector.bias.is_some()
        && projector.weight.dtype() == layer.k_proj.weight.dtype()
}

/// Keys and values `(b, kv_heads, Na, head_dim)` of `layer` for `frames` given with a column of
/// ones (`(b * Na, d_enc + 1)`, see [`with_ones`]: the bias rides in the projector's product)
/// projected by `projector`, rotated by `rope` (cos, sin) when given; and the node's output they
/// are the halves of, `(2, b, kv_heads, Na, head_dim)`.
pub fn keys_values(
    layer: &DecoderLayer,
    projector: &Linear,
    frames: &Tensor,
    rope_tables: Option<&(Tensor, Tensor)>,
    shape: (usize, usize, usize, usize),
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, na, heads, dh) = shape;
    let frames = frames.detach();
    let bias = projector.bias.as_ref().expect("checked by supported");
    // `[P | p]`, so that `[E | 1] [P | p]^T = E P^T + p` in one product.
    let weight = Tensor::cat(
        &[&projector.weight.detach(), &bias.detach().unsqueeze(1)?],
        1,
    )?;
    let projected = matmul(&frames, &weight.t()?)?;
    let normed = rms_norm(&projected, &layer.input_layernorm, eps)?;
    // Keys and values with one matrix product: `[W_k; W_v]` (two, in bf16, with the layer's
    // bf16 forms).
    let kv_weight = Tensor::cat(&[&layer.k_proj.weight, &layer.v_proj.weight], 0)?;
    let mut kv = match (&layer.k_proj.bf16, &layer.v_proj.bf16) {
        (Some(kb), Some(vb)) => Tensor::cat(
            &[
                frozen_linear_with(&normed, &layer.k_proj.weight, Some(kb))?,
                frozen_linear_with(&normed, &layer.v_proj.weight, Some(vb))?,
            ],
            1,
        )?,
        _ => matmul(&normed, &kv_weight.t()?)?,
    };
    if let (Some(kb), Some(vb)) = (&layer.k_proj.bias, &layer.v_proj.bias) {
        kv = kv.broadcast_add(&Tensor::cat(&[kb, vb], 0)?)?;
    }
    let kv_shape = KvShape {
        batch: b,
        rows: na,
        heads,
        head_dim: dh,
    };
    let rope_pair = rope_tables.map(|(c, s)| (c, s));
    let stacked = kv_rows_to_heads(&kv, kv_shape, rope_pair)?;
    let node = LalPrefix {
        layer: layer.clone(),
        kv_weight,
        frames,
        projected,
        rope: rope_tables.cloned(),
        shape,
        eps,
        output: Precomputed::new("lal prefix", stacked),
    };
    let kv = projector
        .weight
        .apply_op2(projector.bias.as_ref().expect("checked"), node)?;
    Ok((kv.get(0)?, kv.get(1)?, kv))
}

/// `frames` `(rows, d_enc)` with a column of ones appended, as [`keys_values`] takes them.
pub fn with_ones(frames: &Tensor) -> Result<Tensor> {
    let ones = Tensor::ones((frames.dim(0)?, 1), frames.dtype(), frames.device())?;
    Ok(Tensor::cat(&[&frames.detach(), &ones], 1)?)
}

impl CustomOp2 for LalPrefix {
    fn name(&self) -> &'static str {
        "pal-lal-prefix"
    }

    fn cpu_fwd(
        &self,
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
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.output.cuda()
    }

    fn bwd(
        &self,
        _weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, na, heads, dh) = self.shape;
        let kv_shape = KvShape {
            batch: b,
            rows: na,
            heads,
            head_dim: dh,
        };
        let rope_pair = self.rope.as_ref().map(|(c, s)| (c, s));
        let d_kv = kv_heads_to_rows(grad, kv_shape, rope_pair)?;
        let l = &self.layer;
        let d_normed = match (&l.k_proj.bf16, &l.v_proj.bf16) {
            (Some(kb), Some(vb)) => {
                let k_dim = l.k_proj.weight.dim(0)?;
                let d_k = d_kv.narrow(1, 0, k_dim)?.contiguous()?;
                let d_v = d_kv.narrow(1, k_dim, d_kv.dim(1)? - k_dim)?.contiguous()?;
                (input_grad(&d_k, &l.k_proj.weight, Some(kb))?
                    + input_grad(&d_v, &l.v_proj.weight, Some(vb))?)?
            }
            _ => matmul(&d_kv, &self.kv_weight)?,
        };
        let d_projected =
            rms_norm_input_grad(&self.projected, &l.input_layernorm, &d_normed, self.eps)?;
        // `[dP | dp] = dA^T [E | 1]`: the bias gradient (the column sums of dA) comes with the
        // weight gradient's product (candle's `sum(0)` alone took as long as that product).
        let d_both = matmul(&d_projected.t()?, &self.frames)?;
        let d_enc = d_both.dim(1)? - 1;
        let d_weight = d_both.narrow(1, 0, d_enc)?.contiguous()?;
        let d_bias = d_both.narrow(1, d_enc, 1)?.squeeze(1)?.contiguous()?;
        Ok((Some(d_weight), Some(d_bias)))
    }
}
