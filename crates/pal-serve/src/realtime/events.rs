//! The events of a realtime session: client events read from text frames, and the server events
//! written back, numbered, in OpenAI's GA names (or the beta names for a client that sent
//! `OpenAI-Beta: realtime=v1`).

use serde_json::{json, Value};

/// A client event that cannot be taken: answered with an `error` event, the session goes on.
#[derive(Debug, Clone)]
pub struct EventError {
    /// OpenAI's error type (`invalid_request_error`, `server_error`).
    pub kind: &'static str,
    /// A code clients may match on.
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// The field at fault.
    pub param: Option<String>,
}

impl EventError {
    /// A field of the event that cannot be taken.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: "invalid_request_error",
            code: "invalid_value",
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// An event that cannot be taken now or here, with its code.
    pub fn refused(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: "invalid_request_error",
            code,
            message: message.into(),
            param: None,
        }
    }

    /// The server's fault.
    pub fn server(message: impl Into<String>) -> Self {
        Self {
            kind: "server_error",
            code: "server_error",
            message: message.into(),
            param: None,
        }
    }

    /// With this code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

/// A client event: its type, its id (echoed in errors), and its body.
pub struct ClientEvent {
    /// `type`.
    pub kind: String,
    /// `event_id`, when the client gave one.
    pub id: Option<String>,
    /// The whole event.
    pub body: Value,
}

impl ClientEvent {
    /// Parses a text frame; an error names what is wrong.
    pub fn parse(text: &str) -> Result<Self, (EventError, Option<String>)> {
        let body: Value = serde_json::from_str(text).map_err(|e| {
            let error = EventError::refused("invalid_json", format!("the event is not JSON: {e}"));
            (error, None)
        })?;
        let id = body
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let Some(kind) = body.get("type").and_then(Value::as_str) else {
            let error =
                EventError::refused("invalid_event", "the event has no string 'type' field");
            return Err((error, id));
        };
        Ok(Self {
            kind: kind.to_string(),
            id,
            body,
        })
    }

    /// A string field (or `None`), refused when present with another type.
    pub fn text(&self, field: &str) -> Result<Option<&str>, EventError> {
        match self.body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(EventError::invalid(
                field,
                format!("{field} must be a string"),
            )),
        }
    }
}

/// Writes server events: numbers them, and names them for the client's API generation.
pub struct Outbox {
    next: u64,
    /// The client speaks the beta API (`OpenAI-Beta: realtime=v1`).
    pub beta: bool,
}

impl Outbox {
    /// A new session's outbox.
    pub fn new(beta: bool) -> Self {
        Self { next: 0, beta }
    }

    /// The event `kind` with `fields` and a fresh `event_id`.
    pub fn event(&mut self, kind: &str, fields: Value) -> Value {
        self.next += 1;
        let mut event = json!({"type": kind, "event_id": format!("event_{}", self.next)});
        if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
            event.extend(fields);
        }
        event
    }

    /// An `error` event for the client event `event_id`.
    pub fn error(&mut self, error: &EventError, event_id: Option<&str>) -> Value {
        self.event(
            "error",
            json!({"error": {
                "type": error.kind,
                "code": error.code,
                "message": error.message,
                "param": error.param,
                "event_id": event_id,
            }}),
        )
    }

    /// The name of a GA event in the client's generation (text deltas and items were renamed).
    pub fn name<'a>(&self, ga: &'a str) -> &'a str {
        if !self.beta {
            return ga;
        }
        match ga {
            "response.output_text.delta" => "response.text.delta",
            "response.output_text.done" => "response.text.done",
            "conversation.item.added" => "conversation.item.created",
            other => other,
        }
    }

    /// An item was added: `conversation.item.added` (GA) or `conversation.item.created` (beta).
    pub fn item_added(&mut self, item: Value, previous: Option<&str>) -> Value {
        let name = self.name("conversation.item.added");
        self.event(name, json!({"item": item, "previous_item_id": previous}))
    }

    /// An item is final: `conversation.item.done` (GA only; beta clients had no such event).
    pub fn item_done(&mut self, item: Value) -> Option<Value> {
        (!self.beta).then(|| self.event("conversation.item.done", json!({ "item": item })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_frames_say_what_is_wrong() {
        let (e, _) = ClientEvent::parse("{not json").err().unwrap();
        assert_eq!(e.code, "invalid_json");
        let (e, id) = ClientEvent::parse(r#"{"event_id": "e1"}"#).err().unwrap();
        assert_eq!((e.code, id.as_deref()), ("invalid_event", Some("e1")));
        let ok = ClientEvent::parse(r#"{"type": "response.create"}"#)
            .ok()
            .unwrap();
        assert_eq!(ok.kind, "response.create");
    }

    #[test]
    fn beta_clients_get_beta_names() {
        let mut ga = Outbox::new(false);
        let mut beta = Outbox::new(true);
        assert_eq!(
            ga.name("response.output_text.delta"),
            "response.output_text.delta"
        );
        assert_eq!(
            beta.name("response.output_text.delta"),
            "response.text.delta"
        );
        assert_eq!(
            beta.item_added(json!({}), None)["type"],
            "conversation.item.created"
        );
        assert!(beta.item_done(json!({})).is_none());
        let first = ga.event("x", json!({"a": 1}));
        let second = ga.event("x", json!({}));
        assert_ne!(first["event_id"], second["event_id"]);
        assert_eq!(first["a"], 1);
    }
}
