//! `/v1/realtime`: live audio over a WebSocket, in the OpenAI Realtime API's events.
//!
//! A session's audio arrives as base64 PCM16 (`input_audio_buffer.append`, 24 kHz resampled
//! to 16 kHz, or 16 kHz), is cut into windows as it comes (30 s for Whisper, or
//! `--stream-chunk-s`), and each window is encoded on the encoder thread with its LAL keys and
//! values, between the chats it serves ([`pal_models::audio_llm::GrowingClip`]). A question
//! (`conversation.item.create` then `response.create`) is answered from the recording so far:
//! only the audio since the last window is left to encode, however long the recording. A
//! transcription session (`?intent=transcription`, or `session.type = "transcription"`)
//! transcribes each window as it fills, and the rest at each commit.
//!
//! - [`config`]: the session's settings (`session.update`), [`events`]: client and server
//!   events, [`recording`]: the audio and its windows, [`session`]: what each event does,
//!   [`response`]: answers.
//! - Limits: sessions at once (`--max-sessions`, 503 past it), seconds of audio per session,
//!   bytes per event, an idle timeout; malformed events are answered with `error` events and
//!   the session goes on; a client that leaves frees everything (its answer is cancelled).

pub mod config;
pub mod events;
pub mod recording;
pub mod response;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::api::ApiError;
use crate::state::AppState;
use config::Kind;
use events::{ClientEvent, EventError};
use session::Session;

/// The WebSocket close code of a session closed for being idle (going away).
const CLOSE_IDLE: u16 = 1001;

/// `GET /v1/realtime` (a WebSocket upgrade): `?model=` (optional, must be the served model),
/// `?intent=transcription` for a transcription session. The key, when the server has one,
/// comes as `Authorization: Bearer` or (browsers) the subprotocol
/// `openai-insecure-api-key.KEY`; the subprotocol `realtime` is echoed when offered.
pub async fn realtime(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(model) = query.get("model") {
        if model != state.model_name() {
            return ApiError::bad(
                "model".to_string(),
                format!(
                    "unknown model '{model}': this server serves '{}'",
                    state.model_name()
                ),
            )
            .with_code("model_not_found")
            .into_response();
        }
    }
    if let Err(message) = &state.live_window {
        return ApiError::bad(
            None,
            format!("this model cannot take live audio: {message}"),
        )
        .with_code("realtime_unavailable")
        .into_response();
    }
    let Ok(slot) = state.sessions.clone().try_acquire_owned() else {
        state.queue.counters.refused.fetch_add(1, Ordering::Relaxed);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} realtime sessions are open, the most this server takes (--max-sessions)",
                state.limits.max_sessions
            ),
        )
        .with_code("too_many_sessions")
        .into_response();
    };
    let kind = match query.get("intent").map(String::as_str) {
        Some("transcription") => Kind::Transcription,
        _ => Kind::Realtime,
    };
    let beta = headers
        .get("openai-beta")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("realtime=v1"));
    let max = state.limits.max_event_bytes;
    upgrade
        .protocols(["realtime"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let counters = state.queue.counters.clone();
            counters.realtime_sessions.fetch_add(1, Ordering::Relaxed);
            counters
                .realtime_sessions_total
                .fetch_add(1, Ordering::Relaxed);
            run(socket, state, kind, beta, slot).await;
            counters.realtime_sessions.fetch_sub(1, Ordering::Relaxed);
        })
}

/// Sends `events` in order; false when the client is gone.
async fn send(socket: &mut WebSocket, events: Vec<Value>) -> bool {
    for event in events {
        if socket
            .send(Message::Text(event.to_string().into()))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// One session, from `session.created` until its client leaves, it idles past the timeout or
/// the server stops, holding its `slot` of `--max-sessions`. Everything it holds is dropped
/// when it returns (an answer in progress is cancelled: its channel closes).
async fn run(
    mut socket: WebSocket,
    state: Arc<AppState>,
    kind: Kind,
    beta: bool,
    slot: OwnedSemaphorePermit,
) {
    let number = state.next_session.fetch_add(1, Ordering::Relaxed);
    let idle = Duration::from_secs_f64(state.limits.session_idle_seconds.max(0.001));
    let mut session = match Session::new(state, number, kind, beta) {
        Ok(session) => session,
        Err(error) => {
            let mut out = events::Outbox::new(beta);
            let _ = send(&mut socket, vec![out.error(&error, None)]).await;
            return;
        }
    };
    let created = session.created();
    if !send(&mut socket, vec![created]).await {
        return;
    }
    let mut last_heard = Instant::now();
    loop {
        let can_read = session.can_read();
        let events = tokio::select! {
            Some(window) = first_done(&mut session.windows) => {
                session.windows.pop_front();
                session.window_done(window)
            }
            Some(outcome) = first_transcript(&mut session.transcripts) => {
                let pending = session.transcripts.pop_front().expect("the front transcript");
                session.transcript_done(pending, outcome)
            }
            event = response::next_event(&mut session.response) => session.on_response_event(event),
            message = socket.recv(), if can_read => {
                last_heard = Instant::now();
                match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Text(text))) => match ClientEvent::parse(&text) {
                        Ok(event) => session.handle(event).await,
                        Err((error, id)) => vec![session.out.error(&error, id.as_deref())],
                    },
                    Some(Ok(Message::Binary(_))) => {
                        let error = EventError::refused(
                            "invalid_event",
                            "binary frames are not events: send JSON text frames (audio as base64 in input_audio_buffer.append)",
                        );
                        vec![session.out.error(&error, None)]
                    }
                    Some(Ok(_)) => vec![],
                }
            }
            _ = tokio::time::sleep_until(last_heard + idle) => {
                let error = EventError::refused(
                    "session_idle",
                    format!("no event for {} s (--session-idle-s): the session is closed", idle.as_secs_f64()),
                );
                let event = session.out.error(&error, None);
                // The slot is free before the client hears of the close.
                drop(slot);
                let _ = send(&mut socket, vec![event]).await;
                let close = CloseFrame { code: CLOSE_IDLE, reason: "idle".into() };
                let _ = socket.send(Message::Close(Some(close))).await;
                return;
            }
        };
        if !send(&mut socket, events).await {
            return;
        }
    }
}

/// The oldest window's outcome, once it is encoded (`None`: no window in flight).
async fn first_done(
    windows: &mut std::collections::VecDeque<tokio::task::JoinHandle<Result<(), String>>>,
) -> Option<Result<(), String>> {
    let window = windows.front_mut()?;
    Some(
        window
            .await
            .unwrap_or_else(|e| Err(format!("the window's task failed: {e}"))),
    )
}

/// The oldest transcript, once it is done (`None`: none on its way).
async fn first_transcript(
    transcripts: &mut std::collections::VecDeque<session::PendingTranscript>,
) -> Option<Result<String, String>> {
    let pending = transcripts.front_mut()?;
    Some(
        (&mut pending.job)
            .await
            .unwrap_or_else(|e| Err(format!("the transcription task failed: {e}"))),
    )
}
