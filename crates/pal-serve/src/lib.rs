//! `pal serve`: an OpenAI-compatible HTTP API for a pal audio-LLM.
//!
//! - `POST /v1/chat/completions`: messages with `text` and `input_audio` content parts
//!   (base64 wav, mp3, flac or ogg), `stream` as server-sent events ending in `[DONE]`,
//!   `max_tokens`, `temperature`, `top_p`, `seed`, `stop`.
//! - `POST /v1/audio/transcriptions` (multipart `file`): Whisper transcription, when the
//!   bundle's encoder is a Whisper with its decoder.
//! - `GET /v1/models`, `GET /health`.
//!
//! Requests are checked and their audio decoded on the async side ([`routes`]); one model thread
//! batches and runs them ([`engine`]).

#![warn(missing_docs)]

pub mod api;
pub mod audio_cache;
pub mod engine;
pub mod routes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use pal_models::audio_llm::{build::resolve_path, config::EncoderKind, load_run, ModelConfig};
use pal_models::encoders::whisper::{Whisper, WhisperTokenizer};
use pal_models::WeightForm;

pub use engine::{Batching, Bundle, Counters, FaultInjection, Queue};
pub use routes::{router, AppState};

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body (413 above).
    pub max_body_bytes: usize,
    /// Longest clip in seconds (400 above).
    pub max_audio_seconds: f64,
    /// Largest `max_tokens` a request may ask for (400 above); also the default.
    pub max_tokens: usize,
    /// Longest prompt in tokens, audio excluded (400 above).
    pub max_prompt_tokens: usize,
    /// Requests whose body is read and whose audio is decoded at once; more wait their turn
    /// before their body is read (bounds the memory of uploads and decoding).
    pub max_concurrent_decodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 25 * 1024 * 1024,
            max_audio_seconds: 120.0,
            max_tokens: 512,
            max_prompt_tokens: 2048,
            max_concurrent_decodes: 4,
        }
    }
}

/// Errors while starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model bundle did not load.
    #[error(transparent)]
    Model(#[from] pal_models::ModelError),
    /// The address could not be bound, or serving failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Loads a run folder as a servable bundle on `device`, the frozen LLM and encoders in `dtype`
/// (the adapter in f32 beside bf16), the LLM's linear weights held in `weights`.
/// Transcription is enabled when the first Whisper encoder's folder also holds its decoder.
pub fn load_bundle(
    run: &Path,
    weights: WeightForm,
    dtype: DType,
    device: &Device,
) -> Result<Bundle, ServeError> {
    let mut built = load_run(run, dtype, device)?;
    built.hold_weights(weights)?;
    let config = ModelConfig::load(&run.join("model.toml"))?;
    let whisper = config
        .encoders
        .iter()
        .find(|e| e.kind == EncoderKind::Whisper)
        .and_then(|spec| {
            let folder = resolve_path(&spec.path, run).ok()?;
            let model = Whisper::from_folder(&folder, true, dtype, device).ok()?;
            let tokenizer = WhisperTokenizer::from_folder(&folder, &model.config, "en").ok()?;
            Some((model, tokenizer))
        });
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

/// Serves `state` on `listener` until `shutdown` resolves; then stops accepting connections
/// and lets the requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ServeError::Io(format!("serving on {addr:?}"), e))
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
