//! From a conversation to model input: the chat template renders the messages, each clip goes
//! where a marker sits (by default one, at the start of the first user message), and the
//! assistant turns are marked as trained.

use crate::error::ModelError;
use crate::text::chat_template::{ChatTemplate, Message};
use crate::text::tokenizer::Tokenizer;

/// One piece of an example's token sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Text tokens; `trained` marks the tokens the loss is computed on (assistant answers).
    Text {
        /// Token ids.
        ids: Vec<u32>,
        /// Whether the loss covers these tokens.
        trained: bool,
    },
    /// Where the clip's in-sequence tokens (PLITS, PAL summary) go.
    Audio,
}

/// Stands for the clip in rendered text; replaced by [`Segment::Audio`].
pub const AUDIO_MARKER: &str = "<|pal_audio|>";

/// The messages with the clip's marker at the start of the first user message, unless the
/// text already places its clips (a request with several).
fn with_marker(messages: &[Message]) -> Vec<Message> {
    let mut out = messages.to_vec();
    if out.iter().any(|m| m.content.contains(AUDIO_MARKER)) {
        return out;
    }
    if let Some(first_user) = out.iter_mut().find(|m| m.role == "user") {
        first_user.content = format!("{AUDIO_MARKER}\n{}", first_user.content);
    }
    out
}

fn push_text(
    segments: &mut Vec<Segment>,
    tokenizer: &Tokenizer,
    text: &str,
    trained: bool,
) -> Result<(), ModelError> {
    for (i, part) in text.split(AUDIO_MARKER).enumerate() {
        if i > 0 {
            segments.push(Segment::Audio);
        }
        if !part.is_empty() {
            segments.push(Segment::Text {
                ids: tokenizer.encode(part)?,
                trained,
            });
        }
    }
    Ok(())
}

/// Segments of a whole conversation for training: each assistant turn (with its end-of-turn
/// tokens) is trained, everything else is context.
pub fn training_segments(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    messages: &[Message],
) -> Result<Vec<Segment>, ModelError> {
    let msgs = with_marker(messages);
    let mut segments = vec![];
    let mut done = String::new();
    for k in 0..msgs.len() {
        if msgs[k].role != "assistant" {
            continue;
        }
        let prompt = template.render(&msgs[..k], true)?;
        let full = template.render(&msgs[..=k], false)?;
        let context = prompt.strip_prefix(done.as_str()).ok_or_else(|| {
            ModelError::Template(
                "the template renders a conversation prefix differently from the whole".into(),
            )
        })?;
        let answer = full.strip_prefix(prompt.as_str()).ok_or_else(|| {
            ModelError::Template(
                "the template does not render the assistant turn after the generation prompt"
                    .into(),
            )
        })?;
        push_text(&mut segments, tokenizer, context, false)?;
        push_text(&mut segments, tokenizer, answer, true)?;
        done = full;
    }
    Ok(segments)
}

/// Segments of a prompt for generation: the conversation so far and the assistant's opening.
pub fn prompt_segments(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    messages: &[Message],
) -> Result<Vec<Segment>, ModelError> {
    let mut segments = vec![];
    push_text(
        &mut segments,
        tokenizer,
        &template.render(&with_marker(messages), true)?,
        false,
    )?;
    Ok(segments)
}
