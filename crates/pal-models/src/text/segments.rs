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

/// Marks a message's content in a rendering made with [`placeholders`]: the content's index
/// between these two characters (Unicode private use; never in a template's own text).
const OPEN: char = '\u{F0000}';
const CLOSE: char = '\u{F0001}';

/// The messages with each content replaced by its placeholder.
fn placeholders(messages: &[Message]) -> Vec<Message> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| Message::new(&m.role, format!("{OPEN}{i}{CLOSE}")))
        .collect()
}

/// A rendering: the template's own text, and the messages' contents by index.
enum Piece<'a> {
    Template(&'a str),
    Content(usize),
}

/// Splits a rendering of [`placeholders`] into the template's text and the contents' places.
fn pieces(rendered: &str) -> Vec<Piece<'_>> {
    let mut out = vec![];
    let mut rest = rendered;
    while let Some(open) = rest.find(OPEN) {
        let after = &rest[open + OPEN.len_utf8()..];
        let Some(close) = after.find(CLOSE) else {
            break;
        };
        let Ok(index) = after[..close].parse::<usize>() else {
            break;
        };
        if open > 0 {
            out.push(Piece::Template(&rest[..open]));
        }
        out.push(Piece::Content(index));
        rest = &after[close + CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        out.push(Piece::Template(rest));
    }
    out
}

/// How a conversation's text becomes tokens: the template's own text with its special tokens,
/// each message's content as plain text ([`Tokenizer::encode_text`]), so that a control token's
/// spelling typed in a message never becomes the control token.
struct Tokenization<'a> {
    tokenizer: &'a Tokenizer,
    messages: &'a [Message],
    /// The template renders contents as they are (checked once per conversation); when it
    /// changes them (a `trim`, say), the whole rendering is tokenized and contents that spell a
    /// special token are refused instead.
    by_pieces: bool,
}

impl<'a> Tokenization<'a> {
    fn new(
        template: &ChatTemplate,
        tokenizer: &'a Tokenizer,
        messages: &'a [Message],
        add_generation_prompt: bool,
    ) -> Result<Self, ModelError> {
        let real = template.render(messages, add_generation_prompt)?;
        let marked = template.render(&placeholders(messages), add_generation_prompt)?;
        let substituted: String = pieces(&marked)
            .iter()
            .map(|p| match p {
                Piece::Template(t) => t,
                Piece::Content(i) => messages.get(*i).map_or("", |m| m.content.as_str()),
            })
            .collect();
        let by_pieces = substituted == real;
        if !by_pieces {
            for m in messages {
                if let Some(token) = tokenizer.special_token_in(&m.content) {
                    return Err(ModelError::Template(format!(
                        "a {} message contains the control token {token:?}, which this model's chat template cannot keep apart from its own",
                        m.role
                    )));
                }
            }
        }
        Ok(Self {
            tokenizer,
            messages,
            by_pieces,
        })
    }

    /// Pushes the segments of `text` (a rendering of the placeholders, or of the messages when
    /// not by pieces) with the audio placeholders in it as [`Segment::Audio`].
    fn push(
        &self,
        segments: &mut Vec<Segment>,
        text: &str,
        trained: bool,
    ) -> Result<(), ModelError> {
        if !self.by_pieces {
            return push_text(segments, |t| self.tokenizer.encode(t), text, trained);
        }
        for piece in pieces(text) {
            match piece {
                Piece::Template(t) => {
                    push_text(segments, |t| self.tokenizer.encode(t), t, trained)?
                }
                Piece::Content(i) => {
                    let content = self.messages.get(i).map_or("", |m| m.content.as_str());
                    push_text(
                        segments,
                        |t| self.tokenizer.encode_text(t),
                        content,
                        trained,
                    )?
                }
            }
        }
        Ok(())
    }

    /// The messages to render: placeholders when by pieces, else the messages themselves.
    fn rendered(&self) -> Vec<Message> {
        if self.by_pieces {
            placeholders(self.messages)
        } else {
            self.messages.to_vec()
        }
    }
}

/// Appends `text`'s segments: its text tokens (by `encode`) and an [`Segment::Audio`] at each
/// [`AUDIO_MARKER`]. Consecutive text tokens of the same kind join one segment.
fn push_text(
    segments: &mut Vec<Segment>,
    encode: impl Fn(&str) -> Result<Vec<u32>, ModelError>,
    text: &str,
    trained: bool,
) -> Result<(), ModelError> {
    for (i, part) in text.split(AUDIO_MARKER).enumerate() {
        if i > 0 {
            segments.push(Segment::Audio);
        }
        if part.is_empty() {
            continue;
        }
        let ids = encode(part)?;
        match segments.last_mut() {
            Some(Segment::Text {
                ids: last,
                trained: t,
            }) if *t == trained => last.extend(ids),
            _ => segments.push(Segment::Text { ids, trained }),
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
    let tokenization = Tokenization::new(template, tokenizer, &msgs, false)?;
    let rendered = tokenization.rendered();
    let mut segments = vec![];
    let mut done = String::new();
    for k in 0..rendered.len() {
        if rendered[k].role != "assistant" {
            continue;
        }
        let prompt = template.render(&rendered[..k], true)?;
        let full = template.render(&rendered[..=k], false)?;
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
        tokenization.push(&mut segments, context, false)?;
        tokenization.push(&mut segments, answer, true)?;
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
    let msgs = with_marker(messages);
    let tokenization = Tokenization::new(template, tokenizer, &msgs, true)?;
    let mut segments = vec![];
    let text = template.render(&tokenization.rendered(), true)?;
    tokenization.push(&mut segments, &text, false)?;
    Ok(segments)
}
