//! A request's clips to 16 kHz samples, with bounded work: at most
//! [`Limits::max_concurrent_decodes`] clips decode at once, and together they hold at most
//! [`Limits::max_decoding_seconds`] of audio (each reserves its header's length, or the
//! longest clip allowed when the header does not say, before it decodes). Decoding streams
//! ([`pal_audio::Stream16k`]): at any rate and channel count a clip holds only its 16 kHz
//! samples. A clip whose client goes away stops decoding at its next packet, and its slot and
//! seconds are given back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use pal_audio::{AudioErrorKind, Stream16k};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;
use crate::metrics::Counters;
use crate::request::ClipPart;
use crate::settings::Limits;

/// The decoding budget every request shares.
pub struct Decoding {
    slots: Arc<Semaphore>,
    /// Milliseconds of audio.
    millis: Arc<Semaphore>,
    counters: Arc<Counters>,
    limits: Limits,
}

/// Milliseconds of audio held against the budget; given back when dropped.
struct Reserved {
    permit: OwnedSemaphorePermit,
    counters: Arc<Counters>,
}

impl Reserved {
    fn millis(&self) -> u64 {
        self.permit.num_permits() as u64
    }

    fn add(&mut self, more: OwnedSemaphorePermit) {
        let n = more.num_permits() as u64;
        self.permit.merge(more);
        self.counters
            .decoding_millis
            .fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.counters
            .decoding_millis
            .fetch_sub(self.millis(), Ordering::Relaxed);
    }
}

/// Sets its flag when dropped: the handler that holds it has ended (its client went away).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn millis(seconds: f64) -> u32 {
    (seconds * 1000.0).ceil().clamp(1.0, u32::MAX as f64) as u32
}

impl Decoding {
    /// The budget of `limits` (the seconds at least one longest clip).
    pub fn new(limits: &Limits, counters: Arc<Counters>) -> Self {
        let seconds = limits.max_decoding_seconds.max(limits.max_audio_seconds);
        Self {
            slots: Arc::new(Semaphore::new(limits.max_concurrent_decodes.max(1))),
            millis: Arc::new(Semaphore::new(
                (millis(seconds) as usize).min(Semaphore::MAX_PERMITS),
            )),
            counters,
            limits: *limits,
        }
    }

    /// Each clip's 16 kHz mono samples, in order; 400 naming the field for a clip that does not
    /// decode or is too long.
    pub async fn decode_all(&self, clips: Vec<ClipPart>) -> Result<Vec<Vec<f32>>, ApiError> {
        let mut samples = Vec::with_capacity(clips.len());
        for clip in clips {
            samples.push(self.decode(clip).await?);
        }
        Ok(samples)
    }

    async fn decode(&self, clip: ClipPart) -> Result<Vec<f32>, ApiError> {
        let stopping = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        };
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| stopping())?;
        let max = self.limits.max_audio_seconds;
        let field = clip.field.clone();
        let stream = blocking(move || {
            Stream16k::from_bytes(clip.bytes, Some(&clip.format), &clip.field, Some(max))
        })
        .await?
        .map_err(|e| audio_error(&field, e))?;
        let wanted = millis(stream.declared_seconds().unwrap_or(max).min(max));
        let permit = self
            .millis
            .clone()
            .acquire_many_owned(wanted)
            .await
            .map_err(|_| stopping())?;
        self.counters
            .decoding_millis
            .fetch_add(wanted as u64, Ordering::Relaxed);
        let mut reserved = Reserved {
            permit,
            counters: self.counters.clone(),
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());
        let budget = self.millis.clone();
        let field_in = field.clone();
        let decoded = blocking(move || {
            let _slot = slot;
            let mut stream = stream;
            let mut samples = vec![];
            while let Some(chunk) = stream.next_chunk().map_err(|e| audio_error(&field_in, e))? {
                if cancelled.load(Ordering::Relaxed) {
                    return Err(ApiError::bad(field_in.clone(), "the client went away"));
                }
                samples.extend_from_slice(&chunk);
                // A header that said less than the file holds: more budget, or 503 (never a
                // wait here, where the slot is held).
                let held = reserved.millis();
                let now = millis(stream.seconds_decoded()) as u64;
                if now > held {
                    let more = budget
                        .clone()
                        .try_acquire_many_owned((now - held) as u32 + 1000)
                        .map_err(|_| {
                            ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the server is decoding as much audio as it can hold; retry shortly",
                            )
                            .with_code("decoding_busy")
                        })?;
                    reserved.add(more);
                }
            }
            Ok(samples)
        })
        .await?;
        decoded
    }
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A 400 naming `field` for audio that does not decode or is too long.
fn audio_error(field: &str, e: pal_audio::AudioError) -> ApiError {
    match e.kind {
        AudioErrorKind::TooLong { seconds, limit } => ApiError::bad(
            field.to_string(),
            format!(
                "the clip is {seconds:.1} s long or longer; this server takes at most {limit} s (--max-audio-seconds)"
            ),
        )
        .with_code("audio_too_long"),
        _ => ApiError::bad(field.to_string(), format!("could not decode the audio: {e}")),
    }
}
