//! Precomputed RoPE tables: cos and sin of every position's angles, looked up by position.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Precomputed RoPE cos/sin, `(positions, head_dim / 2)`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTable {
    /// Tables for positions `0..len` of the inverse frequencies `inv_freq` (`head_dim / 2`, see
    /// [`crate::llm::LlamaConfig::rope_inv_freq`]).
    pub fn new(inv_freq: &[f64], len: usize, dtype: DType, device: &Device) -> Result<Self> {
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
