//! `pal serve --model RUN_DIR`: the OpenAI-compatible HTTP API (see `pal_serve`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pal_serve::{AppState, Batching, Limits, Network};

/// Arguments of `pal serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Run folder (model.toml + adapter.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Address to bind; the default answers this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 requests.
    #[arg(long, env = "PAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model name clients send (default: the run folder's name).
    #[arg(long)]
    model_name: Option<String>,
    /// Most requests generated together in one batch (1 turns batching off).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most queued requests; more get 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Largest request body in MiB (413 above).
    #[arg(long, default_value_t = 25)]
    max_body_mb: usize,
    /// Longest clip in seconds.
    #[arg(long, default_value_t = 120.0)]
    max_audio_seconds: f64,
    /// Largest max_tokens a request may ask for (and the default).
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Longest prompt in text tokens.
    #[arg(long, default_value_t = 2048)]
    max_prompt_tokens: usize,
    /// Most messages in a conversation.
    #[arg(long, default_value_t = 256)]
    max_messages: usize,
    /// Most content parts over all messages.
    #[arg(long, default_value_t = 256)]
    max_parts: usize,
    /// Most bytes of text over all messages (checked before anything is tokenized).
    #[arg(long, default_value_t = 256 * 1024)]
    max_prompt_bytes: usize,
    /// Longest stop string in bytes.
    #[arg(long, default_value_t = 256)]
    max_stop_bytes: usize,
    /// MiB of request bodies held at once over all requests (a body's bytes count as they
    /// arrive; more wait for room).
    #[arg(long, default_value_t = 256)]
    upload_budget_mb: usize,
    /// Clips decoded at once; more wait their turn.
    #[arg(long, default_value_t = 4)]
    max_concurrent_decodes: usize,
    /// Seconds of audio decoded at once over all requests (default: --max-concurrent-decodes
    /// times --max-audio-seconds).
    #[arg(long)]
    max_decoding_seconds: Option<f64>,
    /// Realtime sessions (`/v1/realtime`) open at once; more get 503.
    #[arg(long, default_value_t = 16)]
    max_sessions: usize,
    /// Seconds of audio one realtime session may hold.
    #[arg(long, default_value_t = 1800.0)]
    max_session_seconds: f64,
    /// Largest realtime event in MiB (one base64 append of audio, say).
    #[arg(long, default_value_t = 20)]
    max_event_mb: usize,
    /// Seconds a realtime session may go without an event from its client before it is closed.
    #[arg(long, default_value_t = 300.0)]
    session_idle_s: f64,
    /// Seconds of live audio encoded at a time as it arrives (0: the encoder's window, 30 s for
    /// Whisper). Shorter chunks give live transcripts sooner.
    #[arg(long, default_value_t = 0.0)]
    stream_chunk_s: f64,
    /// Seconds a client has to send a request's headers.
    #[arg(long, default_value_t = 30)]
    header_timeout_s: u64,
    /// Seconds a request body may stall between two pieces (408 past it).
    #[arg(long, default_value_t = 30)]
    body_idle_timeout_s: u64,
    /// Seconds a request body has to arrive whole (408 past it).
    #[arg(long, default_value_t = 300)]
    body_timeout_s: u64,
    /// Open connections at most; more are closed at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Seconds requests in flight get to finish on SIGTERM or Ctrl-C before the server stops
    /// anyway.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout_s: u64,
    /// Host names clients may address the server by, besides IP addresses and localhost
    /// (comma-separated; `*` for any). Guards against DNS rebinding.
    #[arg(long, value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// A browser origin allowed to call the API from its pages (CORS), such as
    /// https://app.example; none by default.
    #[arg(long)]
    cors_origin: Option<String>,
    /// Memory for the audio cache in MiB: encoder outputs and LAL keys/values of recent clips,
    /// with the last prompts asked about each, so that more questions about a clip skip the
    /// encoder and the prompt rows they share (0 turns it off).
    #[arg(long, default_value_t = 512)]
    audio_cache_mb: usize,
    #[command(flatten)]
    weights: super::WeightsArg,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Loads the bundle and serves until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // A bad key is refused before minutes of loading.
    let api_key = pal_serve::api_key(args.api_key)?;
    let bundle = pal_serve::load_bundle(
        &args.model,
        args.weights.weights,
        args.device.device,
        args.device.dtype,
    )
    .with_context(|| format!("loading the run folder {}", args.model.display()))?;
    let model_name = match args.model_name {
        Some(n) => n,
        None => args
            .model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_else(|| "pal".into()),
    };
    let can_transcribe = bundle.whisper.is_some();
    let bundle = Arc::new(bundle);
    let batching = Batching {
        max_batch: args.max_batch.max(1),
        queue_capacity: args.queue.max(1),
        audio_cache_bytes: args.audio_cache_mb << 20,
    };
    let (queue, worker) = pal_serve::engine::start(bundle.clone(), batching);
    let limits = Limits {
        max_body_bytes: args.max_body_mb * 1024 * 1024,
        max_audio_seconds: args.max_audio_seconds,
        max_tokens: args.max_tokens,
        max_prompt_tokens: args.max_prompt_tokens,
        max_messages: args.max_messages,
        max_parts: args.max_parts,
        max_prompt_bytes: args.max_prompt_bytes,
        max_stop_bytes: args.max_stop_bytes,
        upload_budget_bytes: args.upload_budget_mb << 20,
        max_concurrent_decodes: args.max_concurrent_decodes.max(1),
        max_decoding_seconds: args
            .max_decoding_seconds
            .unwrap_or(args.max_concurrent_decodes.max(1) as f64 * args.max_audio_seconds),
        max_sessions: args.max_sessions,
        max_session_seconds: args.max_session_seconds,
        max_event_bytes: args.max_event_mb << 20,
        session_idle_seconds: args.session_idle_s,
        stream_chunk_seconds: args.stream_chunk_s,
    };
    let args_hosts_set = !args.allowed_hosts.is_empty();
    let network = Network {
        header_timeout: Duration::from_secs(args.header_timeout_s.max(1)),
        body_idle_timeout: Duration::from_secs(args.body_idle_timeout_s.max(1)),
        body_timeout: Duration::from_secs(args.body_timeout_s.max(1)),
        max_connections: args.max_connections.max(1),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_s),
        allowed_hosts: args.allowed_hosts,
        cors_origin: args.cors_origin,
    };
    let has_key = api_key.is_some();
    let state = Arc::new(AppState::new(
        model_name.clone(),
        &bundle,
        queue,
        limits,
        network,
        api_key,
    )?);
    drop(bundle);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        if let Some(warning) = pal_serve::exposure_warning(&addr, has_key) {
            eprintln!("{warning}");
        }
        if !addr.ip().is_loopback() && !args_hosts_set {
            eprintln!("note: clients must address this server by IP address or localhost; allow host names with --allowed-hosts");
        }
        eprintln!(
            "serving '{model_name}' on http://{addr} (transcription {}); the page that listens: http://{addr}/",
            if can_transcribe { "on" } else { "off" }
        );
        pal_serve::serve(listener, state, pal_serve::shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    // Blocking work left (a decode whose client has gone) is not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // The queue's senders are gone with the server: the model thread drains and ends.
    let _ = worker.join();
    eprintln!("stopped");
    Ok(())
}
