//! The audio-LLM: encoders joined to a Llama-family backbone by PLITS, LAL or PAL
//! (see the project's PAPER.md). One model, switchable by configuration; every encoder has a route:
//!
//! - `plits`: connector tokens go into the input sequence at the audio placeholder.
//! - `lal`: per-layer projections of the encoder tokens become extra keys/values (a fixed prefix)
//!   at the selected layers; queries are text only, audio never reaches an FFN.
//! - `pal`: latent summary tokens through PLITS plus the full sequence through LAL.
//!
//! The model works on encoder outputs (`(Na, d_enc)` per clip), so encoders can be cached or
//! run elsewhere; [`crate::encoder`] produces them.

use candle_core::Tensor;
use pal_nn::ops::{rms_norm, rope};
use pal_nn::{Linear, Params};
use serde::{Deserialize, Serialize};

use crate::connector::{trainable_layer_norm, Connector, ConnectorConfig, Mlp};
use crate::error::{ModelError, Result};
use crate::layers::LayerNorm;
use crate::llama::{KeyValuePrefix, KvCache, Llama};

/// How an encoder's tokens reach the LLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Tokens in the input sequence.
    Plits,
    /// Keys/values at selected layers only.
    Lal,
    /// Summary tokens in the sequence plus the full sequence through LAL.
    Pal,
}

/// Projector of LAL: encoder tokens to the LLM width, one per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LalProjector {
    /// `Linear(d_enc, d)`.
    #[default]
    Linear,
    /// Linear-GELU-Linear.
    Mlp,
}

/// Norm applied to projected audio before the layer's key/value projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LalAudioNorm {
    /// The layer's own (frozen) input RMSNorm, as text gets.
    #[default]
    LayerInputNorm,
    /// A trainable LayerNorm per layer.
    Own,
}

/// RoPE of the audio keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LalRope {
    /// Audio keys at positions `0..Na`, text from `Na` on.
    #[default]
    Prefix,
    /// No rotation of audio keys; text positions as without audio.
    None,
}

/// LAL options of one encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LalConfig {
    /// Layers that receive audio keys/values; default all (from `start`).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// With `layers` unset: first layer that receives audio ("delayed integration").
    #[serde(default)]
    pub start: usize,
    /// Projector kind.
    #[serde(default)]
    pub projector: LalProjector,
    /// Norm of projected audio.
    #[serde(default)]
    pub audio_norm: LalAudioNorm,
    /// RoPE of audio keys.
    #[serde(default)]
    pub rope: LalRope,
}

impl LalConfig {
    /// The LAL layers for a model with `num_layers` layers, checked.
    pub fn resolve_layers(&self, num_layers: usize) -> Result<Vec<usize>> {
        let layers: Vec<usize> = match &self.layers {
            Some(l) => l.clone(),
            None => (self.start..num_layers).collect(),
        };
        if let Some(bad) = layers.iter().find(|&&l| l >= num_layers) {
            return Err(ModelError::Unsupported(format!(
                "lal layer {bad} does not exist (the LLM has {num_layers} layers)"
            )));
        }
        let mut sorted = layers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        Ok(sorted)
    }
}

/// How one encoder is attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Name (prefix of its parameters, e.g. `whisper`).
    pub name: String,
    /// Width of the encoder's tokens.
    pub d_enc: usize,
    /// Route.
    pub route: Route,
    /// Connector for `plits`.
    #[serde(default)]
    pub connector: ConnectorConfig,
    /// Summary connector for `pal` (latent queries, 32 by default).
    #[serde(default = "default_summary")]
    pub summary: ConnectorConfig,
    /// LAL options for `lal` and `pal`.
    #[serde(default)]
    pub lal: LalConfig,
}

/// PAL's default summary connector: 32 latent queries, one cross-attention layer.
pub(crate) fn default_summary() -> ConnectorConfig {
    ConnectorConfig::Latent {
        queries: 32,
        layers: 1,
    }
}

impl Attachment {
    /// An attachment with default options for `route`.
    pub fn new(name: &str, d_enc: usize, route: Route) -> Self {
        Self {
            name: name.into(),
            d_enc,
            route,
            connector: ConnectorConfig::default(),
            summary: default_summary(),
            lal: LalConfig::default(),
        }
    }
}

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
}

/// The projector parameters of [`LalAdapter`], one module per LAL layer (named
/// `{encoder}.lal.layers.{layer}.proj`).
#[derive(Clone, Debug)]
pub enum LalProjection {
    /// `Linear(d_enc, d)` per layer.
    Linear(Vec<Linear>),
    /// Linear-GELU-Linear per layer.
    Mlp(Vec<Mlp>),
}

/// Modules of one attached encoder.
#[derive(Clone, Debug)]
pub struct AttachedEncoder {
    /// Its configuration.
    pub config: Attachment,
    /// Connector whose tokens enter the sequence (`plits`: the connector; `pal`: the summary).
    pub in_sequence: Option<Connector>,
    /// LAL projection (`lal`, `pal`).
    pub lal: Option<LalAdapter>,
}

/// One piece of an example's token sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Text tokens; `trained` marks the tokens the loss is computed on (assistant answers).
    Text {
        /// Token ids.
        ids: Vec<u32>,
        /// Whether the loss covers these tokens.
        trained: bool,
    },
    /// Where the clip's in-sequence tokens (PLITS, PAL summary) go.
    Audio,
}

/// One example: its segments and, per attached encoder, that encoder's output `(Na, d_enc)`.
#[derive(Debug, Clone)]
pub struct Example {
    /// Text and the audio placeholder, in order.
    pub segments: Vec<Segment>,
    /// Encoder outputs, one per attachment, in the model's attachment order.
    pub audio: Vec<Tensor>,
}

/// Which side padding goes to when a batch is assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Right padding (training).
    Right,
    /// Left padding (generation: every row ends at its last real token).
    Left,
}

/// One LAL layer's key/value prefix, as [`AudioLlm::lal_keys_values`] returns it.
pub struct LalLayerPrefix {
    /// The LLM layer.
    pub layer: usize,
    /// Keys `(b, kv_heads, Na, head_dim)`, rotated in prefix mode.
    pub k: Tensor,
    /// Values `(b, kv_heads, Na, head_dim)`.
    pub v: Tensor,
    /// `k` and `v` stacked, when they are the halves of one training node's output (see
    /// [`KeyValuePrefix::stacked`]).
    pub stacked: Option<Tensor>,
}

/// A batch ready for the LLM.
pub struct PreparedBatch {
    /// `(b, n, d)` input embeddings (text and in-sequence audio tokens).
    pub embeds: Tensor,
    /// `(b, n)` 1 for real rows.
    pub valid: Tensor,
    /// Per row, the token the row should predict when that token is trained, else `None`.
    pub targets: Vec<Vec<Option<u32>>>,
    /// A cache holding the LAL prefixes and the text start positions; run the LLM with it.
    pub cache: KvCache,
}

/// The audio-LLM: a frozen (or LoRA-tuned) LLM with attached encoders.
#[derive(Clone)]
pub struct AudioLlm {
    /// The backbone.
    pub llm: Llama,
    /// Attached encoders, in order.
    pub encoders: Vec<AttachedEncoder>,
    /// How many times LAL key/value prefixes were computed (one count per encoder and batch);
    /// lets tests prove that a conversation computes its clip's prefix once.
    pub lal_prefix_computations: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Ones for `(b, n)` rows of which `lengths[i]` are real.
fn validity(lengths: &[usize], n: usize, device: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| (0..n).map(move |j| if j < l { 1.0 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(v, (lengths.len(), n), device)?)
}

impl PreparedBatch {
    /// The batch cut from the autograd graph, for inference. The adapter's parameters are
    /// trainable tensors even when serving, so a prepared batch records how its embeddings and
    /// LAL prefixes were made; without this, running the LLM on it would record every layer too
    /// (and keep the activations for a backward that never comes).
    pub fn detach(mut self) -> Self {
        self.embeds = self.embeds.detach();
        for layer in &mut self.cache.layers {
            if let Some(p) = &mut layer.prefix {
                p.k = p.k.detach();
                p.v = p.v.detach();
                p.stacked = None;
            }
        }
        self
    }
}

impl AudioLlm {
    /// Builds the adapter modules (parameters created in `params` under each attachment's name).
    pub fn new(llm: Llama, attachments: &[Attachment], params: &Params) -> Result<Self> {
        let d = llm.config.hidden_size;
        let n_layers = llm.config.num_hidden_layers;
        let mut encoders = vec![];
        for a in attachments {
            let in_sequence = match a.route {
                Route::Plits => Some(Connector::new(
                    &a.connector,
                    params,
                    &format!("{}.connector", a.name),
                    a.d_enc,
                    d,
                )?),
                Route::Pal => Some(Connector::new(
                    &a.summary,
                    params,
                    &format!("{}.summary", a.name),
                    a.d_enc,
                    d,
                )?),
                Route::Lal => None,
            };
            let lal = match a.route {
                Route::Plits => None,
                Route::Lal | Route::Pal => {
                    let layers = a.lal.resolve_layers(n_layers)?;
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
                                .map(|i| Mlp::new(params, &projector_name(i), a.d_enc, d))
                                .collect::<Result<_>>()?,
                        ),
                    };
                    let own_norms = match a.lal.audio_norm {
                        LalAudioNorm::LayerInputNorm => None,
                        LalAudioNorm::Own => Some(
                            layers
                                .iter()
                                .map(|i| {
                                    trainable_layer_norm(params, &format!("{p}.layers.{i}.norm"), d)
                                })
                                .collect::<Result<_>>()?,
                        ),
                    };
                    Some(LalAdapter {
                        layers,
                        projector,
                        own_norms,
                        rope: a.lal.rope,
                    })
                }
            };
            encoders.push(AttachedEncoder {
                config: a.clone(),
                in_sequence,
                lal,
            });
        }
        Ok(Self {
            llm,
            encoders,
            lal_prefix_computations: Default::default(),
        })
    }

    /// LAL keys and values of one encoder, layer by layer: `A_l = Proj_l(E)`, the layer's input
    /// norm, then the layer's own (frozen, or LoRA-tuned) k/v projections. Returns one
    /// [`LalLayerPrefix`] per LAL layer, keys rotated to positions `positions` (`(b, Na)`) in
    /// prefix mode.
    ///
    /// Each layer has its own parameters and its own small graph. (One stacked tensor for all
    /// layers, sliced per layer, would make every slice's backward a full-size zero-padded
    /// gradient: quadratic in the number of LAL layers.)
    pub fn lal_keys_values(
        &self,
        adapter: &LalAdapter,
        frames: &Tensor,
        positions: &Tensor,
    ) -> Result<Vec<LalLayerPrefix>> {
        let c = &self.llm.config;
        let (b, na, d_enc) = frames.dims3()?;
        if adapter.layers.is_empty() {
            return Ok(vec![]);
        }
        self.lal_prefix_computations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The frames are constants: the projectors compute weight gradients only.
        let flat = frames.reshape((b * na, d_enc))?;
        let rope_tables = match adapter.rope {
            LalRope::Prefix => Some(self.llm.rope.at(positions)?),
            LalRope::None => None,
        };
        let heads_first = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, na, c.num_key_value_heads, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut out = Vec::with_capacity(adapter.layers.len());
        let shape = (b, na, c.num_key_value_heads, c.head_dim);
        let mut flat_with_ones = None;
        for (j, &index) in adapter.layers.iter().enumerate() {
            let layer = &self.llm.layers[index];
            if let (LalProjection::Linear(projectors), None) =
                (&adapter.projector, &adapter.own_norms)
            {
                let projector = &projectors[j];
                if self.llm.frozen_layer_nodes
                    && projector.weight.track_op()
                    && crate::lal_prefix::supported(layer, projector)
                {
                    if flat_with_ones.is_none() {
                        flat_with_ones = Some(crate::lal_prefix::with_ones(&flat)?);
                    }
                    let (k, v, stacked) = crate::lal_prefix::keys_values(
                        layer,
                        projector,
                        flat_with_ones.as_ref().expect("set above"),
                        rope_tables.as_ref(),
                        shape,
                        c.rms_norm_eps,
                    )?;
                    out.push(LalLayerPrefix {
                        layer: index,
                        k,
                        v,
                        stacked: Some(stacked),
                    });
                    continue;
                }
            }
            let projected = match &adapter.projector {
                LalProjection::Linear(projectors) => projectors[j].forward(&flat)?,
                LalProjection::Mlp(projectors) => projectors[j].forward(&flat)?,
            };
            let normed = match &adapter.own_norms {
                Some(norms) => norms[j].forward(&projected)?,
                None => rms_norm(&projected, &layer.input_layernorm, c.rms_norm_eps)?,
            };
            let mut k = heads_first(layer.k_proj.forward(&normed)?)?;
            let v = heads_first(layer.v_proj.forward(&normed)?)?;
            if let Some(kn) = &layer.k_norm {
                k = rms_norm(&k, kn, c.rms_norm_eps)?;
            }
            if let Some((cos, sin)) = &rope_tables {
                k = rope(&k, cos, sin)?;
            }
            out.push(LalLayerPrefix {
                layer: index,
                k,
                v,
                stacked: None,
            });
        }
        Ok(out)
    }

    /// Assembles a batch: in-sequence audio tokens at each example's placeholder, LAL prefixes in
    /// a fresh cache, padding on `padding`'s side.
    pub fn prepare(&self, examples: &[Example], padding: Padding) -> Result<PreparedBatch> {
        let b = examples.len();
        let device = self.llm.device().clone();
        let dtype = self.llm.dtype();
        let d = self.llm.config.hidden_size;
        for (i, e) in examples.iter().enumerate() {
            if e.audio.len() != self.encoders.len() {
                return Err(ModelError::Unsupported(format!(
                    "example {i} has {} encoder outputs, the model has {} encoders",
                    e.audio.len(),
                    self.encoders.len()
                )));
            }
        }
        // Per encoder: pad its outputs to a batch (b, Na_max, d_enc) with validity.
        let mut in_seq: Vec<Vec<Tensor>> = vec![vec![]; b];
        // layer, k, v, valid, k and v stacked
        let mut prefix_parts: Vec<(usize, Tensor, Tensor, Tensor, Option<Tensor>)> = vec![];
        let mut lal_rows_before = vec![0usize; b];
        for (j, enc) in self.encoders.iter().enumerate() {
            let lengths: Vec<usize> = examples.iter().map(|e| e.audio[j].dims()[0]).collect();
            let na = lengths.iter().copied().max().unwrap_or(0);
            let frames: Vec<Tensor> = examples
                .iter()
                .map(|e| {
                    let t = e.audio[j].to_dtype(dtype)?.to_device(&device)?;
                    let pad = na - t.dims()[0];
                    if pad == 0 {
                        Ok(t)
                    } else {
                        Ok(Tensor::cat(
                            &[&t, &Tensor::zeros((pad, enc.config.d_enc), dtype, &device)?],
                            0,
                        )?)
                    }
                })
                .collect::<Result<_>>()?;
            let frames = Tensor::stack(&frames, 0)?;
            let valid = validity(&lengths, na, &device)?;
            if let Some(conn) = &enc.in_sequence {
                let (tokens, tok_valid) = conn.forward(&frames, &valid)?;
                let tok_valid = tok_valid.to_vec2::<f32>()?;
                for (i, row) in tok_valid.iter().enumerate() {
                    let count = row.iter().filter(|v| **v > 0.5).count();
                    in_seq[i].push(tokens.get(i)?.narrow(0, 0, count)?);
                }
            }
            if let Some(adapter) = &enc.lal {
                // Audio keys sit at positions continuing after earlier LAL encoders' real rows
                // (padding rows repeat the last position; they are masked).
                let mut positions = Vec::with_capacity(b * na);
                for i in 0..b {
                    for r in 0..na {
                        positions.push(
                            (lal_rows_before[i] + r.min(lengths[i].saturating_sub(1))) as u32,
                        );
                    }
                }
                let positions = Tensor::from_vec(positions, (b, na), &device)?;
                for p in self.lal_keys_values(adapter, &frames, &positions)? {
                    prefix_parts.push((p.layer, p.k, p.v, valid.clone(), p.stacked));
                }
                if adapter.rope == LalRope::Prefix && !adapter.layers.is_empty() {
                    for (before, len) in lal_rows_before.iter_mut().zip(&lengths) {
                        *before += len;
                    }
                }
            }
        }

        // Sequence rows of each example: text embeddings and in-sequence audio tokens.
        let mut rows: Vec<Vec<Tensor>> = vec![];
        let mut tokens_per_row: Vec<Vec<Option<(u32, bool)>>> = vec![];
        for (i, e) in examples.iter().enumerate() {
            let mut parts = vec![];
            let mut toks = vec![];
            let has_placeholder = e.segments.contains(&Segment::Audio);
            let mut audio_done = false;
            let push_audio = |parts: &mut Vec<Tensor>, toks: &mut Vec<Option<(u32, bool)>>| {
                for t in &in_seq[i] {
                    toks.extend(std::iter::repeat_n(None, t.dims()[0]));
                    parts.push(t.clone());
                }
            };
            if !has_placeholder {
                push_audio(&mut parts, &mut toks);
                audio_done = true;
            }
            for s in &e.segments {
                match s {
                    Segment::Text { ids, trained } => {
                        if ids.is_empty() {
                            continue;
                        }
                        let ids_t = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
                        parts.push(self.llm.embed(&ids_t)?.squeeze(0)?);
                        toks.extend(ids.iter().map(|&t| Some((t, *trained))));
                    }
                    Segment::Audio if !audio_done => {
                        push_audio(&mut parts, &mut toks);
                        audio_done = true;
                    }
                    Segment::Audio => {}
                }
            }
            if parts.is_empty() {
                return Err(ModelError::Unsupported(format!("example {i} is empty")));
            }
            rows.push(parts);
            tokens_per_row.push(toks);
        }
        let n = tokens_per_row.iter().map(|t| t.len()).max().unwrap_or(0);
        let mut embeds = vec![];
        let mut valid = vec![];
        let mut targets = vec![];
        for (parts, toks) in rows.iter().zip(&tokens_per_row) {
            let len = toks.len();
            let seq = Tensor::cat(parts, 0)?;
            let pad = Tensor::zeros((n - len, d), dtype, &device)?;
            let (seq, v): (Tensor, Vec<f32>) = match padding {
                Padding::Right => (
                    Tensor::cat(&[&seq, &pad], 0)?,
                    (0..n).map(|j| if j < len { 1.0 } else { 0.0 }).collect(),
                ),
                Padding::Left => (
                    Tensor::cat(&[&pad, &seq], 0)?,
                    (0..n)
                        .map(|j| if j >= n - len { 1.0 } else { 0.0 })
                        .collect(),
                ),
            };
            embeds.push(seq);
            valid.extend(v);
            // Row p predicts the token at row p + 1 when that token is trained.
            let mut t: Vec<Option<u32>> = (0..len)
                .map(|p| {
                    toks.get(p + 1)
                        .copied()
                        .flatten()
                        .filter(|x| x.1)
                        .map(|x| x.0)
                })
                .collect();
            match padding {
                Padding::Right => t.extend(std::iter::repeat_n(None, n - len)),
                Padding::Left => t
                    .splice(0..0, std::iter::repeat_n(None, n - len))
                    .for_each(drop),
            }
            targets.push(t);
        }
        let mut cache = self.llm.new_cache();
        // Text positions start after the real audio rows of prefix-RoPE LAL encoders.
        cache.next_position = lal_rows_before.iter().map(|&r| r as u32).collect();
        // Several LAL encoders on one layer: their prefixes are concatenated.
        for (layer, k, v, valid_rows, stacked) in prefix_parts {
            let slot = &mut cache.layers[layer].prefix;
            *slot = Some(match slot.take() {
                None => KeyValuePrefix {
                    k,
                    v,
                    valid: valid_rows,
                    stacked,
                },
                Some(p) => KeyValuePrefix {
                    k: Tensor::cat(&[&p.k, &k], 2)?,
                    v: Tensor::cat(&[&p.v, &v], 2)?,
                    valid: Tensor::cat(&[&p.valid, &valid_rows], 1)?,
                    stacked: None,
                },
            });
        }
        Ok(PreparedBatch {
            embeds: Tensor::stack(&embeds, 0)?,
            valid: Tensor::from_vec(valid, (b, n), &device)?,
            targets,
            cache,
        })
    }

    /// Mean cross-entropy over the batch's target rows; the output projection runs on those rows
    /// only. Returns the loss and the number of target tokens.
    pub fn loss(&self, batch: &mut PreparedBatch) -> Result<(Tensor, usize)> {
        let hidden =
            self.llm
                .forward_embeds(&batch.embeds, Some(&batch.valid), &mut batch.cache)?;
        let (b, n, d) = hidden.dims3()?;
        let mut rows = vec![];
        let mut targets = vec![];
        for (i, row_targets) in batch.targets.iter().enumerate() {
            for (p, t) in row_targets.iter().enumerate() {
                if let Some(t) = t {
                    rows.push((i * n + p) as u32);
                    targets.push(*t);
                }
            }
        }
        if rows.is_empty() {
            return Err(ModelError::Unsupported(
                "the batch has no trained tokens".into(),
            ));
        }
        let device = hidden.device();
        let picked = hidden
            .reshape((b * n, d))?
            .index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
        let loss = self
            .llm
            .cross_entropy(&picked, &Tensor::new(targets.as_slice(), device)?)?;
        Ok((loss, targets.len()))
    }

    /// Sum of the log-probabilities of each example's trained tokens (teacher forcing): how
    /// likely the model finds each example's answer. Used to score a closed set of labels.
    pub fn target_log_probs(&self, batch: &mut PreparedBatch) -> Result<Vec<f64>> {
        let hidden =
            self.llm
                .forward_embeds(&batch.embeds, Some(&batch.valid), &mut batch.cache)?;
        let mut sums = Vec::with_capacity(batch.targets.len());
        for (i, row_targets) in batch.targets.iter().enumerate() {
            let rows: Vec<u32> = (0..row_targets.len())
                .filter(|&p| row_targets[p].is_some())
                .map(|p| p as u32)
                .collect();
            if rows.is_empty() {
                sums.push(0.0);
                continue;
            }
            let ids: Vec<u32> = row_targets.iter().flatten().copied().collect();
            let device = hidden.device();
            let picked = hidden
                .get(i)?
                .index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
            let logits = self
                .llm
                .logits(&picked)?
                .to_dtype(candle_core::DType::F32)?;
            let log_probs = log_softmax_rows(&logits)?;
            let chosen =
                log_probs.gather(&Tensor::new(ids.as_slice(), device)?.unsqueeze(1)?, 1)?;
            sums.push(
                chosen
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?,
            );
        }
        Ok(sums)
    }

    /// Logits `(b, n, vocab)` of a prepared batch (the cache then holds the text keys/values too).
    pub fn forward(&self, batch: &mut PreparedBatch) -> Result<Tensor> {
        let hidden =
            self.llm
                .forward_embeds(&batch.embeds, Some(&batch.valid), &mut batch.cache)?;
        self.llm.logits(&hidden)
    }
}

/// `log_softmax` over the last dimension from primitive ops.
fn log_softmax_rows(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(candle_core::D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(candle_core::D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}
