//! Batches: examples (segments plus encoder outputs), padded and assembled into input rows, and
//! the prepared batch the LLM runs on (embeddings, validity, targets, a cache holding LAL prefixes).

use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::llm::cache::KvCache;
use crate::llm::decoder::Llama;
use crate::text::segments::Segment;

/// One example: its segments and its clips, each as its encoders' outputs.
#[derive(Debug, Clone)]
pub struct Example {
    /// Text and the audio placeholders, in order.
    pub segments: Vec<Segment>,
    /// Per clip, in the order of the placeholders: the encoder outputs `(Na, d_enc)`, one per
    /// attachment in the model's attachment order. Usually one clip; a model takes up to its
    /// config's `max_clips`.
    pub clips: Vec<Vec<Tensor>>,
}

impl Example {
    /// An example about one clip (its encoder outputs, one per attachment).
    pub fn one_clip(segments: Vec<Segment>, audio: Vec<Tensor>) -> Self {
        Self {
            segments,
            clips: vec![audio],
        }
    }

    /// The first clip's encoder outputs (every example has at least one clip).
    pub fn first_clip(&self) -> &[Tensor] {
        self.clips.first().map_or(&[], Vec::as_slice)
    }
}

/// Which side padding goes to when a batch is assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Right padding (training).
    Right,
    /// Left padding (generation: every row ends at its last real token).
    Left,
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

/// Ones for `(b, n)` rows of which `lengths[i]` are real.
pub(crate) fn validity(
    lengths: &[usize],
    n: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let v: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| (0..n).map(move |j| if j < l { 1.0 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(v, (lengths.len(), n), device)?)
}

/// The input rows of a batch, before the LLM runs.
pub(crate) struct SequenceRows {
    /// `(b, n, d)` embeddings.
    pub embeds: Tensor,
    /// `(b, n)` 1 for real rows.
    pub valid: Tensor,
    /// Per row, the trained token it predicts.
    pub targets: Vec<Vec<Option<u32>>>,
}

/// The input rows of each example: text embeddings, with its in-sequence audio tokens
/// (`in_seq[i][c]`: clip `c`'s tokens, one tensor per encoder) at the clip's placeholder (the
/// `c`-th; every clip first when the example has no placeholder), padded on `padding`'s side.
pub(crate) fn sequence_rows(
    llm: &Llama,
    examples: &[Example],
    in_seq: &[Vec<Vec<Tensor>>],
    padding: Padding,
) -> Result<SequenceRows> {
    let b = examples.len();
    let device = llm.device().clone();
    let dtype = llm.dtype();
    let d = llm.config.hidden_size;
    // Sequence rows of each example: text embeddings and in-sequence audio tokens.
    let mut rows: Vec<Vec<Tensor>> = vec![];
    let mut tokens_per_row: Vec<Vec<Option<(u32, bool)>>> = vec![];
    for (i, e) in examples.iter().enumerate() {
        let mut parts = vec![];
        let mut toks = vec![];
        let placeholders = e.segments.iter().filter(|s| **s == Segment::Audio).count();
        let clips = in_seq[i].len();
        if placeholders > 0 && placeholders < clips {
            return Err(ModelError::Unsupported(format!(
                "example {i} has {clips} clips but {placeholders} audio placeholders"
            )));
        }
        let push_clip = |c: usize, parts: &mut Vec<Tensor>, toks: &mut Vec<Option<(u32, bool)>>| {
            for t in in_seq[i].get(c).into_iter().flatten() {
                toks.extend(std::iter::repeat_n(None, t.dims()[0]));
                parts.push(t.clone());
            }
        };
        if placeholders == 0 {
            for c in 0..clips {
                push_clip(c, &mut parts, &mut toks);
            }
        }
        let mut next_clip = 0;
        for s in &e.segments {
            match s {
                Segment::Text { ids, trained } => {
                    if ids.is_empty() {
                        continue;
                    }
                    let ids_t = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
                    parts.push(llm.embed(&ids_t)?.squeeze(0)?);
                    toks.extend(ids.iter().map(|&t| Some((t, *trained))));
                }
                Segment::Audio => {
                    push_clip(next_clip, &mut parts, &mut toks);
                    next_clip += 1;
                }
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
    Ok(SequenceRows {
        embeds: Tensor::stack(&embeds, 0)?,
        valid: Tensor::from_vec(valid, (b, n), &device)?,
        targets,
    })
}
