//! The audio front-end of pal: everything between an audio file and an encoder's input features.
//!
//! - [`decode`]: wav, flac, ogg/vorbis and mp3 to mono f32 ([`Audio`]), with clear errors on bad files.
//! - [`resample`]: any rate to the 16 kHz the encoders expect, whole or as it arrives.
//! - [`stream`]: a file decoded to 16 kHz one packet at a time ([`Stream16k`]), for long
//!   recordings and servers.
//! - [`whisper_mel`]: Whisper's log-mel spectrogram (80 or 128 bins).
//! - [`fbank`]: Kaldi filterbank features (as `torchaudio.compliance.kaldi.fbank`), for ViT encoders.
//! - [`hostile`]: well-formed hostile inputs (hours of audio in megabytes, lying lengths) for tests.

#![warn(missing_docs)]

pub mod decode;
pub mod fbank;
pub mod hostile;
pub mod resample;
mod spectrum;
pub mod stream;
pub mod wav;
pub mod whisper_mel;

pub use decode::{decode_bytes, decode_bytes_limited, load_audio, Audio, Packets};
pub use fbank::{KaldiFbank, WindowType};
pub use resample::{resample, StreamResampler};
pub use stream::Stream16k;
pub use wav::{wav_bytes, write_wav};
pub use whisper_mel::WhisperMel;

use std::path::PathBuf;

/// The sample rate every encoder in pal consumes.
pub const SAMPLE_RATE: u32 = 16_000;

/// An audio error; always names the file (or the request field) it is about.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {kind}")]
pub struct AudioError {
    /// The file path, or a description of where the bytes came from.
    pub origin: String,
    /// What went wrong.
    pub kind: AudioErrorKind,
}

/// What went wrong with an audio input.
#[derive(Debug, thiserror::Error)]
pub enum AudioErrorKind {
    /// Could not read the file.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// Not a container format pal decodes (wav, flac, ogg, mp3).
    #[error("not a supported audio format (wav, flac, ogg/vorbis, mp3): {0}")]
    UnsupportedFormat(String),
    /// A known container with a codec pal does not decode.
    #[error("unsupported codec: {0}")]
    UnsupportedCodec(String),
    /// The stream is damaged.
    #[error("corrupt audio: {0}")]
    Corrupt(String),
    /// Fewer samples than the header declares.
    #[error("truncated or damaged: the header declares {declared} frames, only {found} could be decoded")]
    Truncated {
        /// Frames the header declares.
        declared: u64,
        /// Frames actually decoded.
        found: u64,
    },
    /// No samples at all.
    #[error("no audio samples (zero length)")]
    ZeroLength,
    /// NaN or infinity in the samples.
    #[error("non-finite sample value at sample {0}")]
    NonFinite(usize),
    /// A sample rate outside what any real recording uses.
    #[error("sample rate {0} Hz is outside the supported range 1000..=384000 Hz")]
    SampleRate(u32),
    /// Longer than a configured limit (`seconds` is at least the length; decoding stops at the
    /// limit).
    #[error("{seconds:.1} s of audio (or more) exceeds the limit of {limit:.1} s")]
    TooLong {
        /// Duration of the input.
        seconds: f64,
        /// The limit.
        limit: f64,
    },
    /// A resampler failure.
    #[error("resampling failed: {0}")]
    Resample(String),
}

impl AudioError {
    /// An error about `origin`.
    pub fn new(origin: impl Into<String>, kind: AudioErrorKind) -> Self {
        Self {
            origin: origin.into(),
            kind,
        }
    }

    /// An error about the file at `path`.
    pub fn file(path: &std::path::Path, kind: AudioErrorKind) -> Self {
        Self::new(PathBuf::from(path).display().to_string(), kind)
    }
}

/// Result with [`AudioError`].
pub type Result<T> = std::result::Result<T, AudioError>;
