//! Building blocks shared by the encoder models (Whisper, AST): LayerNorm with bias, multi-head
//! attention with separate q/k/v/o projections, and a two-layer GELU FFN. All go through `pal-nn`.

use candle_core::Tensor;
use pal_nn::ops::layer_norm;
use pal_nn::{attention, Linear};

use crate::error::Result;
use crate::weights::Weights;

/// LayerNorm with weight and bias.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Scale.
    pub weight: Tensor,
    /// Shift.
    pub bias: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias` of width `dim`.
    pub fn load(weights: &Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: weights.get(&format!("{prefix}.weight"), &[dim])?,
            bias: weights.get(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

/// Loads a linear layer `{prefix}.weight` (`out x inp`) and, if `bias`, `{prefix}.bias`.
pub fn load_linear(
    weights: &Weights,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Linear> {
    let weight = weights.get(&format!("{prefix}.weight"), &[out, inp])?;
    let bias = if bias {
        Some(weights.get(&format!("{prefix}.bias"), &[out])?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// Multi-head attention with its own q/k/v/o projections (no RoPE), as in Whisper and ViTs.
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection.
    pub o: Linear,
    /// Number of heads.
    pub heads: usize,
}

impl MultiHeadAttention {
    /// Splits `(b, n, d)` into heads `(b, heads, n, d / heads)`.
    pub fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        Ok(x.reshape((b, n, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keys and values of `x` (`(b, n, d)`), split into heads.
    pub fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split_heads(&self.k.forward(x)?)?,
            self.split_heads(&self.v.forward(x)?)?,
        ))
    }

    /// Attention of the queries from `x` over the given keys and values, then the output
    /// projection. `mask` as in [`pal_nn::attention`].
    pub fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let q = self.split_heads(&self.q.forward(x)?)?;
        let scale = 1.0 / ((d / self.heads) as f64).sqrt();
        let out = attention(&q, k, v, mask, scale)?;
        let out = out.transpose(1, 2)?.reshape((b, n, d))?;
        Ok(self.o.forward(&out)?)
    }

    /// Self-attention over `x`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (k, v) = self.keys_values(x)?;
        self.attend(x, &k, &v, mask)
    }
}

/// `fc2(gelu(fc1(x)))` with the exact (erf) GELU.
#[derive(Clone, Debug)]
pub struct GeluFfn {
    /// Up projection.
    pub fc1: Linear,
    /// Down projection.
    pub fc2: Linear,
}

impl GeluFfn {
    /// Applies the FFN.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.fc2.forward(&self.fc1.forward(x)?.gelu_erf()?)?)
    }
}
