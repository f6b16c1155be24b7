//! An analytic cost model of PLITS, LAL and PAL: FLOPs of a forward and of a backward pass and the
//! activation bytes kept for backward, for given shapes. Used by `pal bench` to put measurements
//! next to predictions.
//!
//! Conventions: a matmul of `(m, k) x (k, n)` costs `2 m k n` FLOPs; training freezes the
//! backbone, so its backward computes input gradients only (one matmul per forward matmul), while
//! attention's backward costs two forward attentions and connector matmuls cost two (input and
//! weight gradients). LAL's audio path costs one in backward: its projector sees constant encoder
//! features (weight gradient only) and the frozen k/v projections give input gradients only.
//! Norms, RoPE and elementwise ops are ignored (a few percent).

use serde::Serialize;

use pal_models::LlamaConfig;

/// Sizes of one training or inference step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shapes {
    /// Sequences per batch.
    pub batch: usize,
    /// Encoder tokens per clip (`Na`).
    pub audio_tokens: usize,
    /// Text tokens per sequence (`Nt`); the loss covers all of them.
    pub text_tokens: usize,
    /// Width of the encoder tokens.
    pub d_enc: usize,
}

/// A mode with the options that change its cost.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum CostMode {
    /// MLP connector with `stack` frames per token.
    Plits {
        /// Frames stacked per token.
        stack: usize,
    },
    /// Audio keys/values at `layers` layers.
    Lal {
        /// Number of LAL layers.
        layers: usize,
    },
    /// `summary` latent tokens in the sequence plus LAL at `layers` layers.
    Pal {
        /// Number of LAL layers.
        layers: usize,
        /// Summary tokens.
        summary: usize,
    },
}

/// Predicted cost of one step.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Cost {
    /// FLOPs of the forward pass.
    pub forward_flops: f64,
    /// FLOPs of the backward pass (frozen backbone, trainable adapter).
    pub backward_flops: f64,
    /// Bytes of activations kept for the backward pass.
    pub activation_bytes: f64,
}

impl Cost {
    /// Forward plus backward.
    pub fn train_flops(&self) -> f64 {
        self.forward_flops + self.backward_flops
    }
}

/// The cost of one step of `mode` on `llm` at `shapes`, with `bytes` per activation value.
pub fn cost(llm: &LlamaConfig, mode: CostMode, shapes: Shapes, bytes: usize) -> Cost {
    let c = llm;
    let f = |x: usize| x as f64;
    let (d, ff, dh) = (f(c.hidden_size), f(c.intermediate_size), f(c.head_dim));
    let (hq, hkv) = (f(c.num_attention_heads), f(c.num_key_value_heads));
    let layers = c.num_hidden_layers;
    let (na, nt, d_enc) = (
        f(shapes.audio_tokens),
        f(shapes.text_tokens),
        f(shapes.d_enc),
    );

    // Rows in the sequence, LAL layers, and attention pairs per plain / LAL layer.
    // (rows in the sequence, LAL layers, connector FLOPs, LAL audio-path FLOPs, audio keys).
    let (rows, lal_layers, connector_flops, lal_path_flops, lal_audio_rows) = match mode {
        CostMode::Plits { stack } => {
            let audio = (na / f(stack.max(1))).ceil();
            let connector = 2.0 * audio * (f(stack.max(1)) * d_enc * d + d * d);
            (audio + nt, 0usize, connector, 0.0, 0.0)
        }
        CostMode::Lal { layers: l } => (nt, l, 0.0, lal_flops(na, d_enc, d, hkv * dh, l), na),
        CostMode::Pal { layers: l, summary } => {
            let s = f(summary);
            let latent = 2.0 * na * d_enc * 2.0 * d_enc
                + 4.0 * s * d_enc * d_enc
                + 4.0 * s * na * d_enc
                + 8.0 * s * d_enc * d_enc;
            let out = 2.0 * s * (d_enc * d + d * d);
            (
                s + nt,
                l,
                latent + out,
                lal_flops(na, d_enc, d, hkv * dh, l),
                na,
            )
        }
    };
    let causal_pairs = rows * (rows + 1.0) / 2.0;
    let projections = 2.0 * rows * d * (2.0 * hq * dh + 2.0 * hkv * dh);
    let ffn = 6.0 * rows * d * ff;
    let attn_plain = 4.0 * causal_pairs * hq * dh;
    let attn_lal = 4.0 * (causal_pairs + rows * lal_audio_rows) * hq * dh;
    let lm_head = 2.0 * nt * d * f(c.vocab_size);
    let n_lal = f(lal_layers);
    let n_plain = f(layers) - n_lal;
    let attention = n_plain * attn_plain + n_lal * attn_lal;
    let backbone = f(layers) * (projections + ffn) + lm_head;
    let b = f(shapes.batch);
    let forward = b * (backbone + attention + connector_flops + lal_path_flops);
    let backward = b * (backbone + 2.0 * attention + 2.0 * connector_flops + lal_path_flops);

    // Kept per layer: residual, normed inputs, q/k/v/o, FFN intermediates, scores and probs.
    let per_row = 4.0 * d + 2.0 * hq * dh + 2.0 * hkv * dh + 4.0 * ff;
    let kept_plain = rows * per_row + 2.0 * hq * causal_pairs;
    let kept_lal = rows * per_row
        + 2.0 * hq * (causal_pairs + rows * lal_audio_rows)
        + lal_audio_rows * (2.0 * d + 2.0 * hkv * dh);
    let activations =
        b * (n_plain * kept_plain + n_lal * kept_lal + nt * f(c.vocab_size)) * f(bytes);
    Cost {
        forward_flops: forward,
        backward_flops: backward,
        activation_bytes: activations,
    }
}

/// LAL's audio path: projector `(d_enc -> d)` and key/value projections for `layers` layers.
fn lal_flops(na: f64, d_enc: f64, d: f64, kv_width: f64, layers: usize) -> f64 {
    layers as f64 * (2.0 * na * d_enc * d + 2.0 * na * d * 2.0 * kv_width)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> LlamaConfig {
        LlamaConfig {
            model_type: "llama".into(),
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 1e5,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
            hidden_act: Default::default(),
            sandwich_norms: false,
            embedding_scale: None,
            sliding_window: None,
        }
    }

    #[test]
    fn lal_is_cheaper_than_plits_and_the_gap_grows_with_audio_length() {
        let c = smollm2();
        let ratio = |na| {
            let s = Shapes {
                batch: 4,
                audio_tokens: na,
                text_tokens: 64,
                d_enc: 384,
            };
            let lal = cost(&c, CostMode::Lal { layers: 30 }, s, 4);
            let plits = cost(&c, CostMode::Plits { stack: 1 }, s, 4);
            assert!(lal.activation_bytes < plits.activation_bytes);
            lal.train_flops() / plits.train_flops()
        };
        let (r64, r256, r750) = (ratio(64), ratio(256), ratio(750));
        assert!(
            r256 < 1.0 && r750 < r256 && r256 < r64,
            "{r64} {r256} {r750}"
        );
    }

    #[test]
    fn plits_flops_match_a_hand_count_for_one_layer() {
        let mut c = smollm2();
        c.num_hidden_layers = 1;
        c.vocab_size = 1;
        let s = Shapes {
            batch: 1,
            audio_tokens: 2,
            text_tokens: 2,
            d_enc: 4,
        };
        let got = cost(&c, CostMode::Plits { stack: 1 }, s, 4).forward_flops;
        let n = 4.0;
        let proj = 2.0 * n * 576.0 * (2.0 * 576.0 + 2.0 * 192.0);
        let ffn = 6.0 * n * 576.0 * 1536.0;
        let attn = 4.0 * 10.0 * 576.0;
        let connector = 2.0 * 2.0 * (4.0 * 576.0 + 576.0 * 576.0);
        let head = 2.0 * 2.0 * 576.0;
        assert!((got - (proj + ffn + attn + connector + head)).abs() < 1.0);
    }
}
