//! How long a clip a model takes, in seconds and in memory, checked before any of it is
//! encoded: `max_audio_seconds` in the model config (without it, each encoder's `max_windows`
//! windows), and `max_audio_mib`, the most memory one clip's audio may hold (its encoder outputs
//! and LAL keys and values), estimated from its length ([`audio_bytes`]). A refusal names the
//! clip's length (so far, for a clip read as it arrives) and its estimated memory beside both
//! limits.

use crate::audio_llm::model::AudioLlm;
use crate::encoders::AudioEncoder;
use crate::error::{ModelError, Result};

/// The limits of one clip, from the model config.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AudioLimits {
    /// Longest clip, seconds (`max_audio_seconds`); `None`: the encoders' `max_windows`.
    pub max_seconds: Option<f64>,
    /// Most bytes one clip's audio may hold (`max_audio_mib`); `None`: no limit.
    pub max_bytes: Option<usize>,
}

/// The most bytes a clip of `samples` (16 kHz) holds once encoded window by window
/// ([`crate::audio_llm::GrowingClip`]): per encoder, its output rows
/// ([`AudioEncoder::rows_for`]) times what is kept of each: the encoder's output in the
/// adapter's type and, at every LAL layer, a key and a value row. Buffers that grow keep up to
/// as much room again (counted twice); keys and values packed in bf16 (where the model attends
/// its prefix so) are packed window by window and counted once. `None` when an encoder cannot
/// say its rows.
pub fn audio_bytes(
    model: &AudioLlm,
    encoders: &[Box<dyn AudioEncoder>],
    samples: usize,
) -> Option<usize> {
    let c = &model.llm.config;
    let key_bytes = match model.llm.bf16_prefix {
        true => 2,
        false => 2 * model.llm.dtype().size_in_bytes(),
    };
    let mut bytes = 0;
    for (attached, encoder) in model.encoders.iter().zip(encoders) {
        let rows = encoder.rows_for(samples)?;
        let output = 2 * encoder.dim() * model.adapter_dtype.size_in_bytes();
        let lal_layers = attached.lal.as_ref().map_or(0, |l| l.layers.len());
        let keys = lal_layers * 2 * c.num_key_value_heads * c.head_dim * key_bytes;
        bytes += rows * (output + keys);
    }
    Some(bytes)
}

/// The longest clip `encoders` take without `max_audio_seconds`, samples: their `max_windows`.
fn windows_limit(encoders: &[Box<dyn AudioEncoder>]) -> Option<usize> {
    encoders.iter().filter_map(|e| e.max_samples()).min()
}

/// Refuses a clip of `samples` (16 kHz) longer than `model` takes, or whose audio would hold
/// more memory than it allows, before any of it is encoded.
pub fn check_clip(
    model: &AudioLlm,
    encoders: &[Box<dyn AudioEncoder>],
    samples: usize,
) -> Result<()> {
    let rate = pal_audio::SAMPLE_RATE as f64;
    let seconds = samples as f64 / rate;
    let (limit, named) = match model.audio_limits.max_seconds {
        Some(s) => (Some(s), "max_audio_seconds".to_string()),
        None => match windows_limit(encoders) {
            Some(limit) => {
                let window = crate::audio_llm::GrowingClip::window_samples(encoders) as f64;
                let text = format!(
                    "max_windows = {} windows of {:.0} s; set max_audio_seconds for longer clips",
                    (limit as f64 / window).round(),
                    window / rate
                );
                (Some(limit as f64 / rate), text)
            }
            None => (None, String::new()),
        },
    };
    let estimate = audio_bytes(model, encoders, samples);
    let too_long = limit.is_some_and(|l| seconds > l + 1e-9);
    let too_big = matches!((estimate, model.audio_limits.max_bytes), (Some(e), Some(m)) if e > m);
    if !too_long && !too_big {
        return Ok(());
    }
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let held = match estimate {
        Some(e) => format!("its audio would hold about {:.0} MiB", mib(e)),
        None => "its audio's memory is not known in advance".to_string(),
    };
    let seconds_limit = match limit {
        Some(l) => format!("{l:.0} s ({named})"),
        None => "any length".to_string(),
    };
    let memory_limit = match model.audio_limits.max_bytes {
        Some(m) => format!("{:.0} MiB (max_audio_mib)", mib(m)),
        None => "no memory limit (max_audio_mib unset)".to_string(),
    };
    Err(ModelError::Unsupported(format!(
        "the clip reaches {seconds:.1} s and {held}; this model takes at most {seconds_limit} and {memory_limit} per clip (in its model config)"
    )))
}
