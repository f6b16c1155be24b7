//! What every handler shares: the prompting (tokenizer, template, limits), the model threads'
//! queues, the settings, the key, and the budgets of uploads and decoding.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::audio_in::Decoding;
use crate::body::upload_budget;
use crate::engine::Queue;
use crate::request::Prompting;
use crate::settings::{Limits, Network, ServeError};

/// What every handler shares.
pub struct AppState {
    /// The tokenizer, chat template and limits prompts are made with (shared with the blocking
    /// threads that make them).
    pub prompting: Arc<Prompting>,
    /// Whether transcription is available.
    pub can_transcribe: bool,
    /// The model threads' queues.
    pub queue: Queue,
    /// Request limits.
    pub limits: Limits,
    /// Connections, timeouts, hosts and origins.
    pub network: Network,
    /// When set, `/v1` and `/metrics` need it (`Authorization: Bearer <key>`).
    pub api_key: Option<String>,
    /// Numbers response ids.
    pub next_id: AtomicU64,
    /// Bytes of request bodies held at once ([`Limits::upload_budget_bytes`]).
    pub uploads: Arc<Semaphore>,
    /// Clips and seconds of audio decoded at once.
    pub decoding: Decoding,
    /// Samples per window of a realtime session's recording, or why the model cannot take
    /// audio as it arrives.
    pub live_window: Result<usize, String>,
    /// Realtime sessions open at once ([`Limits::max_sessions`]).
    pub sessions: Arc<Semaphore>,
    /// Numbers realtime sessions.
    pub next_session: AtomicU64,
}

impl AppState {
    /// The state of a server for `bundle`'s model under `model_name`, with its queue; refuses
    /// an empty API key.
    pub fn new(
        model_name: String,
        bundle: &crate::bundle::Bundle,
        queue: Queue,
        limits: Limits,
        network: Network,
        api_key: Option<String>,
    ) -> Result<Self, ServeError> {
        let tokenizer = bundle.tokenizer.clone();
        let prompting = Prompting {
            model_name,
            template: pal_infer::ChatTemplate::for_tokenizer(&tokenizer)?,
            tokenizer,
            max_clips: bundle.model.max_clips,
            limits,
        };
        let counters = queue.counters.clone();
        let live_window = pal_models::audio_llm::GrowingClip::new(&bundle.model)
            .map(|_| pal_models::audio_llm::GrowingClip::window_samples(&bundle.encoders))
            .map_err(|e| e.to_string());
        Ok(Self {
            live_window,
            sessions: Arc::new(Semaphore::new(limits.max_sessions)),
            next_session: AtomicU64::new(0),
            prompting: Arc::new(prompting),
            can_transcribe: bundle.whisper.is_some(),
            queue,
            uploads: upload_budget(&limits),
            decoding: Decoding::new(&limits, counters),
            limits,
            network,
            api_key: crate::settings::api_key(api_key)?,
            next_id: AtomicU64::new(0),
        })
    }

    /// The served model's name.
    pub fn model_name(&self) -> &str {
        &self.prompting.model_name
    }
}
