//! The encoder interface, and encoding one clip with every encoder of a model.

use candle_core::Tensor;

use crate::error::Result;

/// An audio encoder: 16 kHz mono samples in, `(Na, d_enc)` tokens out.
pub trait AudioEncoder: Send + Sync {
    /// A string that identifies the encoder and every option that changes its output (used as
    /// part of cache keys).
    fn id(&self) -> String;
    /// Width of the output tokens.
    fn dim(&self) -> usize;
    /// Encodes one clip.
    fn encode(&self, samples: &[f32]) -> Result<Tensor>;
    /// Encodes several clips: for each, what [`Self::encode`] gives. Encoders that can run clips
    /// as one padded batch override it (far better use of the matrix units on short clips).
    fn encode_batch(&self, clips: &[&[f32]]) -> Result<Vec<Tensor>> {
        clips.iter().map(|c| self.encode(c)).collect()
    }
    /// Samples of the window a long clip is cut into (each encoded alone), when the encoder
    /// has one (Whisper: 30 s; AST: its `max_length` frames).
    fn window_samples(&self) -> Option<usize> {
        None
    }
    /// The longest clip it takes, in samples: `max_windows` of its windows (see
    /// [`crate::encoders::windows::WindowPolicy`]); `None` for no limit.
    fn max_samples(&self) -> Option<usize> {
        None
    }
    /// How many output rows a clip of `samples` gives, when the encoder can tell without
    /// encoding it (what [`crate::audio_llm::limits`] estimates a clip's memory from).
    fn rows_for(&self, _samples: usize) -> Option<usize> {
        None
    }
}

impl AudioEncoder for Box<dyn AudioEncoder> {
    fn id(&self) -> String {
        self.as_ref().id()
    }

    fn dim(&self) -> usize {
        self.as_ref().dim()
    }

    fn encode(&self, samples: &[f32]) -> Result<Tensor> {
        self.as_ref().encode(samples)
    }

    fn encode_batch(&self, clips: &[&[f32]]) -> Result<Vec<Tensor>> {
        self.as_ref().encode_batch(clips)
    }

    fn window_samples(&self) -> Option<usize> {
        self.as_ref().window_samples()
    }

    fn max_samples(&self) -> Option<usize> {
        self.as_ref().max_samples()
    }

    fn rows_for(&self, samples: usize) -> Option<usize> {
        self.as_ref().rows_for(samples)
    }
}

/// Encodes one clip with each of `encoders`, in order: the audio of one audio-LLM example.
pub fn encode_clip<E: AudioEncoder>(encoders: &[E], samples: &[f32]) -> Result<Vec<Tensor>> {
    encoders.iter().map(|e| e.encode(samples)).collect()
}

/// Encodes several clips with each of `encoders` (each encoder sees all clips as one batch): the
/// audio of one audio-LLM example per clip, in order.
pub fn encode_clips<E: AudioEncoder>(encoders: &[E], clips: &[&[f32]]) -> Result<Vec<Vec<Tensor>>> {
    let mut per_clip: Vec<Vec<Tensor>> = vec![vec![]; clips.len()];
    for e in encoders {
        for (clip, tokens) in per_clip.iter_mut().zip(e.encode_batch(clips)?) {
            clip.push(tokens);
        }
    }
    Ok(per_clip)
}

/// One outcome per clip of `clips`, in order: `encode` runs them all at once and, when that
/// fails, each alone, so that a clip that cannot be encoded (too long, say) fails by itself
/// instead of failing the clips batched with it.
pub fn batch_or_each<T>(
    clips: &[&[f32]],
    encode: impl Fn(&[&[f32]]) -> std::result::Result<Vec<T>, String>,
) -> Vec<std::result::Result<T, String>> {
    match encode(clips) {
        Ok(outputs) => outputs.into_iter().map(Ok).collect(),
        Err(_) if clips.len() > 1 => clips
            .iter()
            .map(|clip| {
                encode(std::slice::from_ref(clip))
                    .map(|mut one| one.pop().expect("one clip in, one out"))
            })
            .collect(),
        Err(e) => vec![Err(e)],
    }
}
