//! A clip encoded window by window, as its audio arrives (live audio on `/v1/realtime`) or as a
//! long recording is decoded: each window (at most the encoders' own, 30 s for Whisper) is
//! encoded alone as soon as it is whole, and its LAL keys and values computed at once, at the
//! positions after the earlier windows' rows; neither is ever computed again. When a question
//! comes, only the audio since the last whole window remains to encode.
//!
//! The clip is the one a single pass would give when every window is encoded alone (Whisper
//! encodes a long clip's windows in one padded batch, which moves a partial window's outputs by
//! up to about 1e-3); its in-sequence tokens (PLITS, PAL's summary) are made from its outputs
//! when it is asked about.
//!
//! Each LAL layer's keys and values live in one buffer per encoder with room to grow (doubled
//! when full), each window written after the last: a question reads them where they lie, a view
//! of the rows so far, so a recording of an hour is never copied to be asked about. A view lent
//! out is never written under: a window that would write over rows a question still reads (its
//! tail's) moves the buffer first. When the model attends its prefix in bf16
//! ([`crate::llm::Llama::bf16_prefix`]), each window's keys and values are instead packed once,
//! as a run of their own (half the bytes, and no f32 copy), and a question gets the runs so far
//! (shared, never repacked).

use candle_core::Tensor;
use pal_nn::ops::bf16::prefix::PackedPrefix;

use crate::audio_llm::lal::LalLayerPrefix;
use crate::audio_llm::model::{AudioLlm, ClipLal};
use crate::encoders::{encode_clip, AudioEncoder};
use crate::error::{ModelError, Result};
use crate::llm::cache::placeholder;

/// Rows a buffer starts with room for.
const FIRST_CAPACITY: usize = 2048;

/// One encoded window of a growing clip.
#[derive(Clone)]
struct Window {
    /// The encoders' outputs, one per encoder.
    outputs: Vec<Tensor>,
    /// LAL rows it added, per encoder (0 for encoders without LAL).
    rows: Vec<usize>,
    /// LAL positions it takes.
    positions: usize,
    /// Its samples (16 kHz).
    samples: usize,
}

/// One encoder's LAL keys and values over the clip, per LAL layer: `(1, kv_heads, capacity,
/// head_dim)` buffers whose first `rows` rows are the clip's, or, when the model attends its
/// prefix in bf16, the windows' packed runs alone (no f32 copy is kept).
#[derive(Clone)]
struct Buffers {
    /// Per LAL layer, its buffers (no rows when `packed`).
    layers: Vec<LalLayerPrefix>,
    /// Rows written.
    rows: usize,
    /// Rows lent out in views (a question's tail may reach past `rows`).
    lent: usize,
    /// Per LAL layer, the rows written as packed runs (a tail's run past `rows` until the next
    /// window replaces it); `None` when the windows come unpacked.
    packed: Option<Vec<PackedPrefix>>,
}

impl Buffers {
    /// Buffers of no rows for keys and values shaped as `part`'s (packed when `part` is).
    fn empty(part: &[LalLayerPrefix]) -> Result<Self> {
        let layers = part
            .iter()
            .map(|l| {
                let (_, kv_heads, _, head_dim) = l.k.dims4()?;
                let none = Tensor::zeros((1, kv_heads, 0, head_dim), l.k.dtype(), l.k.device())?;
                Ok(LalLayerPrefix {
                    k: none.clone(),
                    v: none,
                    stacked: None,
                    packed: None,
                    ..l.clone()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            packed: part
                .iter()
                .all(|l| l.packed.is_some())
                .then(|| vec![PackedPrefix::default(); part.len()]),
            layers,
            rows: 0,
            lent: 0,
        })
    }

    fn capacity(&self) -> usize {
        self.layers.first().map_or(0, |l| l.k.dims()[2])
    }

    /// Writes `part` (one window's or a tail's keys and values, layer by layer) at `rows`:
    /// its packed runs after the clip's, or into the buffers, moving to bigger ones first when
    /// full or when the rows there are lent out.
    fn write(&mut self, part: &[LalLayerPrefix]) -> Result<usize> {
        let added = part.first().map_or(0, |l| l.k.dims()[2]);
        if let Some(layers) = &mut self.packed {
            let unpacked =
                || ModelError::Unsupported("a window came unpacked into a packed clip".into());
            for (kept, new) in layers.iter_mut().zip(part) {
                // (Runs past `rows`: a tail's, replaced.)
                let mut runs = kept.first_rows(self.rows).ok_or_else(unpacked)?;
                let new = new
                    .packed
                    .as_ref()
                    .and_then(|p| p.first())
                    .ok_or_else(unpacked)?;
                runs.runs.extend(new.runs.iter().cloned());
                *kept = runs;
            }
            return Ok(added);
        }
        if part.iter().any(|l| l.packed.is_some()) {
            return Err(ModelError::Unsupported(
                "a packed window came into an unpacked clip".into(),
            ));
        }
        let need = self.rows + added;
        if need > self.capacity() || self.lent > self.rows {
            let capacity = (2 * self.capacity()).max(2 * need).max(FIRST_CAPACITY);
            for (buffer, new) in self.layers.iter_mut().zip(part) {
                let (_, kv_heads, _, head_dim) = new.k.dims4()?;
                let shape = (1, kv_heads, capacity, head_dim);
                let k = Tensor::zeros(shape, new.k.dtype(), new.k.device())?;
                let v = Tensor::zeros(shape, new.v.dtype(), new.v.device())?;
                if self.rows > 0 {
                    k.slice_set(&buffer.k.narrow(2, 0, self.rows)?.contiguous()?, 2, 0)?;
                    v.slice_set(&buffer.v.narrow(2, 0, self.rows)?.contiguous()?, 2, 0)?;
                }
                buffer.k = k;
                buffer.v = v;
            }
            self.lent = 0;
        }
        for (buffer, new) in self.layers.iter().zip(part) {
            buffer.k.slice_set(&new.k.contiguous()?, 2, self.rows)?;
            buffer.v.slice_set(&new.v.contiguous()?, 2, self.rows)?;
        }
        Ok(added)
    }

    /// The first `rows` rows: views of the buffers, lent out, or the packed runs.
    fn lend(&mut self, rows: usize) -> Result<Vec<LalLayerPrefix>> {
        if let Some(layers) = &self.packed {
            return self
                .layers
                .iter()
                .zip(layers)
                .map(|(buffer, packed)| {
                    let k = placeholder(&buffer.k, 1, rows)?;
                    let runs = packed.first_rows(rows).ok_or_else(|| {
                        ModelError::Unsupported(format!("{rows} rows cut a window's run"))
                    })?;
                    Ok(LalLayerPrefix {
                        layer: buffer.layer,
                        own_softmax: buffer.own_softmax,
                        k: k.clone(),
                        v: k,
                        stacked: None,
                        packed: Some(vec![runs]),
                    })
                })
                .collect();
        }
        self.lent = self.lent.max(rows);
        self.layers
            .iter()
            .map(|buffer| {
                Ok(LalLayerPrefix {
                    layer: buffer.layer,
                    own_softmax: buffer.own_softmax,
                    k: buffer.k.narrow(2, 0, rows)?,
                    v: buffer.v.narrow(2, 0, rows)?,
                    stacked: None,
                    packed: None,
                })
            })
            .collect()
    }
}

/// A clip growing window by window (see the module's documentation).
#[derive(Clone, Default)]
pub struct GrowingClip {
    windows: Vec<Window>,
    /// Per encoder, its LAL buffers (none for encoders without LAL, or before the first window).
    buffers: Vec<Option<Buffers>>,
    /// LAL positions so far (where the next window's keys start).
    positions: usize,
    /// Samples encoded so far (16 kHz).
    samples: usize,
}

impl GrowingClip {
    /// An empty clip for `model`: refused for a model whose audio keys would need positions
    /// after several encoders' rows (a growing clip keeps one run of positions).
    pub fn new(model: &AudioLlm) -> Result<Self> {
        let rotated = model
            .encoders
            .iter()
            .filter(|e| e.lal.as_ref().is_some_and(|l| l.positions_taken(1) > 0))
            .count();
        if rotated > 1 {
            return Err(ModelError::Unsupported(
                "a clip encoded as it arrives needs at most one LAL encoder whose keys take positions (rope = \"prefix\")".into(),
            ));
        }
        Ok(Self::default())
    }

    /// Samples of the windows a clip grows by: the shortest window of `encoders` (30 s for
    /// Whisper), or 30 s for encoders without one.
    pub fn window_samples(encoders: &[Box<dyn AudioEncoder>]) -> usize {
        encoders
            .iter()
            .filter_map(|e| e.window_samples())
            .min()
            .unwrap_or(30 * pal_audio::SAMPLE_RATE as usize)
    }

    /// Encodes `window` (16 kHz mono, at most one encoder window) and keeps its outputs and
    /// LAL keys and values after the clip's.
    pub fn push(
        &mut self,
        model: &AudioLlm,
        encoders: &[Box<dyn AudioEncoder>],
        window: &[f32],
    ) -> Result<()> {
        let (outputs, lal, positions) = self.encode(model, encoders, window)?;
        let rows = self.write(&lal)?;
        for (buffers, added) in self.buffers.iter_mut().zip(&rows) {
            if let Some(b) = buffers {
                b.rows += added;
            }
        }
        self.positions += positions;
        self.samples += window.len();
        self.windows.push(Window {
            outputs,
            rows,
            positions,
            samples: window.len(),
        });
        Ok(())
    }

    /// Encodes `window`: the encoders' outputs, its LAL keys and values at the positions after
    /// the clip's, and the positions they take.
    fn encode(
        &self,
        model: &AudioLlm,
        encoders: &[Box<dyn AudioEncoder>],
        window: &[f32],
    ) -> Result<(Vec<Tensor>, ClipLal, usize)> {
        let outputs = encode_clip(encoders, window)?;
        let lal = model.clip_lal_from(&outputs, self.positions)?;
        let positions = model
            .encoders
            .iter()
            .zip(&outputs)
            .map(|(e, o)| e.lal.as_ref().map_or(0, |l| l.positions_taken(o.dims()[0])))
            .sum();
        Ok((outputs, lal, positions))
    }

    /// Writes `lal` after each encoder's rows (not yet counted); returns the rows per encoder.
    fn write(&mut self, lal: &ClipLal) -> Result<Vec<usize>> {
        if self.buffers.is_empty() {
            self.buffers = vec![None; lal.encoders.len()];
        }
        let mut rows = Vec::with_capacity(lal.encoders.len());
        for (buffers, part) in self.buffers.iter_mut().zip(&lal.encoders) {
            let Some(part) = part else {
                rows.push(0);
                continue;
            };
            if buffers.is_none() {
                *buffers = Some(Buffers::empty(part)?);
            }
            let b = buffers.as_mut().expect("made above");
            rows.push(b.write(part)?);
        }
        Ok(rows)
    }

    /// Drops the windows that end after `samples` (audio taken back); returns the samples the
    /// windows kept cover.
    pub fn truncate(&mut self, samples: usize) -> usize {
        while self.samples > samples {
            let Some(window) = self.windows.pop() else {
                break;
            };
            for (buffers, rows) in self.buffers.iter_mut().zip(&window.rows) {
                if let Some(b) = buffers {
                    b.rows -= rows;
                }
            }
            self.positions -= window.positions;
            self.samples -= window.samples;
        }
        // The runs of the windows taken back (and of a tail) are let go.
        for b in self.buffers.iter_mut().flatten() {
            let rows = b.rows;
            if let Some(layers) = &mut b.packed {
                for runs in layers.iter_mut() {
                    if let Some(kept) = runs.first_rows(rows) {
                        *runs = kept;
                    }
                }
            }
        }
        self.samples
    }

    /// Samples encoded so far (16 kHz): where the next window starts.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Seconds encoded so far.
    pub fn seconds(&self) -> f64 {
        self.samples as f64 / pal_audio::SAMPLE_RATE as f64
    }

    /// Whether nothing is encoded yet.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Bytes its outputs and keys and values hold (the buffers' room included).
    pub fn bytes(&self) -> usize {
        let outputs: usize = self
            .windows
            .iter()
            .flat_map(|w| &w.outputs)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        let buffers: usize = self
            .buffers
            .iter()
            .flatten()
            .flat_map(|b| &b.layers)
            .map(|l| 2 * l.k.elem_count() * l.k.dtype().size_in_bytes())
            .sum();
        let packed: usize = self
            .buffers
            .iter()
            .flatten()
            .flat_map(|b| b.packed.iter().flatten())
            .map(|p| p.bytes())
            .sum();
        outputs + buffers + packed
    }

    /// The clip so far and `tail` (audio after the last whole window, encoded now and not
    /// kept as a window): each encoder's outputs and the clip's LAL keys and values, as
    /// [`crate::audio_llm::AudioLlm::prepare_cached`] takes them, the keys and values as views
    /// of the buffers (or, packed, the runs so far). Errors when there is no audio at all.
    pub fn with_tail(
        &mut self,
        model: &AudioLlm,
        encoders: &[Box<dyn AudioEncoder>],
        tail: &[f32],
    ) -> Result<(Vec<Tensor>, ClipLal)> {
        let mut extra = vec![0; self.buffers.len()];
        let mut tail_outputs = None;
        if !tail.is_empty() {
            let (outputs, lal, _) = self.encode(model, encoders, tail)?;
            extra = self.write(&lal)?;
            tail_outputs = Some(outputs);
        }
        let mut outputs: Vec<Vec<&Tensor>> = vec![vec![]; encoders.len()];
        for window in self.windows.iter().map(|w| &w.outputs).chain(&tail_outputs) {
            for (all, o) in outputs.iter_mut().zip(window) {
                all.push(o);
            }
        }
        if outputs.first().is_none_or(|o| o.is_empty()) {
            return Err(ModelError::Unsupported("the clip has no audio yet".into()));
        }
        let per_encoder = outputs
            .iter()
            .map(|parts| Ok(Tensor::cat(parts, 0)?))
            .collect::<Result<Vec<_>>>()?;
        let lal = self
            .buffers
            .iter_mut()
            .zip(&extra)
            .map(|(buffers, extra)| match buffers {
                Some(b) => {
                    let rows = b.rows + extra;
                    b.lend(rows).map(Some)
                }
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((per_encoder, ClipLal { encoders: lal }))
    }
}
