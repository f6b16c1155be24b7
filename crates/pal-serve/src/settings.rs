//! The server's settings: what one request may ask and what all requests may hold at once
//! ([`Limits`]), how connections are taken and who may call ([`Network`]), the API key, and
//! the errors of starting a server.

use std::time::Duration;

/// Limits on what one request may ask, and on the work all requests in flight may hold at
/// once. Each has a `pal serve` flag; a request past one gets an error naming it.
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
    /// Most messages in a conversation (400 above, before anything is rendered).
    pub max_messages: usize,
    /// Most content parts over all messages (400 above).
    pub max_parts: usize,
    /// Most bytes of text over all messages (400 above, before tokenizing).
    pub max_prompt_bytes: usize,
    /// Longest stop string in bytes (400 above).
    pub max_stop_bytes: usize,
    /// Bytes of request bodies all requests may hold at once: a body's bytes count from the
    /// moment they arrive (a slow upload holds only what it sent), and a body waits for room.
    pub upload_budget_bytes: usize,
    /// Clips decoded at once; more wait their turn.
    pub max_concurrent_decodes: usize,
    /// Seconds of audio being decoded at once over all requests (each clip reserves its
    /// declared length, or `max_audio_seconds` when its header does not say).
    pub max_decoding_seconds: f64,
    /// Realtime sessions open at once (503 for more).
    pub max_sessions: usize,
    /// Seconds of audio one realtime session may hold (appends past it are refused).
    pub max_session_seconds: f64,
    /// Largest realtime event in bytes (a larger one closes the session with 1009).
    pub max_event_bytes: usize,
    /// A realtime session with no event from its client for this long is closed.
    pub session_idle_seconds: f64,
    /// Seconds of a realtime recording encoded at a time, as it arrives (0: the encoder's own
    /// window, 30 s for Whisper; shorter windows give live transcripts sooner).
    pub stream_chunk_seconds: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 25 * 1024 * 1024,
            max_audio_seconds: 120.0,
            max_tokens: 512,
            max_prompt_tokens: 2048,
            max_messages: 256,
            max_parts: 256,
            max_prompt_bytes: 256 * 1024,
            max_stop_bytes: 256,
            upload_budget_bytes: 256 * 1024 * 1024,
            max_concurrent_decodes: 4,
            max_decoding_seconds: 4.0 * 120.0,
            max_sessions: 16,
            max_session_seconds: 1800.0,
            max_event_bytes: 20 * 1024 * 1024,
            session_idle_seconds: 300.0,
            stream_chunk_seconds: 0.0,
        }
    }
}

/// How connections are taken and let go, and who may call the server.
#[derive(Debug, Clone)]
pub struct Network {
    /// A client must send a request's headers within this (else the connection is closed).
    pub header_timeout: Duration,
    /// A body must make progress within this between any two pieces (408 past it).
    pub body_idle_timeout: Duration,
    /// A body must arrive whole within this (408 past it).
    pub body_timeout: Duration,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// On shutdown, requests in flight get this long to finish; then the server stops anyway.
    pub shutdown_timeout: Duration,
    /// Host names requests may address besides IP addresses and `localhost` (`*`: any). A
    /// page on another site that resolves its own name to this server (DNS rebinding) is
    /// refused by this check.
    pub allowed_hosts: Vec<String>,
    /// The one browser origin allowed to call the API from a page (CORS); none by default.
    pub cors_origin: Option<String>,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(300),
            max_connections: 256,
            shutdown_timeout: Duration::from_secs(30),
            allowed_hosts: vec![],
            cors_origin: None,
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
    /// A setting that cannot work (an empty API key, say).
    #[error("{0}")]
    Config(String),
}

/// The API key as given (`--api-key` or `PAL_API_KEY`), refused when it is empty or blank: an
/// empty key would let a client in with `Authorization: Bearer ` and nothing after it.
pub fn api_key(given: Option<String>) -> Result<Option<String>, ServeError> {
    match given {
        Some(key) if key.trim().is_empty() => Err(ServeError::Config(
            "the API key is empty (--api-key or PAL_API_KEY): give a key, or unset it to serve without one".into(),
        )),
        Some(key) if key != key.trim() || key.chars().any(char::is_control) => Err(ServeError::Config(
            "the API key has spaces at its ends or control characters (--api-key or PAL_API_KEY); clients could not send it in a header".into(),
        )),
        other => Ok(other),
    }
}
