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
    /// validity `(b, N')`.
    pub fn forward(&self, frames: &Tensor, valid: &Tensor) -> Result<(Tensor, Tensor)> {
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
                let mask = pad.reshape((b, 1, 1, na))?;
                for layer in layers {
                    let kv = layer.norm_kv.forward(frames)?;
                    let (k, v) = layer.attn.keys_values(&kv)?;
                    let h = layer
                        .attn
                        .attend(&layer.norm_q.forward(&q)?, &k, &v, Some(&mask))?;
                    q = (q + h)?;
                    q = (&q + layer.ffn.forward(&layer.norm_ffn.forward(&q)?)?)?;
                }
                let valid = Tensor::ones((b, s), DType::F32, frames.device())?;
                Ok((out.forward(&q)?, valid))
            }
        }
    }
}
