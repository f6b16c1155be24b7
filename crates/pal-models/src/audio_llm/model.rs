//! The audio-LLM: encoders joined to a Llama-family backbone by PLITS, LAL or PAL
//! (see the project's PAPER.md). One model, switchable by configuration; every encoder has a route:
//!
//! - `plits`: connector tokens go into the input sequence at the audio placeholder.
//! - `lal`: per-layer projections of the encoder tokens become extra keys/values (a fixed prefix)
//!   at the selected layers; queries are text only, audio never reaches an FFN ([`crate::audio_llm::lal`]).
//! - `pal`: latent summary tokens through PLITS plus the full sequence through LAL.
//!
//! The model works on encoder outputs (`(Na, d_enc)` per clip), so encoders can be cached or
//! run elsewhere; [`crate::encoders`] produces them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use pal_nn::Params;

use crate::audio_llm::batch::{sequence_rows, validity, Example, Padding, PreparedBatch};
use crate::audio_llm::config::{Attachment, Route};
use crate::audio_llm::connector::Connector;
use crate::audio_llm::lal::{join_packed, LalAdapter, LalLayerPrefix};
use crate::error::{ModelError, Result};
use crate::llm::cache::{held_bytes, placeholder, KeyValuePrefix};
use crate::llm::decoder::Llama;
use crate::text::segments::Segment;
use pal_nn::ops::bf16::prefix::PackedPrefix;

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

/// The audio-LLM: a frozen (or LoRA-tuned) LLM with attached encoders.
#[derive(Clone)]
pub struct AudioLlm {
    /// The backbone.
    pub llm: Llama,
    /// Attached encoders, in order.
    pub encoders: Vec<AttachedEncoder>,
    /// How many times LAL key/value prefixes were computed (one count per encoder and batch);
    /// lets tests prove that a conversation computes its clip's prefix once.
    pub lal_prefix_computations: Arc<AtomicUsize>,
    /// Most clips one example may hold (the config's `max_clips`; 1 unless it says more).
    pub max_clips: usize,
    /// The type of the adapter's parameters, which encoder outputs are cast to: f32 master
    /// copies beside a bf16 backbone (see [`pal_nn::Params::master_dtype`]). Connector tokens
    /// and LAL rows are cast to the backbone's type where they enter it.
    pub adapter_dtype: DType,
    /// How long a clip may be, in seconds and memory (the config's `max_audio_seconds` and
    /// `max_audio_mib`; see [`crate::audio_llm::limits`]).
    pub audio_limits: crate::audio_llm::limits::AudioLimits,
    /// Whether the adapter's computations keep their autograd graph for a backward (training:
    /// the default). [`crate::audio_llm::build::load_run_for_inference`] turns it off, so that
    /// a long clip's PAL summary, attended chunk by chunk, lets each chunk's keys and values go
    /// (see [`crate::audio_llm::connector::SUMMARY_CHUNK`]).
    pub keeps_graph: bool,
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
                Route::Lal | Route::Pal => Some(LalAdapter::new(
                    params,
                    a,
                    n_layers,
                    d,
                    llm.config.num_key_value_heads,
                )?),
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
            max_clips: 1,
            audio_limits: Default::default(),
            adapter_dtype: params.dtype(),
            keeps_graph: true,
        })
    }

    /// LAL keys and values of one encoder's frames `(b, Na, d_enc)` at its LAL layers (see
    /// [`LalAdapter::keys_values`]), counted in [`AudioLlm::lal_prefix_computations`].
    pub fn lal_keys_values(
        &self,
        adapter: &LalAdapter,
        frames: &Tensor,
        positions: &Tensor,
    ) -> Result<Vec<LalLayerPrefix>> {
        if adapter.layers.is_empty() {
            return Ok(vec![]);
        }
        self.lal_prefix_computations.fetch_add(1, Ordering::Relaxed);
        adapter.keys_values(&self.llm, frames, positions)
    }

    /// One clip's LAL keys and values, computed alone (a batch of one, detached) so that they can
    /// be kept and reused by [`AudioLlm::prepare_cached`] in any later batch: a server asked
    /// several questions about one clip computes them once.
    pub fn clip_lal(&self, audio: &[Tensor]) -> Result<ClipLal> {
        self.clip_lal_from(audio, 0)
    }

    /// [`AudioLlm::clip_lal`] of a clip's later part, its audio keys at positions from
    /// `first_position` (the rows of the part before it): the keys of a clip that grows window
    /// by window ([`crate::audio_llm::growing`]), each window's rows after the earlier ones'.
    pub fn clip_lal_from(&self, audio: &[Tensor], first_position: usize) -> Result<ClipLal> {
        if audio.len() != self.encoders.len() {
            return Err(ModelError::Unsupported(format!(
                "{} encoder outputs for a model with {} encoders",
                audio.len(),
                self.encoders.len()
            )));
        }
        let device = self.llm.device().clone();
        let mut rows_before = first_position;
        let mut encoders = Vec::with_capacity(audio.len());
        for (enc, clip) in self.encoders.iter().zip(audio) {
            let Some(adapter) = &enc.lal else {
                encoders.push(None);
                continue;
            };
            let na = clip.dims()[0];
            let frames = clip
                .to_dtype(self.adapter_dtype)?
                .to_device(&device)?
                .unsqueeze(0)?;
            let positions: Vec<u32> = (rows_before..rows_before + na).map(|p| p as u32).collect();
            let positions = Tensor::from_vec(positions, (1, na), &device)?;
            let prefixes = self
                .lal_keys_values(adapter, &frames, &positions)?
                .into_iter()
                .map(|p| {
                    let mut p = LalLayerPrefix {
                        layer: p.layer,
                        own_softmax: p.own_softmax,
                        k: p.k.detach(),
                        v: p.v.detach(),
                        stacked: None,
                        packed: None,
                    };
                    if self.llm.bf16_prefix {
                        p.pack(&[na])?;
                    }
                    Ok(p)
                })
                .collect::<Result<Vec<_>>>()?;
            encoders.push(Some(prefixes));
            rows_before += adapter.positions_taken(na);
        }
        Ok(ClipLal { encoders })
    }

    /// Assembles a batch: in-sequence audio tokens at each example's placeholder, LAL prefixes in
    /// a fresh cache, padding on `padding`'s side.
    pub fn prepare(&self, examples: &[Example], padding: Padding) -> Result<PreparedBatch> {
        self.prepare_cached(examples, padding, &[])
    }

    /// [`AudioLlm::prepare`] with each example's LAL keys and values taken from `cached` (from
    /// [`AudioLlm::clip_lal`], one per example of one clip) instead of computed; with `cached`
    /// empty, or missing any example's, or an example of several clips in the batch, they are
    /// computed as in `prepare`. The same numbers either way: LAL rows are computed row by row,
    /// and padding rows are masked.
    ///
    /// Several clips in an example: each clip goes through every encoder; its in-sequence tokens
    /// go to its own placeholder, and its LAL rows follow the earlier clips' rows (clip-major,
    /// then encoder order) in each LAL layer's prefix and in positions.
    pub fn prepare_cached(
        &self,
        examples: &[Example],
        padding: Padding,
        cached: &[Option<&ClipLal>],
    ) -> Result<PreparedBatch> {
        let b = examples.len();
        let device = self.llm.device().clone();
        let (dtype, adapter_dtype) = (self.llm.dtype(), self.adapter_dtype);
        for (i, e) in examples.iter().enumerate() {
            self.check_clips(&format!("example {i}"), e)?;
        }
        let clips = examples.iter().map(|e| e.clips.len()).max().unwrap_or(0);
        let use_cache = cached.len() == b && clips == 1;
        // Per clip and encoder: pad the outputs to a batch (b, Na_max, d_enc) with validity (an
        // example without that clip has no valid rows).
        let mut in_seq: Vec<Vec<Vec<Tensor>>> = examples
            .iter()
            .map(|e| vec![vec![]; e.clips.len()])
            .collect();
        let mut prefix_parts: Vec<(LalLayerPrefix, Tensor)> = vec![];
        let mut lal_rows_before = vec![0usize; b];
        for c in 0..clips {
            for (j, enc) in self.encoders.iter().enumerate() {
                // Each example's output of encoder `j` for clip `c`, if it has that clip.
                let outputs: Vec<Option<&Tensor>> = examples
                    .iter()
                    .map(|e| e.clips.get(c).map(|clip| &clip[j]))
                    .collect();
                let lengths: Vec<usize> = outputs
                    .iter()
                    .map(|t| t.map_or(0, |t| t.dims()[0]))
                    .collect();
                let na = lengths.iter().copied().max().unwrap_or(0).max(1);
                let valid = validity(&lengths, na, &device)?;
                // The outputs padded to a batch `(b, na, d_enc)`: made once, when first read (a
                // LAL encoder whose keys are cached reads none of them).
                let made = std::cell::OnceCell::new();
                let batch_frames = || -> Result<Tensor> {
                    if let Some(frames) = made.get() {
                        return Ok(Tensor::clone(frames));
                    }
                    let zeros = |n| Tensor::zeros((n, enc.config.d_enc), adapter_dtype, &device);
                    let frames: Vec<Tensor> = outputs
                        .iter()
                        .zip(&lengths)
                        .map(|(t, &len)| {
                            let Some(t) = t else {
                                return Ok(zeros(na)?);
                            };
                            let t = t.to_dtype(adapter_dtype)?.to_device(&device)?;
                            match na - len {
                                0 => Ok(t),
                                pad => Ok(Tensor::cat(&[&t, &zeros(pad)?], 0)?),
                            }
                        })
                        .collect::<Result<_>>()?;
                    let frames = Tensor::stack(&frames, 0)?;
                    Ok(made.get_or_init(|| frames).clone())
                };
                if let Some(conn) = &enc.in_sequence {
                    let (tokens, tok_valid) =
                        conn.forward(&batch_frames()?, &valid, self.keeps_graph)?;
                    let tok_valid = tok_valid.to_vec2::<f32>()?;
                    for (i, row) in tok_valid.iter().enumerate() {
                        // (Nothing for an example without clip `c`.)
                        if let Some(clip_tokens) = in_seq[i].get_mut(c) {
                            let count = row.iter().filter(|v| **v > 0.5).count();
                            let kept = tokens.get(i)?.narrow(0, 0, count)?;
                            clip_tokens.push(kept.to_dtype(dtype)?);
                        }
                    }
                }
                if let Some(adapter) = &enc.lal {
                    let kept: Option<Vec<&Vec<LalLayerPrefix>>> = use_cache
                        .then(|| {
                            cached
                                .iter()
                                .map(|c| c.and_then(|c| c.encoders.get(j)?.as_ref()))
                                .collect()
                        })
                        .flatten();
                    let prefixes = match kept {
                        Some(kept) => batch_of_clip_prefixes(&kept, adapter.layers.len(), na)?,
                        None => {
                            // Audio keys sit at positions continuing after earlier clips' and
                            // LAL encoders' real rows (padding rows repeat the last position;
                            // they are masked).
                            let mut positions = Vec::with_capacity(b * na);
                            for i in 0..b {
                                for r in 0..na {
                                    let row = r.min(lengths[i].saturating_sub(1));
                                    positions.push((lal_rows_before[i] + row) as u32);
                                }
                            }
                            let positions = Tensor::from_vec(positions, (b, na), &device)?;
                            let mut prefixes =
                                self.lal_keys_values(adapter, &batch_frames()?, &positions)?;
                            if self.llm.bf16_prefix {
                                for p in &mut prefixes {
                                    p.pack(&lengths)?;
                                }
                            }
                            prefixes
                        }
                    };
                    for p in prefixes {
                        prefix_parts.push((p, valid.clone()));
                    }
                    for (before, &len) in lal_rows_before.iter_mut().zip(&lengths) {
                        *before += adapter.positions_taken(len);
                    }
                }
            }
        }

        let rows = sequence_rows(&self.llm, examples, &in_seq, padding)?;
        let mut cache = self.llm.new_cache();
        // Text positions start after the real audio rows of prefix-RoPE LAL encoders.
        cache.next_position = lal_rows_before.iter().map(|&r| r as u32).collect();
        // Several LAL encoders (or clips) on one layer: their prefixes are concatenated.
        // (Gated encoders on one layer share one audio softmax; gated and ungated cannot mix.)
        for (part, valid_rows) in prefix_parts {
            let slot = &mut cache.layers[part.layer].prefix;
            *slot = Some(match slot.take() {
                None => KeyValuePrefix {
                    k: part.k,
                    v: part.v,
                    valid: valid_rows,
                    stacked: part.stacked,
                    own_softmax: part.own_softmax,
                    packed: part.packed,
                },
                Some(p) if p.own_softmax != part.own_softmax => {
                    return Err(ModelError::Unsupported(format!(
                        "LLM layer {} gets audio from a gated and an ungated LAL encoder; \
                         set `gate` the same for every encoder",
                        part.layer
                    )))
                }
                Some(p) if p.packed.is_some() != part.packed.is_some() => {
                    return Err(ModelError::Unsupported(format!(
                        "LLM layer {} gets a packed and an unpacked LAL prefix",
                        part.layer
                    )))
                }
                Some(p) => KeyValuePrefix {
                    packed: join_packed(&p.packed, &part.packed),
                    k: join_rows(&p.k, &part.k, p.packed.is_some())?,
                    v: join_rows(&p.v, &part.v, p.packed.is_some())?,
                    valid: Tensor::cat(&[&p.valid, &valid_rows], 1)?,
                    stacked: None,
                    own_softmax: p.own_softmax,
                },
            });
        }
        Ok(PreparedBatch {
            embeds: rows.embeds,
            valid: rows.valid,
            targets: rows.targets,
            cache,
        })
    }

    /// That `example` (named `what` in errors) holds 1 to `max_clips` clips, each with one
    /// output per encoder.
    fn check_clips(&self, what: &str, example: &Example) -> Result<()> {
        if example.clips.is_empty() || example.clips.len() > self.max_clips {
            return Err(ModelError::Unsupported(format!(
                "{what} has {} clips; this model takes 1 to {} (max_clips in its config)",
                example.clips.len(),
                self.max_clips
            )));
        }
        for (c, clip) in example.clips.iter().enumerate() {
            if clip.len() != self.encoders.len() {
                return Err(ModelError::Unsupported(format!(
                    "{what}, clip {c}: {} encoder outputs, the model has {} encoders",
                    clip.len(),
                    self.encoders.len()
                )));
            }
        }
        Ok(())
    }

    /// Positions an example's prompt takes: the rows of its prefix-RoPE LAL audio, its
    /// in-sequence audio tokens and its text. With the tokens to generate, this must stay within
    /// the LLM's RoPE table ([`crate::llm::rope::RopeTable::len`]); a server checks it before a
    /// request joins a batch.
    pub fn prompt_positions(&self, example: &Example) -> Result<usize> {
        self.check_clips("the example", example)?;
        let mut rows = 0;
        for clip in &example.clips {
            for (enc, audio) in self.encoders.iter().zip(clip) {
                let na = audio.dims()[0];
                if let Some(lal) = &enc.lal {
                    rows += lal.positions_taken(na);
                }
                if let Some(connector) = &enc.in_sequence {
                    rows += connector.output_len(na);
                }
            }
        }
        let text: usize = example
            .segments
            .iter()
            .map(|s| match s {
                Segment::Text { ids, .. } => ids.len(),
                Segment::Audio => 0,
            })
            .sum();
        Ok(rows + text)
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

/// One clip's LAL keys and values (see [`AudioLlm::clip_lal`]): per attached encoder, its LAL
/// layers' prefixes, each `(1, kv_heads, Na, head_dim)`; `None` for encoders without LAL.
#[derive(Clone, Debug)]
pub struct ClipLal {
    /// Per encoder, in the model's order.
    pub encoders: Vec<Option<Vec<LalLayerPrefix>>>,
}

impl ClipLal {
    /// The keys and values of `parts` (consecutive parts of one clip, each from
    /// [`AudioLlm::clip_lal_from`]) joined along the rows: the clip's own.
    pub fn join(parts: &[ClipLal]) -> Result<ClipLal> {
        let Some(first) = parts.first() else {
            return Err(ModelError::Unsupported("no part of a clip to join".into()));
        };
        let mut encoders = Vec::with_capacity(first.encoders.len());
        for (j, layers) in first.encoders.iter().enumerate() {
            let Some(layers) = layers else {
                encoders.push(None);
                continue;
            };
            let mut joined = Vec::with_capacity(layers.len());
            for (l, layer) in layers.iter().enumerate() {
                let mut ks = Vec::with_capacity(parts.len());
                let mut vs = Vec::with_capacity(parts.len());
                let mut packed = Some(vec![PackedPrefix::default()]);
                for part in parts {
                    let p = part
                        .encoders
                        .get(j)
                        .and_then(|e| e.as_ref())
                        .and_then(|e| e.get(l))
                        .ok_or_else(|| {
                            ModelError::Unsupported("parts of a clip from different models".into())
                        })?;
                    ks.push(p.k.clone());
                    vs.push(p.v.clone());
                    packed = join_packed(&packed, &p.packed);
                }
                let some_packed = parts.iter().any(|part| {
                    part.encoders[j]
                        .as_ref()
                        .is_some_and(|e| e[l].packed.is_some())
                });
                if some_packed && packed.is_none() {
                    return Err(ModelError::Unsupported(
                        "parts of a clip packed and unpacked".into(),
                    ));
                }
                let (k, v) = match packed {
                    Some(_) => (rows_of(&ks)?, rows_of(&vs)?),
                    None => (Tensor::cat(&ks, 2)?, Tensor::cat(&vs, 2)?),
                };
                joined.push(LalLayerPrefix {
                    layer: layer.layer,
                    own_softmax: layer.own_softmax,
                    k,
                    v,
                    stacked: None,
                    packed,
                });
            }
            encoders.push(Some(joined));
        }
        Ok(ClipLal { encoders })
    }

    /// Bytes the keys and values take (for a memory-bounded cache).
    pub fn bytes(&self) -> usize {
        self.encoders
            .iter()
            .flatten()
            .flatten()
            .map(|p| match &p.packed {
                Some(items) => items.iter().map(|i| i.bytes()).sum(),
                None => held_bytes(&p.k) + held_bytes(&p.v),
            })
            .sum()
    }
}

/// `a`'s rows then `b`'s, along the rows (dimension 2); for prefixes held packed, only the
/// shape of the two ([`placeholder`]).
fn join_rows(a: &Tensor, b: &Tensor, packed: bool) -> Result<Tensor> {
    match packed {
        true => rows_of(&[a.clone(), b.clone()]),
        false => Ok(Tensor::cat(&[a, b], 2)?),
    }
}

/// The shape of `parts` joined along the rows, as a [`placeholder`] (prefixes held packed).
fn rows_of(parts: &[Tensor]) -> Result<Tensor> {
    let rows = parts
        .iter()
        .map(|p| p.dim(2))
        .sum::<candle_core::Result<usize>>()?;
    placeholder(&parts[0], parts[0].dim(0)?, rows)
}

/// Each layer's prefixes of several clips as one batch, rows padded with zeros to `na` (padding
/// rows are masked by the batch's validity).
fn batch_of_clip_prefixes(
    clips: &[&Vec<LalLayerPrefix>],
    layers: usize,
    na: usize,
) -> Result<Vec<LalLayerPrefix>> {
    let pad = |t: &Tensor| -> Result<Tensor> {
        let (b, h, n, dh) = t.dims4()?;
        if n == na {
            return Ok(t.clone());
        }
        let zeros = Tensor::zeros((b, h, na - n, dh), t.dtype(), t.device())?;
        Ok(Tensor::cat(&[t, &zeros], 2)?)
    };
    (0..layers)
        .map(|l| {
            let mut ks = Vec::with_capacity(clips.len());
            let mut vs = Vec::with_capacity(clips.len());
            let mut packed = Some(vec![]);
            for clip in clips {
                let p = clip.get(l).ok_or_else(|| {
                    ModelError::Unsupported(
                        "a cached clip has fewer LAL layers than the model".into(),
                    )
                })?;
                if p.packed.is_none() {
                    ks.push(pad(&p.k)?);
                    vs.push(pad(&p.v)?);
                }
                if p.packed.is_some() != clips[0][l].packed.is_some() {
                    return Err(ModelError::Unsupported(
                        "a batch of cached clips packed and unpacked".into(),
                    ));
                }
                packed = packed.zip(p.packed.as_ref()).map(|(mut all, items)| {
                    all.extend(items.iter().cloned());
                    all
                });
            }
            let (k, v) = match packed {
                // Held packed: shapes only, nothing to pad.
                Some(_) => {
                    let k = placeholder(&clips[0][l].k, clips.len(), na)?;
                    (k.clone(), k)
                }
                None => (Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?),
            };
            Ok(LalLayerPrefix {
                layer: clips[0][l].layer,
                own_softmax: clips[0][l].own_softmax,
                k,
                v,
                stacked: None,
                packed,
            })
        })
        .collect()
}
