//! HTTP handlers: authentication, limits, request checking, audio decoding, and turning the
//! model thread's events into OpenAI responses or server-sent events.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use pal_infer::{ChatTemplate, GenerationParams, Message};
use pal_models::text::segments::AUDIO_MARKER;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::api::{self, ApiError, ChatRequest, Content, Stop, Usage};
use crate::engine::{Event, Job, Queue, SubmitError};
use crate::Limits;

/// What every handler shares.
pub struct AppState {
    /// The name clients use in `model`.
    pub model_name: String,
    /// Whether transcription is available.
    pub can_transcribe: bool,
    /// The LLM's tokenizer and chat template (prompts are built before queueing).
    pub tokenizer: Arc<pal_models::Tokenizer>,
    /// The chat template.
    pub template: ChatTemplate,
    /// The model thread's queue.
    pub queue: Queue,
    /// Request limits.
    pub limits: Limits,
    /// When set, every `/v1` request needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Numbers response ids.
    pub next_id: AtomicU64,
    /// Admission: requests reading their body or decoding audio (see
    /// [`Limits::max_concurrent_decodes`]).
    pub decodes: tokio::sync::Semaphore,
    /// Most audio clips one request may hold (the model config's `max_clips`).
    pub max_clips: usize,
}

impl AppState {
    /// The state of a server for `bundle`'s model under `model_name`, with its queue.
    pub fn new(
        model_name: String,
        bundle: &crate::Bundle,
        queue: Queue,
        limits: Limits,
        api_key: Option<String>,
    ) -> Result<Self, pal_models::ModelError> {
        let tokenizer = Arc::new(bundle.tokenizer.clone());
        Ok(Self {
            model_name,
            can_transcribe: bundle.whisper.is_some(),
            template: ChatTemplate::for_tokenizer(&tokenizer)?,
            tokenizer,
            queue,
            decodes: tokio::sync::Semaphore::new(limits.max_concurrent_decodes.max(1)),
            limits,
            api_key,
            next_id: AtomicU64::new(0),
            max_clips: bundle.model.max_clips,
        })
    }
}

/// Whether two byte strings are equal, in time that depends only on their lengths (an API key
/// compared with `==` leaks, through timing, how much of a guess is right).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The routes, with authentication and the body limit.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/models", get(models))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or incorrect API key: send `Authorization: Bearer <key>`",
            )
            .with_code("invalid_api_key")
            .into_response();
        }
    }
    next.run(request).await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `ok`; `degraded` once a batch has panicked (the server goes on; the count and the last
/// message say what happened); `stopped` (with 503) when the model thread has ended.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.queue.counters;
    let panics = c.panics.load(Ordering::Relaxed);
    let stopped = c.stopped.load(Ordering::Relaxed);
    let status = match (stopped, panics) {
        (true, _) => "stopped",
        (false, 0) => "ok",
        (false, _) => "degraded",
    };
    let last_panic = c
        .last_panic
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let body = Json(json!({
        "status": status,
        "model": state.model_name,
        "chats": c.chats.load(Ordering::Relaxed),
        "decode_steps": c.decode_steps.load(Ordering::Relaxed),
        "decoded_rows": c.decoded_rows.load(Ordering::Relaxed),
        "cancelled": c.cancelled.load(Ordering::Relaxed),
        "transcriptions": c.transcriptions.load(Ordering::Relaxed),
        "refused": c.refused.load(Ordering::Relaxed),
        "too_long": c.too_long.load(Ordering::Relaxed),
        "audio_cache_hits": c.audio_cache_hits.load(Ordering::Relaxed),
        "audio_cache_misses": c.audio_cache_misses.load(Ordering::Relaxed),
        "encoder_batches": c.encoder_batches.load(Ordering::Relaxed),
        "prompt_cache_hits": c.prompt_cache_hits.load(Ordering::Relaxed),
        "prompt_rows_reused": c.prompt_rows_reused.load(Ordering::Relaxed),
        "prompt_rows_run": c.prompt_rows_run.load(Ordering::Relaxed),
        "panics": panics,
        "last_panic": last_panic,
        // Seconds each stage's thread has been busy since the start (where the time goes).
        "busy_s": {
            "encode": seconds(&c.encode_micros),
            "prefill": seconds(&c.prefill_micros),
            "decode": seconds(&c.decode_micros),
        },
    }));
    if stopped {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else {
        body.into_response()
    }
}

/// A microsecond counter in seconds, to the millisecond.
fn seconds(micros: &std::sync::atomic::AtomicU64) -> f64 {
    (micros.load(Ordering::Relaxed) / 1000) as f64 / 1000.0
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": state.model_name, "object": "model", "created": 0, "owned_by": "pal"}],
    }))
}

/// An extractor's failure (reading the body or a form field) in OpenAI's shape: 413 when the
/// body is over the limit, otherwise the extractor's status with `detail`.
fn rejected(status: StatusCode, detail: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "the request body is larger than the server's limit")
    } else {
        ApiError::new(status, detail)
    }
}

/// The body, or 413/400 from the extractor in OpenAI's shape.
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| rejected(r.status(), r.body_text()))
}

/// Decodes a clip (any supported format) to 16 kHz mono. The duration limit is applied inside
/// the decoder, which stops at it: a small file that holds hours of audio never becomes hours of
/// samples in memory.
async fn decode_clip(
    bytes: Vec<u8>,
    format: Option<String>,
    param: &str,
    limits: Limits,
) -> Result<Vec<f32>, ApiError> {
    let origin = param.to_string();
    let decoded = tokio::task::spawn_blocking(move || {
        let limit = Some(limits.max_audio_seconds);
        let audio = pal_audio::decode_bytes_limited(bytes, format.as_deref(), &origin, limit)?;
        audio.to_16k(&origin).map(|a| a.samples)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    decoded.map_err(|e| match e.kind {
        pal_audio::AudioErrorKind::TooLong { seconds, limit } => ApiError::bad(
            param.to_string(),
            format!(
                "the clip is {seconds:.1} s long or longer; this server takes at most {limit} s"
            ),
        )
        .with_code("audio_too_long"),
        _ => ApiError::bad(
            param.to_string(),
            format!("could not decode the audio: {e}"),
        ),
    })
}

/// One audio part of a request: its bytes, format, and the field to name in errors.
struct ClipPart {
    bytes: Vec<u8>,
    format: String,
    field: String,
}

/// A piece of a message's content, in order.
enum Piece {
    Text(String),
    Audio,
}

/// The conversation as messages, and its clips in order. With one clip, the clip goes where
/// training put it (the start of the first user message); with several, each goes where its
/// part is ([`AUDIO_MARKER`] in the text). Text may not contain the marker itself.
fn parse_messages(
    request: &ChatRequest,
    max_clips: usize,
) -> Result<(Vec<Message>, Vec<ClipPart>), ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::bad(
            "messages".to_string(),
            "messages must not be empty",
        ));
    }
    let no_marker = |text: &str, field: String| {
        if text.contains(AUDIO_MARKER) {
            return Err(ApiError::bad(
                field,
                format!("text may not contain {AUDIO_MARKER} (send audio as an input_audio part)"),
            ));
        }
        Ok(())
    };
    let mut conversation: Vec<(&str, Vec<Piece>)> = vec![];
    let mut clips = vec![];
    for (m, message) in request.messages.iter().enumerate() {
        let role = match message.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant") => r,
            other => {
                return Err(ApiError::bad(
                    format!("messages[{m}].role"),
                    format!("unsupported role '{other}' (system, user or assistant)"),
                ))
            }
        };
        let mut pieces = vec![];
        match &message.content {
            None => {}
            Some(Content::Text(t)) => {
                no_marker(t, format!("messages[{m}].content"))?;
                pieces.push(Piece::Text(t.clone()));
            }
            Some(Content::Parts(parts)) => {
                for (p, part) in parts.iter().enumerate() {
                    let at = format!("messages[{m}].content[{p}]");
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            let t = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                                ApiError::bad(
                                    format!("{at}.text"),
                                    "a text part needs a string `text`",
                                )
                            })?;
                            no_marker(t, format!("{at}.text"))?;
                            pieces.push(Piece::Text(t.to_string()));
                        }
                        Some(kind @ ("input_audio" | "audio_url")) => {
                            if clips.len() == max_clips {
                                return Err(ApiError::bad(
                                    at,
                                    format!(
                                        "this model takes at most {max_clips} audio clip(s) per request (max_clips in its config)"
                                    ),
                                ));
                            }
                            let (data, format, field) = if kind == "input_audio" {
                                input_audio(part, &at)?
                            } else {
                                audio_url(part, &at)?
                            };
                            let bytes = base64::engine::general_purpose::STANDARD
                                .decode(data.trim())
                                .map_err(|e| {
                                    ApiError::bad(
                                        field.clone(),
                                        format!("the audio is not valid base64: {e}"),
                                    )
                                })?;
                            clips.push(ClipPart {
                                bytes,
                                format,
                                field: format!("{at}.{kind}"),
                            });
                            pieces.push(Piece::Audio);
                        }
                        other => {
                            return Err(ApiError::bad(
                                format!("{at}.type"),
                                format!(
                                    "unsupported content part type {other:?} (text, input_audio or audio_url)"
                                ),
                            ))
                        }
                    }
                }
            }
        }
        conversation.push((role, pieces));
    }
    let place_clips = clips.len() > 1;
    let messages = conversation
        .into_iter()
        .map(|(role, pieces)| {
            let texts: Vec<&str> = pieces
                .iter()
                .filter_map(|piece| match piece {
                    Piece::Text(t) => Some(t.as_str()),
                    Piece::Audio if place_clips => Some(AUDIO_MARKER),
                    Piece::Audio => None,
                })
                .collect();
            Message::new(role, texts.join("\n"))
        })
        .collect();
    Ok((messages, clips))
}

/// An `input_audio` part's base64 data and format (and the field to name in errors).
fn input_audio<'a>(part: &'a Value, at: &str) -> Result<(&'a str, String, String), ApiError> {
    let data = part
        .pointer("/input_audio/data")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad(
                format!("{at}.input_audio.data"),
                "input_audio needs base64 `data`",
            )
        })?;
    let format = part
        .pointer("/input_audio/format")
        .and_then(Value::as_str)
        .unwrap_or("wav")
        .to_lowercase();
    if !["wav", "mp3", "flac", "ogg"].contains(&format.as_str()) {
        return Err(ApiError::bad(
            format!("{at}.input_audio.format"),
            format!("unsupported audio format '{format}' (wav, mp3, flac or ogg)"),
        ));
    }
    Ok((data, format, format!("{at}.input_audio.data")))
}

/// An `audio_url` part's base64 data and format: only `data:` URLs (`data:audio/wav;base64,...`);
/// the server fetches nothing remote.
fn audio_url<'a>(part: &'a Value, at: &str) -> Result<(&'a str, String, String), ApiError> {
    let field = format!("{at}.audio_url.url");
    let url = part
        .pointer("/audio_url/url")
        .or_else(|| part.get("audio_url").filter(|v| v.is_string()))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad(field.clone(), "audio_url needs a `url`"))?;
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(ApiError::bad(
            field,
            "only data: URLs are accepted (data:audio/wav;base64,...); this server fetches nothing remote",
        ));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| ApiError::bad(field.clone(), "a data: URL needs a comma before its data"))?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or_else(|| ApiError::bad(field.clone(), "the data: URL must be base64 (`;base64,`)"))?;
    let format = match mime.to_lowercase().as_str() {
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "wav",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/ogg" | "application/ogg" => "ogg",
        other => {
            return Err(ApiError::bad(
                field,
                format!(
                "unsupported audio type '{other}' (audio/wav, audio/mpeg, audio/flac or audio/ogg)"
            ),
            ))
        }
    };
    Ok((data, format.to_string(), field))
}

fn generation_params(request: &ChatRequest, limits: &Limits) -> Result<GenerationParams, ApiError> {
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(limits.max_tokens as u64);
    if max_tokens == 0 || max_tokens > limits.max_tokens as u64 {
        return Err(ApiError::bad(
            "max_tokens".to_string(),
            format!(
                "max_tokens must be between 1 and {} on this server, got {max_tokens}",
                limits.max_tokens
            ),
        ));
    }
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad(
            "temperature".to_string(),
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(
            "top_p".to_string(),
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("n".to_string(), "only n = 1 is supported"));
    }
    let stop = match &request.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::bad(
            "stop".to_string(),
            "stop takes up to 4 non-empty strings",
        ));
    }
    Ok(GenerationParams {
        max_tokens: max_tokens as usize,
        temperature,
        top_p,
        seed: request.seed.unwrap_or(0) as u64,
        stop,
    })
}

fn submit(state: &AppState, job: Job) -> Result<(), ApiError> {
    state.queue.submit(job).map_err(|e| match e {
        SubmitError::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy (its request queue is full); retry shortly",
        )
        .with_code("queue_full"),
        SubmitError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ),
    })
}

/// Waits for a decoding slot (before the body is read, so that waiting requests hold no body).
async fn admit(state: &AppState) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    state.decodes.acquire().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
    })
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    http: Request,
) -> Result<Response, ApiError> {
    let admitted = admit(&state).await?;
    let raw = body(Bytes::from_request(http, &()).await)?;
    let request: ChatRequest = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(None, format!("malformed JSON request: {e}")))?;
    drop(raw);
    if request.model != state.model_name {
        return Err(ApiError::bad(
            "model".to_string(),
            format!(
                "unknown model '{}': this server serves '{}'",
                request.model, state.model_name
            ),
        )
        .with_code("model_not_found"));
    }
    let params = generation_params(&request, &state.limits)?;
    let (messages, clips) = parse_messages(&request, state.max_clips)?;
    if clips.is_empty() {
        return Err(ApiError::bad(
            "messages".to_string(),
            "the request needs an input_audio content part (this is an audio model)",
        ));
    }
    let segments =
        pal_models::text::segments::prompt_segments(&state.template, &state.tokenizer, &messages)
            .map_err(|e| ApiError::bad("messages".to_string(), e.to_string()))?;
    let prompt_tokens: usize = segments
        .iter()
        .map(|s| match s {
            pal_models::text::Segment::Text { ids, .. } => ids.len(),
            pal_models::text::Segment::Audio => 0,
        })
        .sum();
    if prompt_tokens > state.limits.max_prompt_tokens {
        return Err(ApiError::bad(
            "messages".to_string(),
            format!(
                "the prompt is {prompt_tokens} tokens; this server takes at most {}",
                state.limits.max_prompt_tokens
            ),
        )
        .with_code("context_length_exceeded"));
    }
    drop(request.messages);
    let mut samples = Vec::with_capacity(clips.len());
    for clip in clips {
        samples.push(decode_clip(clip.bytes, Some(clip.format), &clip.field, state.limits).await?);
    }
    drop(admitted);
    let (events, mut receiver) = mpsc::unbounded_channel();
    submit(
        &state,
        Job::Chat {
            segments,
            clips: samples,
            params,
            events,
        },
    )?;
    let id = format!("chatcmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let created = now();
    let model = state.model_name.clone();
    if request.stream {
        let first = api::chunk(
            &id,
            created,
            &model,
            json!({"role": "assistant", "content": ""}),
            None,
        );
        let stream = UnboundedReceiverStream::new(receiver).map(move |event| {
            let data = match event {
                Event::Text(t) => api::chunk(&id, created, &model, json!({ "content": t }), None),
                Event::Done { finish, .. } => api::chunk(
                    &id,
                    created,
                    &model,
                    json!({}),
                    Some(api::finish_reason_name(finish)),
                ),
                Event::Failed(message) => {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).body()
                }
                Event::Refused { message, code } => ApiError::bad("messages".to_string(), message)
                    .with_code(code)
                    .body(),
            };
            Ok::<_, Infallible>(SseEvent::default().data(data.to_string()))
        });
        let all = tokio_stream::once(Ok(SseEvent::default().data(first.to_string())))
            .chain(stream)
            .chain(tokio_stream::once(Ok(SseEvent::default().data("[DONE]"))));
        return Ok(Sse::new(all).into_response());
    }
    let mut text = String::new();
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let usage = Usage {
                    prompt_tokens,
                    completion_tokens,
                    total_tokens: prompt_tokens + completion_tokens,
                };
                return Ok(Json(api::completion(
                    &id,
                    created,
                    &model,
                    &text,
                    api::finish_reason_name(finish),
                    usage,
                ))
                .into_response());
            }
            Event::Failed(message) => {
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message))
            }
            Event::Refused { message, code } => {
                return Err(ApiError::bad("messages".to_string(), message).with_code(code))
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the model thread stopped before answering",
    ))
}

async fn transcriptions(
    State(state): State<Arc<AppState>>,
    http: Request,
) -> Result<Response, ApiError> {
    if !state.can_transcribe {
        return Err(ApiError::bad(
            None,
            "this model has no Whisper decoder, so it cannot transcribe",
        ));
    }
    let admitted = admit(&state).await?;
    let mut multipart = Multipart::from_request(http, &())
        .await
        .map_err(|r| rejected(r.status(), r.body_text()))?;
    let mut file: Option<(Vec<u8>, Option<String>)> = None;
    let mut response_format = "json".to_string();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(rejected(
                    e.status(),
                    format!("malformed multipart body: {}", e.body_text()),
                ))
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        let extension = field
            .file_name()
            .and_then(|f| f.rsplit_once('.').map(|(_, e)| e.to_lowercase()));
        let data = field.bytes().await.map_err(|e| {
            rejected(
                e.status(),
                format!("reading field '{name}': {}", e.body_text()),
            )
        })?;
        match name.as_str() {
            "file" => file = Some((data.to_vec(), extension)),
            "response_format" => response_format = String::from_utf8_lossy(&data).to_string(),
            _ => {}
        }
    }
    let Some((bytes, extension)) = file else {
        return Err(ApiError::bad(
            "file".to_string(),
            "the form needs a `file` field",
        ));
    };
    if !["json", "text"].contains(&response_format.as_str()) {
        return Err(ApiError::bad(
            "response_format".to_string(),
            format!("unsupported response_format '{response_format}' (json or text)"),
        ));
    }
    let samples = decode_clip(bytes, extension, "file", state.limits).await?;
    drop(admitted);
    let (reply, answer) = oneshot::channel();
    submit(&state, Job::Transcribe { samples, reply })?;
    let text = answer
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model thread stopped",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(if response_format == "text" {
        text.into_response()
    } else {
        Json(json!({ "text": text })).into_response()
    })
}
