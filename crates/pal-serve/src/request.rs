//! A chat request from its JSON body to what the model threads run: its size checked first
//! (messages, parts, bytes of text), its fields checked (and those that would change the
//! answer's meaning refused), its clips taken from their parts, and its prompt rendered by the
//! chat template and tokenized with each message's text as plain text. All of it is blocking
//! work: the handlers call [`plan_chat`] on a blocking thread, never on the async workers.

use std::hash::BuildHasher;

use base64::Engine as _;
use pal_infer::{ChatTemplate, GenerationParams, Message};
use pal_models::text::segments::AUDIO_MARKER;
use pal_models::text::Segment;
use pal_models::Tokenizer;
use serde_json::Value;

use crate::api::{ApiError, ChatRequest, Content, Stop};
use crate::settings::Limits;

/// What prompts are made with: the tokenizer, the chat template and the model's limits.
pub struct Prompting {
    /// The name clients use in `model`.
    pub model_name: String,
    /// The LLM's tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
    /// Most audio clips one request may hold (the model config's `max_clips`).
    pub max_clips: usize,
    /// Request limits.
    pub limits: Limits,
}

/// One audio part of a request: its bytes, format, and the field to name in errors.
pub struct ClipPart {
    /// The file's bytes (base64 decoded).
    pub bytes: Vec<u8>,
    /// wav, mp3, flac or ogg.
    pub format: String,
    /// The request field it came from.
    pub field: String,
}

/// A checked chat request: its prompt, its clips (still encoded), how to generate, how to
/// answer.
pub struct ChatPlan {
    /// The prompt, with the clips' places.
    pub segments: Vec<Segment>,
    /// The clips in order.
    pub clips: Vec<ClipPart>,
    /// How to generate.
    pub params: GenerationParams,
    /// Answer as server-sent events.
    pub stream: bool,
    /// End a stream with a chunk of token counts.
    pub include_usage: bool,
}

/// Parses and checks a chat request's `body` and makes its prompt (see the module's
/// documentation). Blocking.
pub fn plan_chat(body: &[u8], prompting: &Prompting) -> Result<ChatPlan, ApiError> {
    let request: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(None, format!("malformed JSON request: {e}")))?;
    if request.model != prompting.model_name {
        return Err(ApiError::bad(
            "model".to_string(),
            format!(
                "unknown model '{}': this server serves '{}'",
                request.model, prompting.model_name
            ),
        )
        .with_code("model_not_found"));
    }
    let limits = &prompting.limits;
    check_size(&request, limits)?;
    refuse_unsupported(&request)?;
    let params = generation_params(&request, limits)?;
    let (messages, clips) = parse_messages(&request, prompting.max_clips)?;
    if clips.is_empty() {
        return Err(ApiError::bad(
            "messages".to_string(),
            "the request needs an input_audio content part (this is an audio model)",
        ));
    }
    let segments = prompt_segments(&messages, prompting)?;
    Ok(ChatPlan {
        segments,
        clips,
        params,
        stream: request.stream,
        include_usage: request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    })
}

/// The prompt of `messages` (the clips' places by the chat template; one clip and no marker: the
/// training placement), refused past `--max-prompt-tokens`. Blocking (tokenizes).
pub fn prompt_segments(
    messages: &[Message],
    prompting: &Prompting,
) -> Result<Vec<Segment>, ApiError> {
    let segments = pal_models::text::segments::prompt_segments(
        &prompting.template,
        &prompting.tokenizer,
        messages,
    )
    .map_err(|e| ApiError::bad("messages".to_string(), e.to_string()))?;
    let prompt_tokens: usize = segments
        .iter()
        .map(|s| match s {
            Segment::Text { ids, .. } => ids.len(),
            Segment::Audio => 0,
        })
        .sum();
    let limit = prompting.limits.max_prompt_tokens;
    if prompt_tokens > limit {
        return Err(ApiError::bad(
            "messages".to_string(),
            format!(
                "the prompt is {prompt_tokens} tokens; this server takes at most {limit} (--max-prompt-tokens)"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(segments)
}

/// Refuses a conversation past the size limits before anything is rendered: messages, content
/// parts, and bytes of text (the audio's bytes are bounded by the body's size).
fn check_size(request: &ChatRequest, limits: &Limits) -> Result<(), ApiError> {
    if request.messages.len() > limits.max_messages {
        return Err(ApiError::bad(
            "messages".to_string(),
            format!(
                "{} messages; this server takes at most {} (--max-messages)",
                request.messages.len(),
                limits.max_messages
            ),
        ));
    }
    let mut parts = 0;
    let mut text_bytes = 0;
    for message in &request.messages {
        match &message.content {
            None => {}
            Some(Content::Text(t)) => text_bytes += t.len(),
            Some(Content::Parts(p)) => {
                parts += p.len();
                text_bytes += p
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .map(str::len)
                    .sum::<usize>();
            }
        }
    }
    if parts > limits.max_parts {
        return Err(ApiError::bad(
            "messages".to_string(),
            format!(
                "{parts} content parts; this server takes at most {} (--max-parts)",
                limits.max_parts
            ),
        ));
    }
    if text_bytes > limits.max_prompt_bytes {
        return Err(ApiError::bad(
            "messages".to_string(),
            format!(
                "the messages hold {text_bytes} bytes of text; this server takes at most {} (--max-prompt-bytes)",
                limits.max_prompt_bytes
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

/// Refuses the fields that would change what the answer means and that pal does not do: a
/// client that asked for tools, structured output or log-probabilities must not get an
/// ordinary answer as if it had.
fn refuse_unsupported(request: &ChatRequest) -> Result<(), ApiError> {
    let refuse = |field: &str, why: &str| Err(ApiError::bad(field.to_string(), why.to_string()));
    let non_empty = |v: &Option<Value>| {
        v.as_ref().is_some_and(|v| match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        })
    };
    if non_empty(&request.tools) || non_empty(&request.functions) {
        return refuse(
            "tools",
            "tools are not supported: pal's models do not call tools",
        );
    }
    let no_tool = |v: &Option<Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s == "none" || s == "auto",
        _ => false,
    };
    if !no_tool(&request.tool_choice) || !no_tool(&request.function_call) {
        return refuse(
            "tool_choice",
            "tool_choice is not supported: pal's models do not call tools",
        );
    }
    if let Some(format) = &request.response_format {
        let kind = format.get("type").and_then(Value::as_str);
        if !format.is_null() && kind != Some("text") {
            return refuse(
                "response_format",
                "response_format other than {\"type\": \"text\"} is not supported (no JSON mode or schemas)",
            );
        }
    }
    if request.logprobs == Some(true) || request.top_logprobs.is_some_and(|n| n > 0) {
        return refuse("logprobs", "logprobs are not supported");
    }
    if non_empty(&request.logit_bias) {
        return refuse("logit_bias", "logit_bias is not supported");
    }
    for (field, value) in [
        ("presence_penalty", request.presence_penalty),
        ("frequency_penalty", request.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return refuse(field, &format!("{field} is not supported (only 0)"));
        }
    }
    if request
        .modalities
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m != "text"))
        || request.audio.as_ref().is_some_and(|a| !a.is_null())
    {
        return refuse("modalities", "pal answers in text only (no audio output)");
    }
    if request.n.is_some_and(|n| n != 1) {
        return refuse("n", "only n = 1 is supported");
    }
    Ok(())
}

/// A piece of a message's content, in order.
enum Piece {
    Text(String),
    Audio,
}

/// The conversation as messages, and its clips in order. With one clip, the clip goes where
/// training put it, the start of the first user message (or where its part is, when the
/// conversation has no user message); with several, each goes where its part is
/// ([`AUDIO_MARKER`] in the text). Either way the prompt says where every clip is, so a kept
/// prompt's rows are counted right. Text may not contain the marker itself.
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
                            clips.push(ClipPart {
                                bytes: base64_bytes(data, &field)?,
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
    // One clip keeps the training placement when there is a user message to hold it.
    let place_clips = clips.len() > 1 || !conversation.iter().any(|(role, _)| *role == "user");
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

/// Base64 as clients send it: standard alphabet, padding optional, line breaks and spaces
/// anywhere (MIME-style wrapping).
fn base64_bytes(data: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(compact.as_bytes()).map_err(|e| {
        ApiError::bad(
            field.to_string(),
            format!("the audio is not valid base64: {e}"),
        )
    })
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

/// A fresh sampling seed for a request that gives none (so two such requests do not sample
/// alike).
/// A seed for a request that gives none: different for every request.
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new().hash_one(COUNT.fetch_add(1, Ordering::Relaxed))
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
                "max_tokens must be between 1 and {} on this server (--max-tokens), got {max_tokens}",
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
    if let Some(long) = stop.iter().find(|s| s.len() > limits.max_stop_bytes) {
        return Err(ApiError::bad(
            "stop".to_string(),
            format!(
                "a stop string is {} bytes; this server takes at most {} (--max-stop-bytes)",
                long.len(),
                limits.max_stop_bytes
            ),
        ));
    }
    Ok(GenerationParams {
        max_tokens: max_tokens as usize,
        temperature,
        top_p,
        seed: request.seed.map_or_else(fresh_seed, |s| s as u64),
        stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_takes_line_breaks_and_missing_padding() {
        let plain = base64_bytes("aGVsbG8gd29ybGQ=", "f").unwrap();
        assert_eq!(plain, b"hello world");
        assert_eq!(base64_bytes("aGVsbG8g\r\nd29y\nbGQ", "f").unwrap(), plain);
        let err = base64_bytes("not base64!", "messages[0].content[1]").unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].content[1]"));
    }

    #[test]
    fn requests_without_a_seed_get_different_seeds() {
        let request: ChatRequest =
            serde_json::from_str(r#"{"model": "m", "messages": []}"#).unwrap();
        let a = generation_params(&request, &Limits::default())
            .unwrap()
            .seed;
        let b = generation_params(&request, &Limits::default())
            .unwrap()
            .seed;
        assert_ne!(a, b);
        let seeded: ChatRequest =
            serde_json::from_str(r#"{"model": "m", "messages": [], "seed": 7}"#).unwrap();
        let params = generation_params(&seeded, &Limits::default()).unwrap();
        assert_eq!(params.seed, 7);
    }
}
