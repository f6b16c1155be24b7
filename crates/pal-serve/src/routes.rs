//! HTTP handlers: the routes with their guards ([`crate::guard`]), and each handler's way from a
//! request to its answer: body read within the budget ([`crate::body`]), checked and tokenized
//! off the async threads ([`crate::request`]), audio decoded within its budget
//! ([`crate::audio_in`]), queued for the model threads, and their events turned into an OpenAI
//! response or server-sent events.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::api::{self, ApiError, Usage};
use crate::body::{read_body, ReadBody};
use crate::engine::{Event, Job, SubmitError};
use crate::guard;
use crate::request::{plan_chat, ChatPlan};
use crate::state::AppState;
use crate::transcriber::Transcription;

/// The routes with their guards: every route checks the caller's host and origin; `/v1` and
/// `/metrics` need the key; JSON routes need a JSON content type.
pub fn router(state: Arc<AppState>) -> Router {
    let json = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .layer(middleware::from_fn(guard::json_only));
    let keyed = Router::new()
        .merge(json)
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/models", get(models))
        .route("/v1/realtime", get(crate::realtime::realtime))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::authenticate,
        ));
    Router::new()
        .merge(keyed)
        .route("/health", get(health))
        .route("/", get(page))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::count_responses,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::check_caller,
        ))
        .with_state(state)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The page that listens (`GET /`): one self-contained HTML page that streams the microphone
/// or a file to `/v1/realtime`, asks questions and shows the answer and the live transcript.
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("page.html"),
    )
        .into_response()
}

/// Liveness only: `ok`, or `stopped` with 503 once the model thread has ended. Counters are in
/// `/metrics`, behind the key.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.queue.counters.stopped.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "stopped"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

/// Every counter in the Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.queue.counters.render(state.model_name()),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": state.model_name(), "object": "model", "created": 0, "owned_by": "pal"}],
    }))
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy (its request queue is full); retry shortly",
        )
        .with_code("queue_full"),
        SubmitError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down or its model has stopped",
        ),
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    http: Request,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let (parts, body) = http.into_parts();
    let ReadBody { bytes, hold } = read_body(
        &parts.headers,
        body,
        &state.limits,
        &state.network,
        &state.uploads,
        &state.queue.counters,
    )
    .await?;
    let prompting = state.prompting.clone();
    let ChatPlan {
        segments,
        clips,
        params,
        stream,
        include_usage,
    } = blocking(move || plan_chat(&bytes, &prompting)).await??;
    let samples = state.decoding.decode_all(clips).await?;
    drop(hold);
    let (events, receiver) = mpsc::unbounded_channel();
    state
        .queue
        .submit(Job {
            segments,
            clips: samples,
            growing: None,
            params,
            events,
            arrived,
        })
        .map_err(submit_error)?;
    let id = format!("chatcmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let answer = Answer {
        id,
        created: now(),
        model: state.model_name().to_string(),
    };
    if stream {
        return Ok(answer.stream(receiver, include_usage));
    }
    answer.whole(receiver).await
}

/// The identity of one chat answer, whole or streamed.
struct Answer {
    id: String,
    created: u64,
    model: String,
}

/// How a stream ended, as far as its events said.
enum Ending {
    /// Not yet (or the channel closed without a last event: the server failed).
    Open,
    /// Done, with the token counts.
    Done(Usage),
    /// An error event was sent.
    Failed,
}

impl Answer {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        api::chunk(&self.id, self.created, &self.model, delta, finish)
    }

    /// Server-sent events: a role chunk, the text deltas, the finish chunk, then (with
    /// `include_usage`) a usage chunk and `[DONE]`. A failure ends the stream with an error
    /// event and no `[DONE]`, so no client mistakes a cut answer for a whole one.
    fn stream(self, receiver: mpsc::UnboundedReceiver<Event>, include_usage: bool) -> Response {
        let answer = Arc::new(self);
        let ending = Arc::new(Mutex::new(Ending::Open));
        let first = answer.chunk(json!({"role": "assistant", "content": ""}), None);
        let (a, e) = (answer.clone(), ending.clone());
        let events = UnboundedReceiverStream::new(receiver).map(move |event| {
            let data = match event {
                Event::Text(t) => a.chunk(json!({ "content": t }), None),
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    *e.lock().unwrap_or_else(|p| p.into_inner()) = Ending::Done(Usage {
                        prompt_tokens,
                        completion_tokens,
                        total_tokens: prompt_tokens + completion_tokens,
                    });
                    a.chunk(json!({}), Some(api::finish_reason_name(finish)))
                }
                Event::Failed(message) => {
                    *e.lock().unwrap_or_else(|p| p.into_inner()) = Ending::Failed;
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).body()
                }
                Event::Refused { message, code } => {
                    *e.lock().unwrap_or_else(|p| p.into_inner()) = Ending::Failed;
                    ApiError::bad("messages".to_string(), message)
                        .with_code(code)
                        .body()
                }
            };
            Ok::<_, Infallible>(SseEvent::default().data(data.to_string()))
        });
        let tail = std::iter::once_with(move || {
            let ending = std::mem::replace(
                &mut *ending.lock().unwrap_or_else(|p| p.into_inner()),
                Ending::Open,
            );
            match ending {
                Ending::Done(usage) => {
                    let mut last = vec![];
                    if include_usage {
                        let chunk =
                            api::usage_chunk(&answer.id, answer.created, &answer.model, usage);
                        last.push(chunk.to_string());
                    }
                    last.push("[DONE]".to_string());
                    last
                }
                Ending::Failed => vec![],
                Ending::Open => vec![ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the answer was cut off: the server stopped generating it",
                )
                .body()
                .to_string()],
            }
        })
        .flatten()
        .map(|data| Ok::<_, Infallible>(SseEvent::default().data(data)));
        let all = tokio_stream::once(Ok(SseEvent::default().data(first.to_string())))
            .chain(events)
            .chain(tokio_stream::iter(tail));
        Sse::new(all).into_response()
    }

    /// The whole answer once it is done; a failure is its error.
    async fn whole(
        self,
        mut receiver: mpsc::UnboundedReceiver<Event>,
    ) -> Result<Response, ApiError> {
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
                        &self.id,
                        self.created,
                        &self.model,
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
    let (parts, body) = http.into_parts();
    let ReadBody { bytes, hold } = read_body(
        &parts.headers,
        body,
        &state.limits,
        &state.network,
        &state.uploads,
        &state.queue.counters,
    )
    .await?;
    let buffered = Request::from_parts(parts, Body::from(bytes));
    let mut multipart = Multipart::from_request(buffered, &())
        .await
        .map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let mut file: Option<(Vec<u8>, String)> = None;
    let mut response_format = "json".to_string();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::new(
                    e.status(),
                    format!("malformed multipart body: {}", e.body_text()),
                ))
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        let extension = field
            .file_name()
            .and_then(|f| f.rsplit_once('.').map(|(_, e)| e.to_lowercase()))
            .unwrap_or_default();
        let data = field.bytes().await.map_err(|e| {
            ApiError::new(
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
    let Some((bytes, format)) = file else {
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
    let clip = crate::request::ClipPart {
        bytes,
        format,
        field: "file".to_string(),
    };
    let samples = state.decoding.decode_all(vec![clip]).await?.remove(0);
    drop(hold);
    let (reply, answer) = oneshot::channel();
    state
        .queue
        .transcribe(Transcription { samples, reply })
        .map_err(submit_error)?;
    let text = answer
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the transcription thread stopped",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(if response_format == "text" {
        text.into_response()
    } else {
        Json(json!({ "text": text })).into_response()
    })
}
