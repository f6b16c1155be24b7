//! `pal serve`: an OpenAI-compatible HTTP API for a pal audio-LLM.
//!
//! - `POST /v1/chat/completions`: messages with `text` and `input_audio` content parts
//!   (base64 wav, mp3, flac or ogg), `stream` as server-sent events ending in `[DONE]`,
//!   `max_tokens`, `temperature`, `top_p`, `seed`, `stop`, `stream_options.include_usage`.
//! - `POST /v1/audio/transcriptions` (multipart `file`): Whisper transcription, when the
//!   bundle's encoder is a Whisper with its decoder.
//! - `GET /v1/realtime` (WebSocket): live audio in OpenAI's Realtime events, encoded window by
//!   window as it arrives ([`realtime`]); `GET /`: a page that listens and asks.
//! - `GET /v1/models`; `GET /metrics` (Prometheus, behind the key like `/v1`); `GET /health`
//!   (liveness only).
//!
//! The way in ([`listener`]: connections, header timeouts, graceful shutdown; [`guard`]: host,
//! origin, key and content type; [`body`]: bodies read within a byte budget and timeouts), the
//! requests ([`request`]: checked, rendered and tokenized off the async threads; [`audio_in`]:
//! clips decoded within a budget of seconds, stopped when their client leaves), the handlers
//! ([`routes`], sharing [`state`]), and the threads that run the model ([`engine`], its clips
//! from [`clips`], [`transcriber`], on a [`bundle`], with [`work`]'s panic isolation), with
//! what they count ([`metrics`]); [`settings`] holds the limits.

#![warn(missing_docs)]

pub mod api;
pub mod audio_cache;
pub mod audio_in;
pub mod body;
pub mod bundle;
pub mod clips;
pub mod engine;
pub mod guard;
pub mod listener;
pub mod metrics;
pub mod realtime;
pub mod request;
pub mod routes;
pub mod settings;
pub mod state;
pub mod transcriber;
pub mod work;

use std::net::SocketAddr;
use std::path::Path;

use pal_models::audio_llm::build::{load_run_for_inference, run_transcriber};
use pal_models::WeightForm;
use pal_nn::{ComputeDevice, ComputeDtype};

pub use bundle::{Bundle, FaultInjection, FaultPoint};
pub use engine::{Batching, Queue};
pub use listener::serve;
pub use metrics::Counters;
pub use routes::router;
pub use settings::{api_key, Limits, Network, ServeError};
pub use state::AppState;

/// Loads a run folder as a servable bundle as `pal ask` loads it
/// ([`pal_models::audio_llm::build::load_run_for_inference`]): on `device`, in `dtype`, the
/// LLM's linear weights held in `weights`. Transcription is enabled when the first Whisper
/// encoder's folder also holds its decoder.
pub fn load_bundle(
    run: &Path,
    weights: WeightForm,
    device: ComputeDevice,
    dtype: ComputeDtype,
) -> Result<Bundle, ServeError> {
    let built = load_run_for_inference(run, weights, device, dtype)?;
    let precision = dtype.precision(device);
    let whisper = run_transcriber(run, precision.dtype, built.model.llm.device())?;
    Ok(Bundle {
        model: built.model,
        encoders: built.encoders,
        tokenizer: built.tokenizer,
        whisper,
        fault_injection: None,
    })
}

/// A warning for serving on `addr` without an API key when that address is reachable from other
/// machines (anything but loopback); `None` when there is nothing to warn about.
pub fn exposure_warning(addr: &SocketAddr, has_api_key: bool) -> Option<String> {
    (!addr.ip().is_loopback() && !has_api_key).then(|| {
        format!(
            "warning: serving on {addr} without an API key: anyone who can reach this address can use the model (set --api-key or PAL_API_KEY)"
        )
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
