//! The one interface between audio and the audio-LLM: [`AudioEncoder`] turns 16 kHz mono samples
//! into `Na x d_enc` tokens. Implementations: [`WhisperAudioEncoder`] and [`crate::ast::AstEncoder`];
//! [`CachedEncoder`] wraps any of them with an on-disk, content-hash keyed cache (for frozen encoders).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use pal_audio::WhisperMel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};
use crate::whisper::WhisperEncoder;

/// Which hidden state an encoder returns. Index 0 is the embedding output, index `i` the output
/// of layer `i`, and index `L` (the number of layers) the final, normed output, as in Hugging
/// Face's `hidden_states`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LayerSelection {
    /// The final output (after the last norm).
    #[default]
    Last,
    /// Hidden state `i`.
    Index(usize),
    /// Mean of hidden states `start..=end`.
    Mean(usize, usize),
}

impl LayerSelection {
    /// Checks the selection against a model with `total` layers.
    pub fn validate(&self, total: usize) -> Result<()> {
        let ok = match *self {
            Self::Last => true,
            Self::Index(i) => i <= total,
            Self::Mean(a, b) => a <= b && b <= total,
        };
        if ok {
            Ok(())
        } else {
            Err(ModelError::Unsupported(format!(
                "layer selection {self:?} is out of range for an encoder with {total} layers"
            )))
        }
    }

    /// How many layers must run.
    pub fn layers_needed(&self, total: usize) -> usize {
        match *self {
            Self::Last => total,
            Self::Index(i) => i,
            Self::Mean(_, b) => b,
        }
    }

    /// Whether hidden state `index` is part of the selection.
    pub fn wants(&self, index: usize, total: usize) -> bool {
        match *self {
            Self::Last => index == total,
            Self::Index(i) => index == i,
            Self::Mean(a, b) => (a..=b).contains(&index),
        }
    }

    /// Combines the wanted hidden states (in order) into the output.
    pub fn combine(&self, states: Vec<Tensor>) -> Result<Tensor> {
        match states.len() {
            0 => Err(ModelError::Unsupported("no hidden state selected".into())),
            1 => Ok(states.into_iter().next().expect("one state")),
            _ => Ok(Tensor::stack(&states, 0)?.mean(0)?),
        }
    }
}

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

/// How clips longer than an encoder's window are handled: split into consecutive windows whose
/// tokens are concatenated, up to `max_windows` (then an error, never silent truncation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowPolicy {
    /// Most windows per clip.
    pub max_windows: usize,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        Self { max_windows: 4 }
    }
}

impl WindowPolicy {
    /// Splits `samples` into windows of at most `window` samples, or errors when there would be
    /// more than `max_windows`.
    pub fn split<'a>(&self, samples: &'a [f32], window: usize) -> Result<Vec<&'a [f32]>> {
        if samples.is_empty() {
            return Err(ModelError::Unsupported(
                "cannot encode an empty clip".into(),
            ));
        }
        let count = samples.len().div_ceil(window);
        if count > self.max_windows {
            return Err(ModelError::Unsupported(format!(
                "clip of {:.1} s needs {count} encoder windows of {:.1} s; the limit is {} (raise max_windows)",
                samples.len() as f64 / 16000.0,
                window as f64 / 16000.0,
                self.max_windows
            )));
        }
        Ok(samples.chunks(window).collect())
    }
}

/// Whisper's encoder as an [`AudioEncoder`].
pub struct WhisperAudioEncoder {
    encoder: WhisperEncoder,
    mel: WhisperMel,
    /// Which hidden state to return.
    pub layer: LayerSelection,
    /// Encode the clip's real length (positions sliced) instead of padding every window to 30 s.
    pub real_length: bool,
    /// Long-clip policy.
    pub windows: WindowPolicy,
    /// Identity of the weights (e.g. the model folder name).
    pub model_id: String,
}

impl WhisperAudioEncoder {
    /// Wraps a loaded encoder.
    pub fn new(encoder: WhisperEncoder, n_mels: usize, model_id: String) -> Self {
        Self {
            encoder,
            mel: WhisperMel::new(n_mels),
            layer: LayerSelection::Last,
            real_length: true,
            windows: WindowPolicy::default(),
            model_id,
        }
    }

    /// The underlying encoder.
    pub fn encoder(&self) -> &WhisperEncoder {
        &self.encoder
    }

    fn device(&self) -> &Device {
        self.encoder.embed_positions.device()
    }
}

impl AudioEncoder for WhisperAudioEncoder {
    fn id(&self) -> String {
        format!(
            "whisper:{}:{:?}:real_length={}:mels={}",
            self.model_id,
            self.layer,
            self.real_length,
            self.mel.n_mels()
        )
    }

    fn dim(&self) -> usize {
        self.encoder.embed_positions.dims()[1]
    }

    fn encode(&self, samples: &[f32]) -> Result<Tensor> {
        let window = self.encoder.max_frames() * 160;
        let mut outputs = vec![];
        for chunk in self.windows.split(samples, window)? {
            let (feats, frames) = if self.real_length {
                // Whole encoder tokens: pad to a multiple of 2 frames (320 samples).
                let mut padded = chunk.to_vec();
                padded.resize(chunk.len().div_ceil(320).max(1) * 320, 0.0);
                self.mel.compute(&padded, false)
            } else {
                let mut padded = chunk.to_vec();
                padded.resize(window, 0.0);
                self.mel.compute(&padded, false)
            };
            let dtype = self.encoder.embed_positions.dtype();
            let mel = Tensor::from_vec(feats, (1, self.mel.n_mels(), frames), self.device())?
                .to_dtype(dtype)?;
            outputs.push(self.encoder.forward(&mel, self.layer)?.squeeze(0)?);
        }
        Ok(Tensor::cat(&outputs, 0)?)
    }
}

/// An on-disk cache of encoder outputs, keyed by the SHA-256 of the encoder's id and the samples.
/// Only for frozen encoders: the key does not cover trained weights.
pub struct CachedEncoder<E: AudioEncoder> {
    /// The encoder.
    pub inner: E,
    /// Cache folder.
    pub dir: PathBuf,
}

impl<E: AudioEncoder> CachedEncoder<E> {
    /// Caches `inner`'s outputs under `dir`.
    pub fn new(inner: E, dir: PathBuf) -> Self {
        Self { inner, dir }
    }

    /// Cache file of a clip.
    pub fn path_for(&self, samples: &[f32]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.inner.id().as_bytes());
        for s in samples {
            h.update(s.to_le_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(&hex[..2]).join(format!("{hex}.safetensors"))
    }
}

impl<E: AudioEncoder> AudioEncoder for CachedEncoder<E> {
    fn id(&self) -> String {
        self.inner.id()
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn encode(&self, samples: &[f32]) -> Result<Tensor> {
        let path = self.path_for(samples);
        let device = Device::Cpu;
        if path.exists() {
            // A damaged entry is recomputed, not trusted.
            if let Ok(mut t) = candle_core::safetensors::load(&path, &device) {
                if let Some(tokens) = t.remove("tokens") {
                    return Ok(tokens);
                }
            }
        }
        let tokens = self.inner.encode(samples)?;
        let dir = path.parent().expect("cache path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let cpu = tokens.to_dtype(DType::F32)?.to_device(&device)?;
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("tokens".to_string(), cpu)]),
            &tmp,
        )?;
        std::fs::rename(&tmp, &path).map_err(|e| ModelError::io(&path, e))?;
        Ok(tokens)
    }
}
