//! A realtime session's settings: what `session.update` may change (in OpenAI's GA shape, or
//! the older beta shape's flat fields), checked as a whole before any of it applies, and the
//! session object `session.created` / `session.updated` report.

use serde_json::{json, Map, Value};

use super::events::EventError;

/// What a session does with its audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Questions answered about the audio (`response.create`).
    Realtime,
    /// The audio transcribed as it arrives, nothing answered (`?intent=transcription`).
    Transcription,
}

/// A session's settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Realtime or transcription.
    pub kind: Kind,
    /// The system prompt of every answer.
    pub instructions: String,
    /// Most tokens an answer may have (`"inf"`: the server's `--max-tokens`).
    pub max_output_tokens: usize,
    /// Sampling temperature (beta clients set it; GA ones cannot): 0 is greedy.
    pub temperature: f64,
    /// Sample rate of the appended PCM16 audio: 24000 (OpenAI's) or 16000.
    pub input_rate: u32,
    /// Whether the audio is transcribed (Whisper) as it arrives.
    pub transcribe: bool,
}

/// What limits a session's settings: the server's.
pub struct Bounds {
    /// `--max-tokens`.
    pub max_tokens: usize,
    /// Whether the bundle has a Whisper decoder.
    pub can_transcribe: bool,
    /// The served model's name.
    pub model: String,
}

impl SessionConfig {
    /// A new session's settings.
    pub fn new(kind: Kind, bounds: &Bounds) -> Self {
        Self {
            kind,
            instructions: String::new(),
            max_output_tokens: bounds.max_tokens,
            temperature: 0.0,
            input_rate: 24_000,
            transcribe: kind == Kind::Transcription && bounds.can_transcribe,
        }
    }

    /// These settings with `update` (a `session.update`'s `session`) applied, or the first
    /// field that cannot be (named by its path); only the fields present change.
    pub fn updated(&self, update: &Value, bounds: &Bounds) -> Result<Self, EventError> {
        let update = update
            .as_object()
            .ok_or_else(|| EventError::invalid("session", "session must be an object"))?;
        let mut next = self.clone();
        if let Some(kind) = update.get("type").and_then(Value::as_str) {
            next.kind = match kind {
                "realtime" => Kind::Realtime,
                "transcription" => Kind::Transcription,
                other => {
                    return Err(EventError::invalid(
                        "session.type",
                        format!("unknown session type {other:?} (realtime or transcription)"),
                    ))
                }
            };
        }
        if let Some(model) = update.get("model").and_then(Value::as_str) {
            if model != bounds.model {
                return Err(EventError::invalid(
                    "session.model",
                    format!(
                        "unknown model '{model}': this server serves '{}'",
                        bounds.model
                    ),
                ));
            }
        }
        if let Some(text) = update.get("instructions") {
            next.instructions = match text {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                _ => {
                    return Err(EventError::invalid(
                        "session.instructions",
                        "must be a string",
                    ))
                }
            };
        }
        for field in ["output_modalities", "modalities"] {
            if let Some(list) = update.get(field) {
                let text = list
                    .as_array()
                    .is_some_and(|l| l.iter().any(|m| m.as_str() == Some("text")));
                if !text {
                    return Err(EventError::invalid(
                        format!("session.{field}"),
                        "this server answers in text only: the modalities must include \"text\"",
                    ));
                }
            }
        }
        for field in ["max_output_tokens", "max_response_output_tokens"] {
            if let Some(value) = update.get(field) {
                next.max_output_tokens = max_tokens(value, bounds, &format!("session.{field}"))?;
            }
        }
        if let Some(t) = update.get("temperature") {
            next.temperature = temperature(t, "session.temperature")?;
        }
        if let Some(tools) = update.get("tools") {
            if tools.as_array().is_some_and(|t| !t.is_empty()) {
                return Err(EventError::invalid(
                    "session.tools",
                    "tools are not supported by this server",
                ));
            }
        }
        // GA: audio.input.{format, transcription, turn_detection}; beta: flat fields.
        let input = update
            .get("audio")
            .and_then(|a| a.get("input"))
            .and_then(Value::as_object);
        let empty = Map::new();
        let input = input.unwrap_or(&empty);
        if let Some(format) = input.get("format") {
            next.input_rate = ga_format(format)?;
        }
        if let Some(format) = update.get("input_audio_format") {
            next.input_rate = beta_format(format)?;
        }
        let transcription = [
            (
                "session.audio.input.transcription",
                input.get("transcription"),
            ),
            (
                "session.input_audio_transcription",
                update.get("input_audio_transcription"),
            ),
        ];
        for (at, value) in transcription {
            if let Some(value) = value {
                next.transcribe = !value.is_null();
                if next.transcribe && !bounds.can_transcribe {
                    return Err(EventError::invalid(
                        at,
                        "this model has no Whisper decoder: transcription is not available",
                    ));
                }
            }
        }
        let turn_detection = [
            (
                "session.audio.input.turn_detection",
                input.get("turn_detection"),
            ),
            ("session.turn_detection", update.get("turn_detection")),
        ];
        for (at, value) in turn_detection {
            if value.is_some_and(|v| !v.is_null()) {
                return Err(EventError::invalid(
                    at,
                    "turn detection is not supported: send input_audio_buffer.commit when the speaker stops (turn_detection: null)",
                ));
            }
        }
        if next.kind == Kind::Transcription && !bounds.can_transcribe {
            return Err(EventError::invalid(
                "session.type",
                "this model has no Whisper decoder: transcription sessions are not available",
            ));
        }
        if next.kind == Kind::Transcription {
            next.transcribe = true;
        }
        Ok(next)
    }

    /// The session object of `session.created` / `session.updated`, in the client's shape.
    pub fn to_json(&self, id: &str, model: &str, beta: bool) -> Value {
        let transcription = self.transcribe.then(|| json!({"model": "whisper"}));
        if beta {
            return json!({
                "object": "realtime.session",
                "id": id,
                "model": model,
                "modalities": ["text"],
                "instructions": self.instructions,
                "input_audio_format": "pcm16",
                "input_audio_transcription": transcription,
                "turn_detection": null,
                "tools": [],
                "temperature": self.temperature,
                "max_response_output_tokens": self.max_output_tokens,
            });
        }
        let input = json!({
            "format": {"type": "audio/pcm", "rate": self.input_rate},
            "transcription": transcription,
            "turn_detection": null,
            "noise_reduction": null,
        });
        match self.kind {
            Kind::Realtime => json!({
                "type": "realtime",
                "object": "realtime.session",
                "id": id,
                "model": model,
                "output_modalities": ["text"],
                "instructions": self.instructions,
                "max_output_tokens": self.max_output_tokens,
                "tools": [],
                "tool_choice": "auto",
                "audio": {"input": input},
            }),
            Kind::Transcription => json!({
                "type": "transcription",
                "object": "realtime.transcription_session",
                "id": id,
                "audio": {"input": input},
            }),
        }
    }
}

/// `max_output_tokens`: a count within the server's limit, or `"inf"` (the limit).
pub fn max_tokens(value: &Value, bounds: &Bounds, at: &str) -> Result<usize, EventError> {
    if value.as_str() == Some("inf") {
        return Ok(bounds.max_tokens);
    }
    match value.as_u64() {
        Some(n) if n >= 1 && n <= bounds.max_tokens as u64 => Ok(n as usize),
        _ => Err(EventError::invalid(
            at,
            format!(
                "must be \"inf\" or a count between 1 and {} on this server (--max-tokens)",
                bounds.max_tokens
            ),
        )),
    }
}

/// A temperature between 0 and 2.
pub fn temperature(value: &Value, at: &str) -> Result<f64, EventError> {
    match value.as_f64() {
        Some(t) if (0.0..=2.0).contains(&t) => Ok(t),
        _ => Err(EventError::invalid(at, "must be a number between 0 and 2")),
    }
}

fn ga_format(format: &Value) -> Result<u32, EventError> {
    let at = "session.audio.input.format";
    match format.get("type").and_then(Value::as_str) {
        Some("audio/pcm") => match format.get("rate").map(Value::as_u64) {
            None | Some(Some(24_000)) => Ok(24_000),
            Some(Some(16_000)) => Ok(16_000),
            _ => Err(EventError::invalid(
                format!("{at}.rate"),
                "PCM16 input is taken at 24000 Hz (OpenAI's) or 16000 Hz",
            )),
        },
        _ => Err(EventError::invalid(
            format!("{at}.type"),
            "the input format must be {\"type\": \"audio/pcm\", \"rate\": 24000 or 16000} (G.711 is not supported)",
        )),
    }
}

fn beta_format(format: &Value) -> Result<u32, EventError> {
    match format.as_str() {
        Some("pcm16") => Ok(24_000),
        _ => Err(EventError::invalid(
            "session.input_audio_format",
            "the input format must be \"pcm16\" (24 kHz; G.711 is not supported)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            max_tokens: 64,
            can_transcribe: true,
            model: "m".into(),
        }
    }

    #[test]
    fn updates_apply_whole_or_not_at_all() {
        let config = SessionConfig::new(Kind::Realtime, &bounds());
        let ok = json!({"type": "realtime", "instructions": "Be brief.", "max_output_tokens": 8,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
            "transcription": {"model": "whisper-1"}, "turn_detection": null}}});
        let next = config.updated(&ok, &bounds()).unwrap();
        assert_eq!(
            (next.max_output_tokens, next.input_rate, next.transcribe),
            (8, 16000, true)
        );
        assert_eq!(next.instructions, "Be brief.");
        let bad = json!({"instructions": "changed", "audio": {"input": {"format": {"type": "audio/pcmu"}}}});
        let err = next.updated(&bad, &bounds()).unwrap_err();
        assert_eq!(
            err.param.as_deref(),
            Some("session.audio.input.format.type")
        );
        let beta = json!({"modalities": ["text", "audio"], "input_audio_format": "pcm16",
            "temperature": 0.7, "max_response_output_tokens": "inf"});
        let next = config.updated(&beta, &bounds()).unwrap();
        assert_eq!((next.max_output_tokens, next.temperature), (64, 0.7));
        let vad = json!({"turn_detection": {"type": "server_vad"}});
        assert!(config.updated(&vad, &bounds()).is_err());
        let too_many = json!({"max_output_tokens": 65});
        assert!(config.updated(&too_many, &bounds()).is_err());
    }
}
