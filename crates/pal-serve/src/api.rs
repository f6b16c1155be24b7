//! The OpenAI wire format: chat completion requests (text and `input_audio` content parts),
//! responses, stream chunks, model lists and the error body. Unknown request fields are
//! ignored, as OpenAI clients send many; known ones that would change the answer's meaning and
//! that pal does not do (`tools`, `response_format`, `logprobs`, `n > 1`, ...) are refused
//! ([`crate::request`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Must name the served model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most new tokens (the older name).
    pub max_tokens: Option<u64>,
    /// Most new tokens (the newer name; wins over `max_tokens`).
    pub max_completion_tokens: Option<u64>,
    /// 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Sampling seed.
    pub seed: Option<i64>,
    /// A stop string or up to four.
    pub stop: Option<Stop>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Number of choices; only 1 is supported.
    pub n: Option<u64>,
    /// Streaming options: `include_usage` adds a last chunk with the token counts.
    pub stream_options: Option<StreamOptions>,
    /// Tools the model may call (refused when not empty: pal does not call tools).
    pub tools: Option<Value>,
    /// Which tool to call (refused unless `none` or `auto` without tools).
    pub tool_choice: Option<Value>,
    /// The older name of tools (refused when not empty).
    pub functions: Option<Value>,
    /// The older name of tool_choice.
    pub function_call: Option<Value>,
    /// Structured output (refused unless `{"type": "text"}`).
    pub response_format: Option<Value>,
    /// Log-probabilities of the tokens (refused when true).
    pub logprobs: Option<bool>,
    /// How many alternatives' log-probabilities (refused when above 0).
    pub top_logprobs: Option<u64>,
    /// Token biases (refused when not empty).
    pub logit_bias: Option<Value>,
    /// Penalties (refused when not 0: pal does not apply them).
    pub presence_penalty: Option<f64>,
    /// Penalties (refused when not 0: pal does not apply them).
    pub frequency_penalty: Option<f64>,
    /// Output modalities (refused when they ask for audio).
    pub modalities: Option<Vec<String>>,
    /// Output audio settings (refused: pal answers in text).
    pub audio: Option<Value>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// One message of the conversation.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (`developer` is read as `system`).
    pub role: String,
    /// A string or content parts; may be null for assistant messages.
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string, or a list of parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text and audio parts.
    Parts(Vec<Value>),
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn bad(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.into(),
            code: None,
        }
    }

    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Token counts of a completion.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Prompt rows (text tokens and in-sequence audio tokens).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

/// OpenAI's name for a finish reason.
pub fn finish_reason_name(reason: pal_infer::FinishReason) -> &'static str {
    match reason {
        pal_infer::FinishReason::Stop => "stop",
        pal_infer::FinishReason::Length => "length",
        pal_infer::FinishReason::Cancelled => "cancelled",
    }
}

/// A whole (non-streamed) completion.
pub fn completion(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish: &str,
    usage: Usage,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": usage,
    })
}

/// The chunk that ends a stream with `include_usage`: no choices, the token counts.
pub fn usage_chunk(id: &str, created: u64, model: &str, usage: Usage) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    })
}

/// One stream chunk: a delta, and the finish reason on the last one.
pub fn chunk(id: &str, created: u64, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}
