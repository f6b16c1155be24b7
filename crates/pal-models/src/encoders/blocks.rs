//! Building blocks shared by the encoder models (Whisper, AST) and the connectors: LayerNorm with
//! bias, multi-head attention with separate q/k/v/o projections, and a two-layer GELU MLP. All go
//! through `pal-nn`; each loads from weights or is created trainable in [`Params`].

use candle_core::Tensor;
use pal_nn::ops::{gelu_erf, layer_norm};
use pal_nn::{attention, Init, Linear, Params};

use crate::error::Result;
use crate::formats::weights::Weights;

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

    /// A trainable LayerNorm of width `dim` named `{name}.weight` / `{name}.bias` (ones and
    /// zeros at start).
    pub fn trainable(params: &Params, name: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: params.get(&format!("{name}.weight"), &[dim], Init::Ones)?,
            bias: params.get(&format!("{name}.bias"), &[dim], Init::Zeros)?,
            eps: 1e-5,
        })
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
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

/// `fc2(gelu(fc1(x)))` with the exact (erf) GELU: the FFN of Whisper and AST layers, and the
/// MLP of connectors and LAL projectors.
#[derive(Clone, Debug)]
pub struct GeluFfn {
    /// Up projection.
    pub fc1: Linear,
    /// Down projection.
    pub fc2: Linear,
}

impl GeluFfn {
    /// A trainable `inp -> hidden -> out` MLP named `{name}.fc1`, `{name}.fc2` (with biases).
    pub fn trainable(
        params: &Params,
        name: &str,
        inp: usize,
        hidden: usize,
        out: usize,
    ) -> Result<Self> {
        Ok(Self {
            fc1: params.linear(&format!("{name}.fc1"), inp, hidden, true)?,
            fc2: params.linear(&format!("{name}.fc2"), hidden, out, true)?,
        })
    }

    /// Applies the FFN.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.fc2.forward(&gelu_erf(&self.fc1.forward(x)?)?)?)
    }
}
