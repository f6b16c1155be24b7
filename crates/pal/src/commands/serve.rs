//! `pal serve --model RUN_DIR`: the OpenAI-compatible HTTP API (see `pal_serve`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use pal_serve::{AppState, Batching, Limits};

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
    /// Requests reading their body and decoding audio at once; others wait before their body is
    /// read (bounds memory under many concurrent uploads).
    #[arg(long, default_value_t = 4)]
    max_concurrent_decodes: usize,
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
    let device = args.device.device.open()?;
    let bundle = pal_serve::load_bundle(
        &args.model,
        args.weights.weights,
        args.device.dtype.dtype(),
        &device,
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
        max_concurrent_decodes: args.max_concurrent_decodes.max(1),
    };
    let has_key = args.api_key.is_some();
    let state = Arc::new(AppState::new(
        model_name.clone(),
        &bundle,
        queue,
        limits,
        args.api_key,
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
        eprintln!(
            "serving '{model_name}' on http://{addr} (transcription {})",
            if can_transcribe { "on" } else { "off" }
        );
        pal_serve::serve(listener, state, pal_serve::shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    // The queue's senders are gone with the server: the model thread drains and ends.
    let _ = worker.join();
    eprintln!("stopped");
    Ok(())
}
