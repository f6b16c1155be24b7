//! One realtime session: its settings, its recording and the windows and transcripts in flight
//! for it, its conversation, and what each client event does to them (the events it answers
//! with). The answer in progress is in [`super::response`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use pal_models::audio_llm::GrowingClip;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::config::{Bounds, Kind, SessionConfig};
use super::events::{ClientEvent, EventError, Outbox};
use super::recording::Recording;
use super::response::Active;
use crate::engine::WindowJob;
use crate::state::AppState;
use crate::transcriber::Transcription;

/// Windows handed to the encoder thread and not yet encoded, at most: past it the session reads
/// no more events until one is done (the client's sends wait: backpressure).
pub const WINDOWS_IN_FLIGHT: usize = 2;

/// A conversation item.
pub struct Item {
    /// Its id.
    pub id: String,
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// Its text (none for committed audio).
    pub text: Option<String>,
    /// Whether it is committed audio.
    pub audio: bool,
}

impl Item {
    /// The item as events show it.
    pub fn to_json(&self) -> Value {
        let content = match (&self.text, self.audio, self.role) {
            (_, true, _) => json!([{"type": "input_audio", "transcript": null}]),
            (Some(t), _, "assistant") => json!([{"type": "output_text", "text": t}]),
            (Some(t), _, _) => json!([{"type": "input_text", "text": t}]),
            (None, false, _) => json!([]),
        };
        json!({"id": self.id, "object": "realtime.item", "type": "message",
            "status": "completed", "role": self.role, "content": content})
    }
}

/// A transcript on its way: of a window of the buffer that will become item `item`, the last
/// one of that item when `last`.
pub struct PendingTranscript {
    /// The item it belongs to.
    pub item: String,
    /// The transcription.
    pub job: JoinHandle<Result<String, String>>,
    /// Whether it ends the item's transcript.
    pub last: bool,
}

/// A realtime session (see the module's documentation).
pub struct Session {
    /// `sess_…`.
    pub id: String,
    /// `conv_…`.
    pub conversation_id: String,
    /// Its settings.
    pub config: SessionConfig,
    /// What limits them.
    pub bounds: Bounds,
    /// Its server events.
    pub out: Outbox,
    /// Its audio.
    pub recording: Recording,
    /// The conversation, oldest first.
    pub items: Vec<Item>,
    /// Counts ids.
    next_id: u64,
    /// The id the buffer will take when committed (its transcript deltas name it before).
    pub buffer_item: String,
    /// Windows handed to the encoder thread, oldest first.
    pub windows: VecDeque<JoinHandle<Result<(), String>>>,
    /// Transcripts on their way, in order.
    pub transcripts: VecDeque<PendingTranscript>,
    /// The transcript so far of each item still transcribing.
    pub transcript_text: HashMap<String, String>,
    /// The answer in progress.
    pub response: Option<Active>,
    /// The server.
    pub state: Arc<AppState>,
}

impl Session {
    /// A new session of `kind` (the model's clip must be able to grow: see [`GrowingClip::new`]).
    pub fn new(
        state: Arc<AppState>,
        number: u64,
        kind: Kind,
        beta: bool,
    ) -> Result<Self, EventError> {
        let mut window = state
            .live_window
            .clone()
            .map_err(|message| EventError::refused("realtime_unavailable", message))?;
        let limits = &state.limits;
        if limits.stream_chunk_seconds > 0.0 {
            let chunk = (limits.stream_chunk_seconds * pal_audio::SAMPLE_RATE as f64) as usize;
            window = window.min(chunk.max(1));
        }
        let bounds = Bounds {
            max_tokens: limits.max_tokens,
            can_transcribe: state.can_transcribe,
            model: state.model_name().to_string(),
        };
        let config = SessionConfig::new(kind, &bounds);
        if kind == Kind::Transcription && !bounds.can_transcribe {
            return Err(EventError::refused(
                "transcription_unavailable",
                "this model has no Whisper decoder: transcription sessions are not available",
            ));
        }
        let recording = Recording::new(
            config.input_rate,
            window,
            limits.max_session_seconds,
            GrowingClip::default(),
        );
        let mut session = Self {
            id: format!("sess_{number}"),
            conversation_id: format!("conv_{number}"),
            config,
            bounds,
            out: Outbox::new(beta),
            recording,
            items: vec![],
            next_id: 0,
            buffer_item: String::new(),
            windows: VecDeque::new(),
            transcripts: VecDeque::new(),
            transcript_text: HashMap::new(),
            response: None,
            state,
        };
        session.buffer_item = session.fresh_id("item");
        Ok(session)
    }

    /// A fresh id with `prefix`.
    pub fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!(
            "{prefix}_{}_{}",
            self.id.trim_start_matches("sess_"),
            self.next_id
        )
    }

    /// `session.created`, the first event.
    pub fn created(&mut self) -> Value {
        let session = self
            .config
            .to_json(&self.id, &self.bounds.model, self.out.beta);
        self.out
            .event("session.created", json!({ "session": session }))
    }

    /// Whether the session may read the next client event (not while windows wait).
    pub fn can_read(&self) -> bool {
        self.windows.len() < WINDOWS_IN_FLIGHT
    }

    /// Takes one client event; returns the events that answer it.
    pub async fn handle(&mut self, event: ClientEvent) -> Vec<Value> {
        let outcome = match event.kind.as_str() {
            "session.update" | "transcription_session.update" => self.update(&event),
            "input_audio_buffer.append" => self.append(&event),
            "input_audio_buffer.commit" => self.commit(),
            "input_audio_buffer.clear" => self.clear().await,
            "conversation.item.create" => self.create_item(&event),
            "response.create" => self.create_response(&event).await,
            "response.cancel" => self.cancel_response(&event),
            other => Err(EventError::refused(
                "unknown_event",
                format!(
                    "unknown or unsupported event type {other:?} (session.update, input_audio_buffer.append/commit/clear, conversation.item.create, response.create, response.cancel)"
                ),
            )),
        };
        match outcome {
            Ok(events) => events,
            Err(error) => vec![self.out.error(&error, event.id.as_deref())],
        }
    }

    fn update(&mut self, event: &ClientEvent) -> Result<Vec<Value>, EventError> {
        let session = event
            .body
            .get("session")
            .ok_or_else(|| EventError::invalid("session", "session.update needs a session"))?;
        let next = self.config.updated(session, &self.bounds)?;
        self.recording.set_rate(next.input_rate)?;
        self.config = next;
        let session = self
            .config
            .to_json(&self.id, &self.bounds.model, self.out.beta);
        let name = if event.kind == "transcription_session.update" {
            "transcription_session.updated"
        } else {
            "session.updated"
        };
        Ok(vec![self.out.event(name, json!({ "session": session }))])
    }

    fn append(&mut self, event: &ClientEvent) -> Result<Vec<Value>, EventError> {
        let audio = event
            .text("audio")?
            .ok_or_else(|| EventError::invalid("audio", "append needs base64 PCM16 in `audio`"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(audio.trim())
            .map_err(|e| EventError::invalid("audio", format!("audio is not valid base64: {e}")))?;
        self.recording.append(&bytes)?;
        self.schedule(false);
        Ok(vec![])
    }

    /// Hands the windows that are whole (with `all`, the rest of the audio too) to the encoder
    /// thread, and their audio to the transcription thread when the session transcribes.
    pub fn schedule(&mut self, all: bool) {
        while all || self.windows.len() < WINDOWS_IN_FLIGHT {
            let Some((start, samples)) = self.recording.next_window(all) else {
                break;
            };
            if self.config.transcribe {
                let job = self.transcribe(samples.clone());
                let item = self.buffer_item.clone();
                self.transcripts.push_back(PendingTranscript {
                    item,
                    job,
                    last: false,
                });
            }
            let queue = self.state.queue.clone();
            let clip = self.recording.clip.clone();
            self.windows.push_back(tokio::task::spawn_blocking(move || {
                let (done, encoded) = oneshot::channel();
                let job = WindowJob {
                    clip,
                    start,
                    samples,
                    done,
                };
                queue
                    .submit_window_waiting(job)
                    .map_err(|_| "the model has stopped".to_string())?;
                encoded
                    .blocking_recv()
                    .map_err(|_| "the encoder thread stopped".to_string())?
            }));
        }
    }

    fn transcribe(&self, samples: Vec<f32>) -> JoinHandle<Result<String, String>> {
        let transcriptions = self.state.queue.transcriptions.clone();
        tokio::task::spawn_blocking(move || {
            let (reply, text) = oneshot::channel();
            transcriptions
                .submit_waiting(Transcription { samples, reply })
                .map_err(|_| "the transcription thread has stopped".to_string())?;
            text.blocking_recv()
                .map_err(|_| "the transcription thread stopped".to_string())?
        })
    }

    /// A window is encoded (or failed: its audio is given back to be encoded with the next
    /// question, and the client told).
    pub fn window_done(&mut self, outcome: Result<(), String>) -> Vec<Value> {
        match outcome {
            Ok(()) => {
                self.schedule(false);
                vec![]
            }
            Err(message) => {
                let covered = self.recording.clip.lock().map(|c| c.samples()).unwrap_or(0);
                self.recording.unschedule(covered);
                let error = EventError::server(format!("encoding the audio: {message}"))
                    .with_code("audio_encoding_failed");
                vec![self.out.error(&error, None)]
            }
        }
    }

    fn commit(&mut self) -> Result<Vec<Value>, EventError> {
        self.recording.commit()?;
        let item_id = self.buffer_item.clone();
        // The audio up to the commit is the item's last window; its transcript ends the item's.
        self.schedule(true);
        if self.config.transcribe {
            match self.transcripts.back_mut() {
                Some(t) if t.item == item_id => t.last = true,
                _ => self.transcripts.push_back(PendingTranscript {
                    item: item_id.clone(),
                    job: tokio::spawn(async { Ok(String::new()) }),
                    last: true,
                }),
            }
        }
        self.buffer_item = self.fresh_id("item");
        let previous = self.items.last().map(|i| i.id.clone());
        let item = Item {
            id: item_id.clone(),
            role: "user",
            text: None,
            audio: true,
        };
        let item_json = item.to_json();
        self.items.push(item);
        let mut events = vec![self.out.event(
            "input_audio_buffer.committed",
            json!({"item_id": item_id, "previous_item_id": previous}),
        )];
        events.push(self.out.item_added(item_json.clone(), previous.as_deref()));
        events.extend(self.out.item_done(item_json));
        Ok(events)
    }

    /// Waits for the windows in flight (their results told as usual).
    pub async fn drain_windows(&mut self) -> Vec<Value> {
        let mut events = vec![];
        while let Some(window) = self.windows.pop_front() {
            let outcome = window
                .await
                .unwrap_or_else(|e| Err(format!("the window's task failed: {e}")));
            if let Err(message) = outcome {
                let covered = self.recording.clip.lock().map(|c| c.samples()).unwrap_or(0);
                self.recording.unschedule(covered);
                let error = EventError::server(format!("encoding the audio: {message}"))
                    .with_code("audio_encoding_failed");
                events.push(self.out.error(&error, None));
            }
        }
        events
    }

    async fn clear(&mut self) -> Result<Vec<Value>, EventError> {
        let mut events = self.drain_windows().await;
        self.recording.clear();
        // Transcripts of the dropped audio are dropped with it.
        let dropped = self.buffer_item.clone();
        self.transcripts.retain(|t| {
            let keep = t.item != dropped;
            if !keep {
                t.job.abort();
            }
            keep
        });
        self.transcript_text.remove(&dropped);
        events.push(self.out.event("input_audio_buffer.cleared", json!({})));
        Ok(events)
    }

    /// A transcript arrived: a delta for its item, and when it is the item's last, the whole.
    pub fn transcript_done(
        &mut self,
        pending: PendingTranscript,
        outcome: Result<String, String>,
    ) -> Vec<Value> {
        let item = pending.item;
        match outcome {
            Ok(text) => {
                let mut events = vec![];
                if !text.is_empty() {
                    self.transcript_text
                        .entry(item.clone())
                        .or_default()
                        .push_str(&text);
                    events.push(self.out.event(
                        "conversation.item.input_audio_transcription.delta",
                        json!({"item_id": item, "content_index": 0, "delta": text}),
                    ));
                }
                if pending.last {
                    let transcript = self.transcript_text.remove(&item).unwrap_or_default();
                    events.push(self.out.event(
                        "conversation.item.input_audio_transcription.completed",
                        json!({"item_id": item, "content_index": 0,
                            "transcript": transcript.trim(),
                            "usage": {"type": "duration", "seconds": self.recording.seconds()}}),
                    ));
                }
                events
            }
            Err(message) => vec![self.out.event(
                "conversation.item.input_audio_transcription.failed",
                json!({"item_id": item, "content_index": 0, "error": {
                    "type": "server_error", "code": "transcription_failed",
                    "message": message, "param": null}}),
            )],
        }
    }

    fn create_item(&mut self, event: &ClientEvent) -> Result<Vec<Value>, EventError> {
        let item = event
            .body
            .get("item")
            .ok_or_else(|| EventError::invalid("item", "conversation.item.create needs an item"))?;
        if let Some(previous) = event.text("previous_item_id")? {
            if self.items.last().map(|i| i.id.as_str()) != Some(previous) {
                return Err(EventError::invalid(
                    "previous_item_id",
                    "items can only be added at the end of the conversation (previous_item_id: the last item's id, or none)",
                ));
            }
        }
        match item.get("type").and_then(Value::as_str) {
            None | Some("message") => {}
            Some(other) => {
                return Err(EventError::invalid(
                    "item.type",
                    format!("unsupported item type {other:?} (message)"),
                ))
            }
        }
        let role = match item.get("role").and_then(Value::as_str) {
            Some("user") => "user",
            Some("system") => "system",
            Some("assistant") => "assistant",
            _ => {
                return Err(EventError::invalid(
                    "item.role",
                    "a message's role is user, system or assistant",
                ))
            }
        };
        let parts = item
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                EventError::invalid("item.content", "content must be a list of parts")
            })?;
        let mut texts = vec![];
        for (p, part) in parts.iter().enumerate() {
            let at = format!("item.content[{p}]");
            match part.get("type").and_then(Value::as_str) {
                Some("input_text" | "text" | "output_text") => {
                    let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                        EventError::invalid(
                            format!("{at}.text"),
                            "a text part needs a string `text`",
                        )
                    })?;
                    if text.contains(pal_models::text::segments::AUDIO_MARKER) {
                        return Err(EventError::invalid(
                            format!("{at}.text"),
                            "text may not contain the audio marker (send audio with input_audio_buffer.append)",
                        ));
                    }
                    texts.push(text.to_string());
                }
                Some("input_audio") => {
                    return Err(EventError::invalid(
                        format!("{at}.type"),
                        "audio goes in with input_audio_buffer.append and commit, not in an item",
                    ))
                }
                other => {
                    return Err(EventError::invalid(
                        format!("{at}.type"),
                        format!("unsupported content part type {other:?} (input_text)"),
                    ))
                }
            }
        }
        let limits = &self.state.limits;
        let held: usize = self
            .items
            .iter()
            .filter_map(|i| i.text.as_ref())
            .map(String::len)
            .sum();
        let adding: usize = texts.iter().map(String::len).sum();
        if held + adding > limits.max_prompt_bytes {
            return Err(EventError::refused(
                "conversation_too_long",
                format!(
                    "the conversation would hold {} bytes of text; this server takes at most {} (--max-prompt-bytes)",
                    held + adding,
                    limits.max_prompt_bytes
                ),
            ));
        }
        if self.items.len() >= limits.max_messages {
            return Err(EventError::refused(
                "conversation_too_long",
                format!(
                    "the conversation holds {} items; this server takes at most {} (--max-messages)",
                    self.items.len(),
                    limits.max_messages
                ),
            ));
        }
        let id = match item.get("id").and_then(Value::as_str) {
            Some(id)
                if !id.is_empty() && id.len() <= 64 && !self.items.iter().any(|i| i.id == id) =>
            {
                id.to_string()
            }
            Some(_) => {
                return Err(EventError::invalid(
                    "item.id",
                    "an item id must be new to the conversation, 1 to 64 characters",
                ))
            }
            None => self.fresh_id("item"),
        };
        let previous = self.items.last().map(|i| i.id.clone());
        let item = Item {
            id,
            role,
            text: Some(texts.join("\n")),
            audio: false,
        };
        let item_json = item.to_json();
        self.items.push(item);
        let mut events = vec![self.out.item_added(item_json.clone(), previous.as_deref())];
        events.extend(self.out.item_done(item_json));
        Ok(events)
    }
}
