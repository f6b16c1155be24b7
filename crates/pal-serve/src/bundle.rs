//! A loaded model as the server holds it: the audio-LLM, its encoders, its tokenizer, Whisper
//! for transcriptions, and (in tests only) a fault to inject.

use std::sync::Arc;

use pal_models::audio_llm::AudioLlm;
use pal_models::encoders::whisper::{Whisper, WhisperTokenizer};
use pal_models::encoders::AudioEncoder;
use pal_models::text::Segment;
use pal_models::Tokenizer;

/// A loaded model bundle: the audio-LLM, its encoders, its tokenizer, and a Whisper with its
/// decoder when the bundle's encoder is one (for transcriptions).
pub struct Bundle {
    /// The audio-LLM.
    pub model: AudioLlm,
    /// One encoder per attachment.
    pub encoders: Vec<Box<dyn AudioEncoder>>,
    /// The LLM's tokenizer.
    pub tokenizer: Tokenizer,
    /// Whisper with its decoder, for `/v1/audio/transcriptions`.
    pub whisper: Option<(Whisper, WhisperTokenizer)>,
    /// For tests of the server's resilience only: panics the model thread in the middle of a
    /// batch holding a request whose prompt this matches. `None` in every real server.
    pub fault_injection: Option<FaultInjection>,
}

/// Decides from a request's prompt whether the model thread panics on it (see [`FaultInjection`]).
pub type PanicWhen = dyn Fn(&[Segment]) -> bool + Send + Sync;

/// Where an injected fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// In the request's prefill (isolated: the request fails alone).
    Prefill,
    /// On the model thread outside any isolation, as a bug would: the thread ends.
    ModelThread,
}

/// A test hook that decides, from a request's prompt, whether the model thread panics on it,
/// and where.
#[derive(Clone)]
pub struct FaultInjection(pub Arc<PanicWhen>, pub FaultPoint);

impl FaultInjection {
    pub(crate) fn strikes(&self, at: FaultPoint, segments: &[Segment]) -> bool {
        self.1 == at && (self.0)(segments)
    }
}
