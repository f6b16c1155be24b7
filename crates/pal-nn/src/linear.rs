//! A linear layer whose weight is trained when it is a candle `Var` and frozen otherwise.

use candle_core::{Result, Tensor};

use crate::ops::frozen_linear;

/// `y = x W^T + b` with `W` stored as `(out, in)`, as in PyTorch and on disk.
///
/// A frozen weight (a plain tensor) goes through [`frozen_linear`], so backprop computes only the
/// input gradient; a trainable weight (a `Var`) goes through candle's matmul, which also yields the
/// weight gradient.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out_features, in_features)`.
    pub weight: Tensor,
    /// `(out_features)`, if the layer has a bias.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A layer from its weight and optional bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Applies the layer to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if self.weight.is_variable() {
            x.broadcast_matmul(&self.weight.t()?)?
        } else {
            frozen_linear(x, &self.weight)?
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }

    /// `(in_features, out_features)`.
    pub fn dims(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[1], d[0])
    }
}
