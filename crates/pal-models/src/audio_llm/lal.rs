//! LAL: an encoder's tokens as extra keys/values at selected LLM layers. Per layer,
//! `A_l = Proj_l(E)`, the layer's input norm (or an own LayerNorm), then the layer's own (frozen,
//! or LoRA-tuned) key/value projections ([`DecoderLayer::keys_values`], the same as for text).
//! Every LAL key/value is made by [`LalAdapter::keys_values`]; in the usual training setup it
//! runs as one node with a written-out backward ([`crate::llm::lal_prefix`]).

use std::sync::Arc;

use candle_core::{DType, Tensor};
use pal_nn::ops::bf16::prefix::{PackedPrefix, PackedRun};
use pal_nn::ops::rms_norm;
use pal_nn::{Init, Linear, Params};

use crate::audio_llm::config::{Attachment, LalAudioNorm, LalProjector, LalRope};
use crate::encoders::blocks::{GeluFfn, LayerNorm};
use crate::error::Result;
use crate::llm::cache::placeholder;
use crate::llm::decoder::Llama;
use crate::llm::lal_prefix;

/// Per-layer LAL projection of one encoder.
#[derive(Clone, Debug)]
pub struct LalAdapter {
    /// LLM layers that receive this encoder's keys/values, ascending.
    pub layers: Vec<usize>,
    /// Projector of each layer.
    pub projector: LalProjection,
    /// Own norms (one per layer), if configured.
    pub own_norms: Option<Vec<LayerNorm>>,
    /// RoPE mode.
    pub rope: LalRope,
    /// Gated LAL ([`crate::audio_llm::LalConfig::gate`]): per layer, the raw gate `g` `(kv_heads)`
    /// (named `{encoder}.lal.layers.{layer}.gate`, starting at 0); the audio values are scaled by
    /// `tanh(g)` and the audio keys get their own softmax.
    pub gates: Option<Vec<Tensor>>,
    /// The gate is `tanh(gate_scale * g)` ([`crate::audio_llm::LalConfig::gate_scale`]).
    pub gate_scale: f64,
}

/// The projector parameters of [`LalAdapter`], one module per LAL layer (named
/// `{encoder}.lal.layers.{layer}.proj`).
#[derive(Clone, Debug)]
pub enum LalProjection {
    /// `Linear(d_enc, d)` per layer.
    Linear(Vec<Linear>),
    /// Linear-GELU-Linear per layer.
    Mlp(Vec<GeluFfn>),
}

/// One LAL layer's key/value prefix, as [`LalAdapter::keys_values`] returns it.
#[derive(Clone, Debug)]
pub struct LalLayerPrefix {
    /// The LLM layer.
    pub layer: usize,
    /// Gated: the keys get a softmax of their own (see [`crate::llm::KeyValuePrefix::own_softmax`]),
    /// and `v` is already scaled by the gate.
    pub own_softmax: bool,
    /// Keys `(b, kv_heads, Na, head_dim)`, rotated in prefix mode.
    pub k: Tensor,
    /// Values `(b, kv_heads, Na, head_dim)`.
    pub v: Tensor,
    /// `k` and `v` stacked, when they are the halves of one training node's output (see
    /// [`crate::llm::KeyValuePrefix::stacked`]).
    pub stacked: Option<Tensor>,
    /// Per batch item, its rows packed in bf16 for inference's attention (see
    /// [`crate::llm::KeyValuePrefix::packed`]).
    pub packed: Option<Vec<PackedPrefix>>,
}

impl LalLayerPrefix {
    /// Packs each item's first `rows[i]` rows (its real ones) for inference's bf16 attention
    /// over the prefix ([`crate::llm::Llama::bf16_prefix`]); the f32 keys and values are let go
    /// (kept as [`placeholder`]s: the packed form is all inference reads).
    pub fn pack(&mut self, rows: &[usize]) -> Result<()> {
        let dims = self.k.dims4()?;
        let (_, kv_heads, _, head_dim) = dims;
        let mut items = Vec::with_capacity(rows.len());
        for (i, &n) in rows.iter().enumerate() {
            let take = |t: &Tensor| -> Result<Vec<f32>> {
                let item = t.narrow(0, i, 1)?.narrow(2, 0, n)?;
                Ok(item.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
            };
            let runs = match n {
                0 => vec![],
                n => vec![Arc::new(PackedRun::new(
                    &take(&self.k)?,
                    &take(&self.v)?,
                    kv_heads,
                    n,
                    head_dim,
                ))],
            };
            items.push(PackedPrefix { runs });
        }
        self.packed = Some(items);
        self.k = placeholder(&self.k, dims.0, dims.2)?;
        self.v = self.k.clone();
        self.stacked = None;
        Ok(())
    }
}

/// The runs of `a` then those of `b`, item by item: the packed form of `a`'s and `b`'s rows
/// joined (`None` unless both are packed).
pub fn join_packed(
    a: &Option<Vec<PackedPrefix>>,
    b: &Option<Vec<PackedPrefix>>,
) -> Option<Vec<PackedPrefix>> {
    let (a, b) = (a.as_ref()?, b.as_ref()?);
    Some(
        a.iter()
            .zip(b)
            .map(|(a, b)| PackedPrefix {
                runs: a.runs.iter().chain(&b.runs).cloned().collect(),
            })
            .collect(),
    )
}

impl LalAdapter {
    /// Creates (or fetches) the LAL parameters of attachment `a` in `params`, for an LLM of
    /// `num_layers` layers and width `d`.
    pub fn new(
        params: &Params,
        a: &Attachment,
        num_layers: usize,
        d: usize,
        kv_heads: usize,
    ) -> Result<Self> {
        let layers = a.lal.resolve_layers(num_layers)?;
        let p = format!("{}.lal", a.name);
        let projector_name = |i: &usize| format!("{p}.layers.{i}.proj");
        let projector = match a.lal.projector {
            LalProjector::Linear => LalProjection::Linear(
                layers
                    .iter()
                    .map(|i| Ok(params.linear(&projector_name(i), a.d_enc, d, true)?))
                    .collect::<Result<_>>()?,
            ),
            LalProjector::Mlp => LalProjection::Mlp(
                layers
                    .iter()
                    .map(|i| GeluFfn::trainable(params, &projector_name(i), a.d_enc, d, d))
                    .collect::<Result<_>>()?,
            ),
        };
        let own_norms = match a.lal.audio_norm {
            LalAudioNorm::LayerInputNorm => None,
            LalAudioNorm::Own => Some(
                layers
                    .iter()
                    .map(|i| LayerNorm::trainable(params, &format!("{p}.layers.{i}.norm"), d))
                    .collect::<Result<_>>()?,
            ),
        };
        let gates =
            match a.lal.gate {
                true => Some(
                    layers
                        .iter()
                        .map(|i| {
                            Ok(params.get(
                                &format!("{p}.layers.{i}.gate"),
                                &[kv_heads],
                                Init::Zeros,
                            )?)
                        })
                        .collect::<Result<_>>()?,
                ),
                false => None,
            };
        Ok(Self {
            layers,
            projector,
            own_norms,
            rope: a.lal.rope,
            gates,
            gate_scale: a.lal.gate_scale,
        })
    }

    /// Positions `na` audio rows take in the sequence: all of them when keys are rotated as a
    /// prefix (text then starts after them), none without RoPE or without LAL layers.
    pub fn positions_taken(&self, na: usize) -> usize {
        if self.rope == LalRope::Prefix && !self.layers.is_empty() {
            na
        } else {
            0
        }
    }

    /// Keys and values of encoder frames `(b, Na, d_enc)` at each LAL layer of `llm`, keys
    /// rotated to `positions` (`(b, Na)`) in prefix mode.
    ///
    /// Each layer has its own parameters and its own small graph. (One stacked tensor for all
    /// layers, sliced per layer, would make every slice's backward a full-size zero-padded
    /// gradient: quadratic in the number of LAL layers.)
    pub fn keys_values(
        &self,
        llm: &Llama,
        frames: &Tensor,
        positions: &Tensor,
    ) -> Result<Vec<LalLayerPrefix>> {
        let c = &llm.config;
        let (b, na, d_enc) = frames.dims3()?;
        // The frames are constants: the projectors compute weight gradients only.
        let flat = frames.reshape((b * na, d_enc))?;
        if self.rope == LalRope::Prefix && positions.elem_count() > 0 {
            let last = positions.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
            if last >= llm.rope.len() {
                return Err(crate::error::ModelError::Unsupported(format!(
                    "the audio's keys take positions up to {last}, past the LLM's {} (rope = \"prefix\"): use a shorter clip, or lal.rope = \"none\" for long ones",
                    llm.rope.len()
                )));
            }
        }
        // Every RoPE table's cos and sin at the frames' positions, each layer's picked below.
        let ropes = match self.rope {
            LalRope::Prefix => Some(llm.ropes_at(positions)?),
            LalRope::None => None,
        };
        let mut out = Vec::with_capacity(self.layers.len());
        let shape = (b, na, c.num_key_value_heads, c.head_dim);
        let mut flat_with_ones = None;
        for (j, &index) in self.layers.iter().enumerate() {
            let layer = &llm.layers[index];
            let rope_tables = ropes.as_ref().map(|r| {
                let (cos, sin) = r.of(layer);
                (cos.clone(), sin.clone())
            });
            if let (LalProjection::Linear(projectors), None) = (&self.projector, &self.own_norms) {
                let projector = &projectors[j];
                if llm.frozen_layer_nodes
                    && projector.weight.track_op()
                    && lal_prefix::supported(layer, projector)
                {
                    if flat_with_ones.is_none() {
                        flat_with_ones = Some(lal_prefix::with_ones(&flat)?);
                    }
                    let (k, v, stacked) = lal_prefix::keys_values(
                        layer,
                        projector,
                        flat_with_ones.as_ref().expect("set above"),
                        rope_tables.as_ref(),
                        shape,
                        c.rms_norm_eps,
                    )?;
                    out.push(self.gated(j, index, k, v, Some(stacked))?);
                    continue;
                }
            }
            let projected = match &self.projector {
                LalProjection::Linear(projectors) => projectors[j].forward(&flat)?,
                LalProjection::Mlp(projectors) => projectors[j].forward(&flat)?,
            };
            // Into the backbone's type (bf16 beside f32 adapters) where the rows enter it.
            let normed = match &self.own_norms {
                Some(norms) => norms[j].forward(&projected)?.to_dtype(llm.dtype())?,
                None => rms_norm(
                    &projected.to_dtype(llm.dtype())?,
                    &layer.input_layernorm,
                    c.rms_norm_eps,
                )?,
            };
            let normed = normed.reshape((b, na, c.hidden_size))?;
            let rope_pair = rope_tables.as_ref().map(|(cos, sin)| (cos, sin));
            let (k, v) = layer.keys_values(c, &normed, rope_pair)?;
            out.push(self.gated(j, index, k, v, None)?);
        }
        Ok(out)
    }

    /// The gate of the `j`-th LAL layer as `tanh(g)` `(kv_heads)`, if gated.
    pub fn gate_values(&self, j: usize) -> Result<Option<Tensor>> {
        Ok(match &self.gates {
            Some(gates) => Some((&gates[j] * self.gate_scale)?.tanh()?),
            None => None,
        })
    }

    /// The prefix of LLM layer `layer` (the `j`-th LAL layer) from its keys and values, the
    /// values scaled by the layer's gate when gated. A stacked `(2, ...)` node output is scaled
    /// as one tensor (keys by 1), so that its gradient still arrives in one piece.
    fn gated(
        &self,
        j: usize,
        layer: usize,
        k: Tensor,
        v: Tensor,
        stacked: Option<Tensor>,
    ) -> Result<LalLayerPrefix> {
        let Some(gate) = self
            .gate_values(j)?
            .map(|g| g.to_dtype(v.dtype()))
            .transpose()?
        else {
            return Ok(LalLayerPrefix {
                layer,
                own_softmax: false,
                k,
                v,
                stacked,
                packed: None,
            });
        };
        let heads = gate.dims1()?;
        Ok(match stacked {
            Some(kv) => {
                let ones = Tensor::ones(heads, gate.dtype(), gate.device())?;
                let factor = Tensor::cat(&[&ones, &gate], 0)?.reshape((2, 1, heads, 1, 1))?;
                let kv = kv.broadcast_mul(&factor)?;
                LalLayerPrefix {
                    layer,
                    own_softmax: true,
                    k: kv.get(0)?,
                    v: kv.get(1)?,
                    stacked: Some(kv),
                    packed: None,
                }
            }
            None => LalLayerPrefix {
                layer,
                own_softmax: true,
                k,
                v: v.broadcast_mul(&gate.reshape((1, heads, 1, 1))?)?,
                stacked: None,
                packed: None,
            },
        })
    }
}
