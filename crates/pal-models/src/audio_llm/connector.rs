//! Connectors from encoder tokens (`d_enc`) into the LLM's width (`d`): a 2-layer GELU MLP with
//! optional frame stacking, and a latent-query connector (Perceiver / Q-Former style) that
//! summarises any number of frames into `S` tokens. Both are trainable ([`pal_nn::Params`]).

use candle_core::{DType, Tensor};
use pal_nn::{Init, Params};

use crate::audio_llm::config::ConnectorConfig;
use crate::encoders::blocks::{GeluFfn, LayerNorm, MultiHeadAttention};
use crate::error::Result;

/// One latent cross-attention layer: queries attend over the frames, then an FFN, both residual.
#[derive(Clone, Debug)]
pub struct LatentLayer {
    /// Norm of the queries.
    pub norm_q: LayerNorm,
    /// Norm of the frames.
    pub norm_kv: LayerNorm,
    /// Cross-attention.
    pub attn: MultiHeadAttention,
    /// Norm before the FFN.
    pub norm_ffn: LayerNorm,
    /// FFN.
    pub ffn: GeluFfn,
}

/// Frames a latent layer's keys and values are computed for at once: a longer clip (a recording
/// of minutes) is attended chunk by chunk, so that its keys, values and scores never exist for
/// all its frames at once. Four encoder windows, the most a short-clip model reads: such clips
/// are attended in one pass, as in training.
pub const SUMMARY_CHUNK: usize = 6000;

impl LatentLayer {
    /// The cross-attention of the queries `q` `(b, S, d_enc)` over `frames` `(b, Na, d_enc)`
    /// (`pad` `(b, Na)`: 0 for real frames, a large negative number for padding), output
    /// projection included, every frame at once.
    pub fn attend_at_once(&self, q: &Tensor, frames: &Tensor, pad: &Tensor) -> Result<Tensor> {
        let (b, na, _) = frames.dims3()?;
        let (k, v) = self.attn.keys_values(&self.norm_kv.forward(frames)?)?;
        let mask = pad.reshape((b, 1, 1, na))?;
        self.attn
            .attend(&self.norm_q.forward(q)?, &k, &v, Some(&mask))
    }

    /// [`Self::attend_at_once`], [`SUMMARY_CHUNK`] frames at a time: each chunk's scores give their
    /// largest, the sum of their exponentials after it and those exponentials times the values,
    /// combined with the earlier chunks' (flash attention's arithmetic). The softmax over all
    /// frames, summed in another order. Without `keep_graph` (inference: no backward follows),
    /// each chunk's figures are cut from the autograd graph, which would otherwise keep every
    /// chunk's keys and values alive until the end (the adapter's parameters are trainable
    /// tensors even when serving).
    pub fn attend_in_chunks(
        &self,
        q: &Tensor,
        frames: &Tensor,
        pad: &Tensor,
        keep_graph: bool,
    ) -> Result<Tensor> {
        let attn = &self.attn;
        let (b, s, d) = q.dims3()?;
        let na = frames.dims()[1];
        let scale = 1.0 / ((d / attn.heads) as f64).sqrt();
        let queries = (attn.split_heads(&attn.q.forward(&self.norm_q.forward(q)?)?)? * scale)?;
        // Per head and query: the largest score so far, the sum of exponentials after it, and
        // those exponentials times the values.
        let mut state: Option<(Tensor, Tensor, Tensor)> = None;
        for start in (0..na).step_by(SUMMARY_CHUNK) {
            let len = SUMMARY_CHUNK.min(na - start);
            let kv = self.norm_kv.forward(&frames.narrow(1, start, len)?)?;
            let (k, v) = attn.keys_values(&kv)?;
            let mask = pad.narrow(1, start, len)?.reshape((b, 1, 1, len))?;
            let scores = queries
                .matmul(&k.transpose(2, 3)?.contiguous()?)?
                .broadcast_add(&mask)?;
            let largest = scores.max_keepdim(3)?;
            let e = scores.broadcast_sub(&largest)?.exp()?;
            let (sum, out) = (e.sum_keepdim(3)?, e.matmul(&v)?);
            let (largest, sum, out) = match keep_graph {
                true => (largest, sum, out),
                false => (largest.detach(), sum.detach(), out.detach()),
            };
            state = Some(match state {
                None => (largest, sum, out),
                Some((largest0, sum0, out0)) => {
                    let top = largest0.maximum(&largest)?;
                    let (w0, w) = (
                        largest0.broadcast_sub(&top)?.exp()?,
                        largest.broadcast_sub(&top)?.exp()?,
                    );
                    (
                        top,
                        ((sum0 * &w0)? + (sum * &w)?)?,
                        (out0.broadcast_mul(&w0)? + out.broadcast_mul(&w)?)?,
                    )
                }
            });
        }
        let (_, sum, out) = state.expect("a clip has frames");
        let out = out
            .broadcast_div(&sum)?
            .transpose(1, 2)?
            .reshape((b, s, d))?;
        Ok(attn.o.forward(&out)?)
    }
}

/// A connector module, built from its config.
#[derive(Clone, Debug)]
pub enum Connector {
    /// Frame-stacking MLP.
    Mlp {
        /// Frames per token.
        stack: usize,
        /// The MLP (`d_enc * stack -> d -> d`).
        mlp: GeluFfn,
    },
    /// Latent queries.
    Latent {
        /// `(S, d_enc)` learned queries.
        queries: Tensor,
        /// Cross-attention layers.
        layers: Vec<LatentLayer>,
        /// Output MLP (`d_enc -> d -> d`).
        out: GeluFfn,
    },
}

impl Connector {
    /// Creates (or fetches) the connector's parameters under `name`.
    pub fn new(
        config: &ConnectorConfig,
        params: &Params,
        name: &str,
        d_enc: usize,
        d: usize,
    ) -> Result<Self> {
        match *config {
            ConnectorConfig::Mlp { stack } => Ok(Self::Mlp {
                stack: stack.max(1),
                mlp: GeluFfn::trainable(
                    params,
                    &format!("{name}.mlp"),
                    d_enc * stack.max(1),
                    d,
                    d,
                )?,
            }),
            ConnectorConfig::Latent { queries, layers } => {
                let heads = (d_enc / 64).max(1);
                let layers = (0..layers)
                    .map(|i| {
                        let p = format!("{name}.layers.{i}");
                        Ok(LatentLayer {
                            norm_q: LayerNorm::trainable(params, &format!("{p}.norm_q"), d_enc)?,
                            norm_kv: LayerNorm::trainable(params, &format!("{p}.norm_kv"), d_enc)?,
                            attn: MultiHeadAttention {
                                q: params.linear(&format!("{p}.attn.q"), d_enc, d_enc, true)?,
                                k: params.linear(&format!("{p}.attn.k"), d_enc, d_enc, true)?,
                                v: params.linear(&format!("{p}.attn.v"), d_enc, d_enc, true)?,
                                o: params.linear(&format!("{p}.attn.o"), d_enc, d_enc, true)?,
                                heads,
                            },
                            norm_ffn: LayerNorm::trainable(
                                params,
                                &format!("{p}.norm_ffn"),
                                d_enc,
                            )?,
                            ffn: GeluFfn::trainable(
                                params,
                                &format!("{p}.ffn"),
                                d_enc,
                                2 * d_enc,
                                d_enc,
                            )?,
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok(Self::Latent {
                    queries: params.get(
                        &format!("{name}.queries"),
                        &[queries, d_enc],
                        Init::Uniform(0.5),
                    )?,
                    layers,
                    out: GeluFfn::trainable(params, &format!("{name}.out"), d_enc, d, d)?,
                })
            }
        }
    }

    /// How many tokens `na` frames become.
    pub fn output_len(&self, na: usize) -> usize {
        match self {
            Self::Mlp { stack, .. } => na.div_ceil(*stack),
            Self::Latent { queries, .. } => queries.dims()[0],
        }
    }

    /// Maps frames `(b, Na, d_enc)` with validity `(b, Na)` to tokens `(b, N', d)` and their
    /// validity `(b, N')`. `keep_graph`: whether a backward may follow (see
    /// [`LatentLayer::attend_in_chunks`]).
    pub fn forward(
        &self,
        frames: &Tensor,
        valid: &Tensor,
        keep_graph: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (b, na, d_enc) = frames.dims3()?;
        match self {
            Self::Mlp { stack, mlp } => {
                let k = *stack;
                let groups = na.div_ceil(k);
                let (frames, valid) = if groups * k != na {
                    let pad = groups * k - na;
                    (
                        Tensor::cat(
                            &[
                                frames,
                                &Tensor::zeros((b, pad, d_enc), frames.dtype(), frames.device())?,
                            ],
                            1,
                        )?,
                        Tensor::cat(
                            &[
                                valid,
                                &Tensor::zeros((b, pad), valid.dtype(), valid.device())?,
                            ],
                            1,
                        )?,
                    )
                } else {
                    (frames.clone(), valid.clone())
                };
                let stacked = frames.reshape((b, groups, k * d_enc))?;
                // A stacked token is real if any of its frames is.
                let valid = valid
                    .to_dtype(DType::F32)?
                    .reshape((b, groups, k))?
                    .max(2)?;
                Ok((mlp.forward(&stacked)?, valid))
            }
            Self::Latent {
                queries,
                layers,
                out,
            } => {
                let s = queries.dims()[0];
                let mut q = queries
                    .unsqueeze(0)?
                    .broadcast_as((b, s, d_enc))?
                    .contiguous()?;
                // Every query sees every real frame.
                let neg = pal_nn::mask_value(DType::F32);
                let pad = ((1.0 - valid.to_dtype(DType::F32)?)? * neg)?.to_dtype(frames.dtype())?;
                for layer in layers {
                    let h = match na > SUMMARY_CHUNK {
                        true => layer.attend_in_chunks(&q, frames, &pad, keep_graph)?,
                        false => layer.attend_at_once(&q, frames, &pad)?,
                    };
                    q = (q + h)?;
                    q = (&q + layer.ffn.forward(&layer.norm_ffn.forward(&q)?)?)?;
                }
                let valid = Tensor::ones((b, s), DType::F32, frames.device())?;
                Ok((out.forward(&q)?, valid))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A recording's summary attended chunk by chunk is the one attended at once (to float
    /// rounding), with a padded batch item whose padding fills a whole chunk.
    #[test]
    fn chunks_give_the_summary_of_the_whole() {
        let (d_enc, na) = (128, 2 * SUMMARY_CHUNK + 1000);
        let params = Params::new(3, DType::F32, &Device::Cpu);
        let config = ConnectorConfig::Latent {
            queries: 4,
            layers: 1,
        };
        let Connector::Latent {
            queries, layers, ..
        } = Connector::new(&config, &params, "summary", d_enc, 32).unwrap()
        else {
            unreachable!("a latent config")
        };
        let frames = Tensor::randn(0f32, 1.0, (2, na, d_enc), &Device::Cpu).unwrap();
        // The second item's last 7,000 frames are padding.
        let real: Vec<f32> = (0..2 * na)
            .map(|i| {
                if i >= na && i - na >= na - 7000 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let valid = Tensor::from_vec(real, (2, na), &Device::Cpu).unwrap();
        let pad = ((1.0 - valid).unwrap() * pal_nn::mask_value(DType::F32)).unwrap();
        let q = queries
            .unsqueeze(0)
            .unwrap()
            .broadcast_as((2, 4, d_enc))
            .unwrap()
            .contiguous()
            .unwrap();
        let whole = layers[0].attend_at_once(&q, &frames, &pad).unwrap();
        for keep_graph in [true, false] {
            let chunked = layers[0]
                .attend_in_chunks(&q, &frames, &pad, keep_graph)
                .unwrap();
            let diff = (&whole - chunked)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "chunked summary differs by {diff}");
        }
    }
}
