//! The KV cache: per layer, the keys and values of the rows seen so far, after an optional fixed
//! prefix (LAL's audio keys/values), plus which cached rows are real and each item's next position.

use candle_core::{DType, Tensor};

use crate::error::Result;

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
