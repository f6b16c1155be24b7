//! Which hidden state of an encoder becomes its output tokens: the last, one layer's, or a mean.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Which hidden state an encoder returns. Index 0 is the embedding output, index `i` the output
/// of layer `i`, and index `L` (the number of layers) the final, normed output, as in Hugging
/// Face's `hidden_states`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LayerSelection {
    /// The final output (after the last norm).
    #[default]
    Last,
    /// Hidden state `i`.
    Index(usize),
    /// Mean of hidden states `start..=end`.
    Mean(usize, usize),
}

impl LayerSelection {
    /// Checks the selection against a model with `total` layers.
    pub fn validate(&self, total: usize) -> Result<()> {
        let ok = match *self {
            Self::Last => true,
            Self::Index(i) => i <= total,
            Self::Mean(a, b) => a <= b && b <= total,
        };
        if ok {
            Ok(())
        } else {
            Err(ModelError::Unsupported(format!(
                "layer selection {self:?} is out of range for an encoder with {total} layers"
            )))
        }
    }

    /// How many layers must run.
    pub fn layers_needed(&self, total: usize) -> usize {
        match *self {
            Self::Last => total,
            Self::Index(i) => i,
            Self::Mean(_, b) => b,
        }
    }

    /// Whether hidden state `index` is part of the selection.
    pub fn wants(&self, index: usize, total: usize) -> bool {
        match *self {
            Self::Last => index == total,
            Self::Index(i) => index == i,
            Self::Mean(a, b) => (a..=b).contains(&index),
        }
    }

    /// Combines the wanted hidden states (in order) into the output.
    pub fn combine(&self, states: Vec<Tensor>) -> Result<Tensor> {
        match states.len() {
            0 => Err(ModelError::Unsupported("no hidden state selected".into())),
            1 => Ok(states.into_iter().next().expect("one state")),
            _ => Ok(Tensor::stack(&states, 0)?.mean(0)?),
        }
    }
}
