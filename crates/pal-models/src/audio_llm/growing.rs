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
//! Each encoder's outputs, and each LAL layer's keys and values, live in one buffer per encoder
//! with room to grow (doubled when full), each window written after the last: a question reads
//! them where they lie, a view of the rows so far, so a recording of an hour is never copied to
//! be asked about. A view lent out is never written under: a window that would write over rows a
//! question still reads (its tail's) moves the buffer first. When the model attends its prefix in bf16
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
    /// Output rows it added, per encoder.
    frames: Vec<usize>,
    /// LAL rows it added, per encoder (0 for encoders without LAL).
    rows: Vec<usize>,
    /// LAL positions it takes.
    positions: usize,
    /// Its samples (16 kHz).
    samples: usize,
}

/// Rows appended along one dimension of a tensor with room to grow (doubled when full). A view
/// lent out ([`GrowingRows::view`]) is never written under: a write over rows lent moves the
/// rows before it to a new buffer first. A clone copies the rows (writes are in place).
struct GrowingRows {
    data: Tensor,
    dim: usize,
    /// Rows lent out in views.
    lent: usize,
}

impl Clone for GrowingRows {
    fn clone(&self) -> Self {
        Self {
            data: self.data.copy().expect("copying a growing clip's buffer"),
            dim: self.dim,
            lent: 0,
        }
    }
}

impl GrowingRows {
    /// No rows yet, in the shape (but for `dim`), type and device of `like`.
    fn empty(like: &Tensor, dim: usize) -> Result<Self> {
        let mut shape = like.dims().to_vec();
        shape[dim] = 0;
        Ok(Self {
            data: Tensor::zeros(shape, like.dtype(), like.device())?,
            dim,
            lent: 0,
        })
    }

    fn capacity(&self) -> usize {
        self.data.dims()[self.dim]
    }

    /// Writes `part` at row `at` (the rows before it kept, those after it dropped), moving to a
    /// bigger buffer first when full or when rows from `at` on are lent out.
    fn write(&mut self, at: usize, part: &Tensor) -> Result<()> {
        let need = at + part.dims()[self.dim];
        if need > self.capacity() || self.lent > at {
            // Doubled when full; moved at its size when only lent rows are in the way (a
            // question's tail, asked again and again, never grows it).
            let capacity = match need > self.capacity() {
                true => (2 * self.capacity()).max(2 * need).max(FIRST_CAPACITY),
                false => self.capacity(),
            };
            let mut shape = self.data.dims().to_vec();
            shape[self.dim] = capacity;
            let data = Tensor::zeros(shape, self.data.dtype(), self.data.device())?;
            if at > 0 {
                data.slice_set(
                    &self.data.narrow(self.dim, 0, at)?.contiguous()?,
                    self.dim,
                    0,
                )?;
            }
            self.data = data;
            self.lent = 0;
        }
        self.data.slice_set(&part.contiguous()?, self.dim, at)?;
        Ok(())
    }

    /// A view of the first `rows` rows, lent out.
    fn view(&mut self, rows: usize) -> Result<Tensor> {
        self.lent = self.lent.max(rows);
        Ok(self.data.narrow(self.dim, 0, rows)?)
    }

    /// Bytes held (its room included).
    fn bytes(&self) -> usize {
        self.data.elem_count() * self.data.dtype().size_in_bytes()
    }
}

/// One encoder's LAL keys and values over the clip, per LAL layer: `(1, kv_heads, rows,
/// head_dim)` in buffers with room to grow, or, when the model attends its prefix in bf16, the
/// windows' packed runs alone (no f32 copy is kept).
#[derive(Clone)]
struct Buffers {
    /// Per LAL layer, its prefix with no rows (its layer, softmax and shapes).
    layers: Vec<LalLayerPrefix>,
    /// Per LAL layer, its keys and values (none when `packed`).
    keys_values: Vec<(GrowingRows, GrowingRows)>,
    /// Rows written.
    rows: usize,
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
        let packed = part.iter().all(|l| l.packed.is_some());
        let keys_values = if packed {
            vec![]
        } else {
            layers
                .iter()
                .map(|l| Ok((GrowingRows::empty(&l.k, 2)?, GrowingRows::empty(&l.v, 2)?)))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Self {
            packed: packed.then(|| vec![PackedPrefix::default(); part.len()]),
            layers,
            keys_values,
            rows: 0,
        })
    }

    /// Writes `part` (one window's or a tail's keys and values, layer by layer) at `rows`:
    /// its packed runs after the clip's, or into the buffers.
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
        for ((k, v), new) in self.keys_values.iter_mut().zip(part) {
            k.write(self.rows, &new.k)?;
            v.write(self.rows, &new.v)?;
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
                .map(|(layer, packed)| {
                    let k = placeholder(&layer.k, 1, rows)?;
                    let runs = packed.first_rows(rows).ok_or_else(|| {
                        ModelError::Unsupported(format!("{rows} rows cut a window's run"))
                    })?;
                    Ok(LalLayerPrefix {
                        k: k.clone(),
                        v: k,
                        packed: Some(vec![runs]),
                        ..layer.clone()
                    })
                })
                .collect();
        }
        self.layers
            .iter()
            .zip(&mut self.keys_values)
            .map(|(layer, (k, v))| {
                Ok(LalLayerPrefix {
                    k: k.view(rows)?,
                    v: v.view(rows)?,
                    ..layer.clone()
                })
            })
            .collect()
    }

    /// Bytes held (the buffers' room included).
    fn bytes(&self) -> usize {
        let buffers: usize = self
            .keys_values
            .iter()
            .map(|(k, v)| k.bytes() + v.bytes())
            .sum();
        let packed: usize = self.packed.iter().flatten().map(|p| p.bytes()).sum();
        buffers + packed
    }
}

/// A clip growing window by window (see the module's documentation).
#[derive(Clone, Default)]
pub struct GrowingClip {
    windows: Vec<Window>,
    /// Per encoder, its outputs over the clip (none before the first window).
    outputs: Vec<GrowingRows>,
    /// Per encoder, its output rows so far.
    frames: Vec<usize>,
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

    /// Refuses a clip of `samples` (16 kHz) longer than `model` takes, in seconds or memory
    /// ([`crate::audio_llm::limits::check_clip`]): checked before any of it is encoded.
    pub fn check_length(
        model: &AudioLlm,
        encoders: &[Box<dyn AudioEncoder>],
        samples: usize,
    ) -> Result<()> {
        crate::audio_llm::limits::check_clip(model, encoders, samples)
    }

    /// A whole clip (16 kHz mono) encoded as it would grow: its whole windows one by one, then
    /// the rest as a tail ([`Self::with_tail`]); refused past the encoders' longest clip before
    /// any of it is encoded. What `pal ask`, `pal chat` and the server do with one clip in memory.
    pub fn encode_whole(
        model: &AudioLlm,
        encoders: &[Box<dyn AudioEncoder>],
        samples: &[f32],
    ) -> Result<(Vec<Tensor>, ClipLal)> {
        Self::check_length(model, encoders, samples.len())?;
        let mut clip = Self::new(model)?;
        let window = Self::window_samples(encoders);
        let whole = samples.len() / window * window;
        for w in samples[..whole].chunks(window) {
            clip.push(model, encoders, w)?;
        }
        clip.with_tail(model, encoders, &samples[whole..])
    }

    /// Encodes `window` (16 kHz mono, at most one encoder window) and keeps its outputs and
    /// LAL keys and values after the clip's; refused past the encoders' longest clip
    /// ([`Self::check_length`]).
    pub fn push(
        &mut self,
        model: &AudioLlm,
        encoders: &[Box<dyn AudioEncoder>],
        window: &[f32],
    ) -> Result<()> {
        Self::check_length(model, encoders, self.samples + window.len())?;
        let (outputs, lal, positions) = self.encode(model, encoders, window)?;
        let frames = self.write_outputs(&outputs)?;
        let rows = self.write(&lal)?;
        for (buffers, added) in self.buffers.iter_mut().zip(&rows) {
            if let Some(b) = buffers {
                b.rows += added;
            }
        }
        for (total, added) in self.frames.iter_mut().zip(&frames) {
            *total += added;
        }
        self.positions += positions;
        self.samples += window.len();
        self.windows.push(Window {
            frames,
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

    /// Writes `outputs` after each encoder's output rows (not yet counted); returns the rows
    /// per encoder.
    fn write_outputs(&mut self, outputs: &[Tensor]) -> Result<Vec<usize>> {
        if self.outputs.is_empty() {
            self.outputs = outputs
                .iter()
                .map(|o| GrowingRows::empty(o, 0))
                .collect::<Result<_>>()?;
            self.frames = vec![0; outputs.len()];
        }
        let mut rows = Vec::with_capacity(outputs.len());
        for ((buffer, &at), part) in self.outputs.iter_mut().zip(&self.frames).zip(outputs) {
            buffer.write(at, part)?;
            rows.push(part.dims()[0]);
        }
        Ok(rows)
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
            for (total, rows) in self.frames.iter_mut().zip(&window.frames) {
                *total -= rows;
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
        let outputs: usize = self.outputs.iter().map(|o| o.bytes()).sum();
        let buffers: usize = self.buffers.iter().flatten().map(|b| b.bytes()).sum();
        outputs + buffers
    }

    /// The clip so far and `tail` (audio after the last whole window, encoded now and not
    /// kept as a window): each encoder's outputs and the clip's LAL keys and values, as
    /// [`crate::audio_llm::AudioLlm::prepare_cached`] takes them: views of the buffers (or, for
    /// packed keys and values, the runs so far). Errors when there is no audio at all.
    pub fn with_tail(
        &mut self,
        model: &AudioLlm,
        encoders: &[Box<dyn AudioEncoder>],
        tail: &[f32],
    ) -> Result<(Vec<Tensor>, ClipLal)> {
        if self.windows.is_empty() && tail.is_empty() {
            return Err(ModelError::Unsupported("the clip has no audio yet".into()));
        }
        let mut extra = vec![0; self.buffers.len()];
        let mut tail_frames = vec![0; self.frames.len()];
        if !tail.is_empty() {
            Self::check_length(model, encoders, self.samples + tail.len())?;
            let (outputs, lal, _) = self.encode(model, encoders, tail)?;
            tail_frames = self.write_outputs(&outputs)?;
            extra = self.write(&lal)?;
        }
        let per_encoder = self
            .outputs
            .iter_mut()
            .zip(self.frames.iter().zip(&tail_frames))
            .map(|(buffer, (rows, tail))| buffer.view(rows + tail))
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
