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
}

/// Encodes one clip with each of `encoders`, in order: the audio of one audio-LLM example.
pub fn encode_clip<E: AudioEncoder>(encoders: &[E], samples: &[f32]) -> Result<Vec<Tensor>> {
    encoders.iter().map(|e| e.encode(samples)).collect()
}
