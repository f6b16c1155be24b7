//! A session's answers: `response.create` makes the prompt of the conversation (its recording
//! as the one clip, the audio since the last window encoded with the question) and queues it;
//! the model thread's events become `response.*` events; `response.cancel` stops it.

use std::time::Instant;

use pal_infer::{FinishReason, GenerationParams, Message};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::config::{self, Kind};
use super::events::{ClientEvent, EventError};
use super::session::{Item, Session};
use crate::engine::{Event, GrowingRequest, Job, SubmitError};
use crate::request::{fresh_seed, prompt_segments};

/// The answer in progress.
pub struct Active {
    /// `resp_…`.
    pub id: String,
    /// Its assistant item.
    pub item_id: String,
    /// Its text so far.
    pub text: String,
    /// The model thread's events (dropping it cancels the answer).
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Its token limit.
    pub max_tokens: usize,
}

/// How an answer ended.
enum Ending {
    Completed,
    Incomplete,
    Cancelled,
    Failed(String),
}

impl Session {
    /// `response.create`: the conversation so far answered about the recording so far.
    pub async fn create_response(&mut self, event: &ClientEvent) -> Result<Vec<Value>, EventError> {
        if self.config.kind == Kind::Transcription {
            return Err(EventError::refused(
                "transcription_session",
                "a transcription session transcribes its audio and answers no questions",
            ));
        }
        if self.response.is_some() {
            return Err(EventError::refused(
                "conversation_already_has_active_response",
                "an answer is in progress: wait for its response.done or send response.cancel",
            ));
        }
        if self.recording.is_empty() {
            return Err(EventError::refused(
                "no_audio",
                "the session has no audio yet: send input_audio_buffer.append first (this is an audio model)",
            ));
        }
        let options = event.body.get("response").cloned().unwrap_or(Value::Null);
        let mut instructions = self.config.instructions.clone();
        let mut max_tokens = self.config.max_output_tokens;
        let mut temperature = self.config.temperature;
        if let Some(options) = options.as_object() {
            if let Some(text) = options.get("instructions").and_then(Value::as_str) {
                instructions = text.to_string();
            }
            for field in ["max_output_tokens", "max_response_output_tokens"] {
                if let Some(value) = options.get(field) {
                    max_tokens =
                        config::max_tokens(value, &self.bounds, &format!("response.{field}"))?;
                }
            }
            if let Some(t) = options.get("temperature") {
                temperature = config::temperature(t, "response.temperature")?;
            }
            if options.get("input").is_some_and(|i| !i.is_null()) {
                return Err(EventError::invalid(
                    "response.input",
                    "answers are about the session's conversation; response.input is not supported",
                ));
            }
            if options.get("conversation").and_then(Value::as_str) == Some("none") {
                return Err(EventError::invalid(
                    "response.conversation",
                    "out-of-band answers (conversation: \"none\") are not supported",
                ));
            }
        }
        let messages = messages(&instructions, &self.items);
        let prompting = self.state.prompting.clone();
        let segments = tokio::task::spawn_blocking(move || prompt_segments(&messages, &prompting))
            .await
            .map_err(|e| EventError::server(format!("making the prompt: {e}")))?
            .map_err(|e| EventError {
                kind: "invalid_request_error",
                code: e.code.unwrap_or("invalid_value"),
                message: e.message,
                param: Some("conversation".into()),
            })?;
        // The windows handed over are encoded before the question (its audio starts after them).
        let mut events = self.drain_windows().await;
        let (tail_start, tail) = self.recording.tail();
        let (sender, receiver) = mpsc::unbounded_channel();
        let job = Job {
            segments,
            clips: vec![],
            growing: Some(GrowingRequest {
                clip: self.recording.clip.clone(),
                tail,
                tail_start,
                key: self.recording.key(&self.id),
            }),
            params: GenerationParams {
                max_tokens,
                temperature,
                top_p: 1.0,
                seed: fresh_seed(),
                stop: vec![],
            },
            events: sender,
            arrived: Instant::now(),
        };
        self.state.queue.submit(job).map_err(|e| match e {
            SubmitError::Full => EventError::refused(
                "server_busy",
                "the server's queue is full: try again shortly",
            ),
            SubmitError::Stopped => EventError::server("the model has stopped"),
        })?;
        let id = self.fresh_id("resp");
        let item_id = self.fresh_id("item");
        self.response = Some(Active {
            id: id.clone(),
            item_id: item_id.clone(),
            text: String::new(),
            events: receiver,
            max_tokens,
        });
        let response =
            self.response_json(&id, "in_progress", None, vec![], Value::Null, max_tokens);
        events.push(
            self.out
                .event("response.created", json!({ "response": response })),
        );
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message",
            "status": "in_progress", "role": "assistant", "content": []});
        events.push(self.out.event(
            "response.output_item.added",
            json!({"response_id": id, "output_index": 0, "item": item}),
        ));
        let previous = self.items.last().map(|i| i.id.clone());
        events.push(self.out.item_added(item, previous.as_deref()));
        events.push(self.out.event(
            "response.content_part.added",
            json!({"response_id": id, "item_id": item_id, "output_index": 0,
                "content_index": 0, "part": {"type": "text", "text": ""}}),
        ));
        Ok(events)
    }

    /// `response.cancel`: the answer in progress stops where it is.
    pub fn cancel_response(&mut self, event: &ClientEvent) -> Result<Vec<Value>, EventError> {
        let Some(active) = &self.response else {
            return Err(EventError::refused(
                "response_cancel_not_active",
                "no answer is in progress",
            ));
        };
        if let Some(id) = event.text("response_id")? {
            if id != active.id {
                return Err(EventError::invalid(
                    "response_id",
                    format!("the answer in progress is {}, not {id}", active.id),
                ));
            }
        }
        Ok(self.finish(Ending::Cancelled, None))
    }

    /// An event of the answer in progress (`None`: its channel closed) as server events.
    pub fn on_response_event(&mut self, event: Option<Event>) -> Vec<Value> {
        let Some(active) = &mut self.response else {
            return vec![];
        };
        match event {
            Some(Event::Text(delta)) => {
                active.text.push_str(&delta);
                let fields = json!({"response_id": active.id, "item_id": active.item_id,
                    "output_index": 0, "content_index": 0, "delta": delta});
                let name = self.out.name("response.output_text.delta");
                vec![self.out.event(name, fields)]
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let usage = json!({"total_tokens": prompt_tokens + completion_tokens,
                    "input_tokens": prompt_tokens, "output_tokens": completion_tokens});
                let ending = match finish {
                    FinishReason::Length => Ending::Incomplete,
                    _ => Ending::Completed,
                };
                self.finish(ending, Some(usage))
            }
            Some(Event::Failed(message)) => self.finish(Ending::Failed(message), None),
            Some(Event::Refused { message, .. }) => self.finish(Ending::Failed(message), None),
            None => self.finish(
                Ending::Failed("the answer was cut off: the server stopped generating it".into()),
                None,
            ),
        }
    }

    /// Ends the answer in progress: its item joins the conversation (with the text it has),
    /// and the closing events.
    fn finish(&mut self, ending: Ending, usage: Option<Value>) -> Vec<Value> {
        let Some(active) = self.response.take() else {
            return vec![];
        };
        let (status, details) = match &ending {
            Ending::Completed => ("completed", Value::Null),
            Ending::Incomplete => (
                "incomplete",
                json!({"type": "incomplete", "reason": "max_output_tokens"}),
            ),
            Ending::Cancelled => (
                "cancelled",
                json!({"type": "cancelled", "reason": "client_cancelled"}),
            ),
            Ending::Failed(message) => (
                "failed",
                json!({"type": "failed", "error": {"type": "server_error", "code": "server_error", "message": message}}),
            ),
        };
        let mut events = vec![];
        if let Ending::Failed(message) = &ending {
            let error = EventError::server(message.clone());
            events.push(self.out.error(&error, None));
        }
        let (id, item_id, text) = (active.id, active.item_id, active.text);
        let item = Item {
            id: item_id.clone(),
            role: "assistant",
            text: Some(text.clone()),
            audio: false,
        };
        let mut item_json = item.to_json();
        if status != "completed" {
            item_json["status"] = json!("incomplete");
        }
        let fields = json!({"response_id": id, "item_id": item_id, "output_index": 0,
            "content_index": 0, "text": text});
        let name = self.out.name("response.output_text.done");
        events.push(self.out.event(name, fields));
        events.push(self.out.event(
            "response.content_part.done",
            json!({"response_id": id, "item_id": item_id, "output_index": 0,
                "content_index": 0, "part": {"type": "text", "text": text}}),
        ));
        events.push(self.out.event(
            "response.output_item.done",
            json!({"response_id": id, "output_index": 0, "item": item_json}),
        ));
        events.extend(self.out.item_done(item_json.clone()));
        self.items.push(item);
        let response = self.response_json(
            &id,
            status,
            Some(details),
            vec![item_json],
            usage.unwrap_or(Value::Null),
            active.max_tokens,
        );
        events.push(
            self.out
                .event("response.done", json!({ "response": response })),
        );
        events
    }

    fn response_json(
        &self,
        id: &str,
        status: &str,
        details: Option<Value>,
        output: Vec<Value>,
        usage: Value,
        max_tokens: usize,
    ) -> Value {
        let modalities = if self.out.beta {
            "modalities"
        } else {
            "output_modalities"
        };
        let mut response = json!({"object": "realtime.response", "id": id, "status": status,
            "status_details": details, "output": output,
            "conversation_id": self.conversation_id, "max_output_tokens": max_tokens,
            "usage": usage, "metadata": null});
        response[modalities] = json!(["text"]);
        response
    }
}

/// The prompt's messages: the instructions and system items as the system message, then the
/// user and assistant items in order (committed audio adds no text: the recording is the one
/// clip, placed as in training); an empty user message when no user text was given.
fn messages(instructions: &str, items: &[Item]) -> Vec<Message> {
    let mut system: Vec<&str> = vec![];
    if !instructions.is_empty() {
        system.push(instructions);
    }
    let mut rest = vec![];
    for item in items {
        match (item.role, &item.text) {
            ("system", Some(text)) => system.push(text),
            (role, Some(text)) => rest.push(Message::new(role, text.clone())),
            _ => {}
        }
    }
    if !rest.iter().any(|m| m.role == "user") {
        rest.insert(0, Message::new("user", ""));
    }
    let mut all = vec![];
    if !system.is_empty() {
        all.push(Message::new("system", system.join("\n")));
    }
    all.extend(rest);
    all
}

/// The next event of the answer in progress (pending forever when there is none).
pub async fn next_event(active: &mut Option<Active>) -> Option<Event> {
    match active {
        Some(active) => active.events.recv().await,
        None => std::future::pending().await,
    }
}
