//! A linear layer whose weight is trained when it is a candle `Var` and frozen otherwise.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::ops::bf16::Bf16Weight;
use crate::ops::{constant_input_linear, frozen_linear_with, QuantizedWeight};

/// A low-rank update `scale * B A` of a linear layer's weight (LoRA): `A` is `(rank, in)`,
/// `B` is `(out, rank)`, `scale = alpha / rank`.
#[derive(Clone, Debug)]
pub struct Lora {
    /// Down projection `(rank, in)`.
    pub a: Tensor,
    /// Up projection `(out, rank)`, zero at start so the layer starts as the base layer.
    pub b: Tensor,
    /// `alpha / rank`.
    pub scale: f64,
}

/// A frozen weight's block-quantized form (from a GGUF file) and the largest product, in rows
/// of the input, that uses it instead of the f32 weight: decoding multiplies one row per sequence,
/// and reading a sixth of the bytes makes it that much faster; a long prefill may be faster in
/// f32 (see `QuantizedWeight::fast_at_any_rows`).
#[derive(Clone, Debug)]
pub struct QuantizedForm {
    /// The weight as stored in the file.
    pub weight: Arc<QuantizedWeight>,
    /// Products of up to this many rows that need no gradient use `weight`.
    pub max_rows: usize,
    /// Whether the f32 weight is held too (for gradients, and for products past `max_rows`);
    /// when not, `Linear::weight` is a zero-stride stand-in of its shape.
    pub f32_held: bool,
}

/// `y = x W^T + b (+ scale * x A^T B^T)` with `W` stored as `(out, in)`, as in PyTorch and on disk.
///
/// A frozen weight (a plain tensor) goes through [`frozen_linear`], so backprop computes only the
/// input gradient. A trainable weight (a `Var`) on a constant input (encoder features) goes through
/// [`constant_input_linear`], so backprop computes only the weight gradient; on an input that
/// itself needs a gradient, through candle's matmul, which yields both. An optional [`Lora`] adds
/// a trainable low-rank path.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out_features, in_features)`.
    pub weight: Tensor,
    /// `(out_features)`, if the layer has a bias.
    pub bias: Option<Tensor>,
    /// Low-rank adapter, if attached.
    pub lora: Option<Lora>,
    /// The frozen weight's quantized form, for inference (see [`QuantizedForm`]).
    pub quantized: Option<QuantizedForm>,
    /// The frozen weight in bf16, when the model's products run in bf16 on the CPU
    /// ([`crate::ops::bf16`]).
    pub bf16: Option<Bf16Weight>,
}

impl Linear {
    /// A layer from its weight and optional bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            quantized: None,
            bf16: None,
        }
    }

    /// The LoRA path alone: `scale * x A^T B^T` (zero when no adapter is attached).
    pub fn lora_delta(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match &self.lora {
            // In the adapters' type (f32 beside a bf16 backbone), returned in `x`'s.
            Some(l) => {
                let input = x.to_dtype(l.a.dtype())?;
                let delta = (input
                    .broadcast_matmul(&l.a.t()?)?
                    .broadcast_matmul(&l.b.t()?)?
                    * l.scale)?;
                Ok(Some(delta.to_dtype(x.dtype())?))
            }
            None => Ok(None),
        }
    }

    /// Applies the layer to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if let Some(q) = self.quantized_for(x) {
            q.matmul_t(x)?
        } else if self.weight.is_variable() && !x.track_op() {
            let (in_dim, out_dim) = self.dims();
            let mut dims = x.dims().to_vec();
            let rows = x.elem_count() / in_dim.max(1);
            let y = constant_input_linear(&x.reshape((rows, in_dim))?, &self.weight)?;
            *dims.last_mut().expect("linear input has a last dimension") = out_dim;
            y.reshape(dims)?
        } else if self.weight.is_variable() {
            x.broadcast_matmul(&self.weight.t()?)?
        } else {
            frozen_linear_with(x, &self.weight, self.bf16.as_ref())?
        };
        let y = match self.lora_delta(x)? {
            Some(delta) => (y + delta)?,
            None => y,
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }

    /// The quantized weight when it serves this product: a frozen weight on the CPU, with at
    /// most `max_rows` rows, and an input that needs no gradient, or no f32 weight to give one
    /// with (the quantized-only form is for inference: its products record no gradient).
    fn quantized_for(&self, x: &Tensor) -> Option<&QuantizedWeight> {
        let q = self.quantized.as_ref()?;
        let rows = x.elem_count() / self.dims().0.max(1);
        let usable = !self.weight.is_variable()
            && x.device().is_cpu()
            && (!x.track_op() || !self.holds_f32());
        (usable && rows <= q.max_rows).then_some(q.weight.as_ref())
    }

    /// Whether the f32 weight is held: not when only the quantized form is (then `weight` is a
    /// zero-stride stand-in of its shape, and nothing may multiply with it directly).
    pub fn holds_f32(&self) -> bool {
        self.quantized.as_ref().is_none_or(|q| q.f32_held)
    }

    /// The input gradient `g W` of the frozen product (`g`: `(rows, out)`), in bf16 when the
    /// layer holds a bf16 form.
    pub fn input_grad(&self, g: &Tensor) -> Result<Tensor> {
        crate::ops::input_grad(g, &self.weight, self.bf16.as_ref())
    }

    /// Packs the frozen f32 weight in bf16 for the CPU's bf16 products (a trainable or
    /// non-f32 weight, or one held only quantized, is left as it is).
    pub fn hold_bf16(&mut self) -> Result<()> {
        if self.weight.is_variable()
            || !self.holds_f32()
            || self.weight.dtype() != candle_core::DType::F32
        {
            return Ok(());
        }
        let (input, out) = self.dims();
        let w = self.weight.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        self.bf16 = Some(Bf16Weight::new(&w, out, input));
        Ok(())
    }

    /// `(in_features, out_features)`.
    pub fn dims(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[1], d[0])
    }
}
