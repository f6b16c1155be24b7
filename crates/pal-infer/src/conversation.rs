//! A multi-turn chat about one clip (`pal chat --model RUN --audio FILE`, the Python package's
//! `AudioLlm.chat`): the clip goes through the encoders once and its LAL key/value prefix is
//! computed once; each later turn runs only its new tokens through the LLM, on the KV cache kept
//! from the turns before.

use candle_core::Tensor;
use pal_models::audio_llm::{AudioLlm, ClipLal, Example, Padding};
use pal_models::encoders::{encode_clip, AudioEncoder};
use pal_models::text::segments::prompt_segments;
use pal_models::Tokenizer;

use crate::generate::{decode, Generation, GenerationParams};
use crate::reuse::{items, Item, PromptCache};
use crate::{ChatTemplate, InferError, Message, Result};

/// A conversation about one clip, with the model it talks to.
pub struct Conversation<'m> {
    model: &'m AudioLlm,
    tokenizer: &'m Tokenizer,
    /// What the conversation holds.
    pub state: ConversationState,
}

impl<'m> Conversation<'m> {
    /// Starts a conversation about a clip already encoded by each of the model's encoders.
    pub fn new(model: &'m AudioLlm, tokenizer: &'m Tokenizer, audio: Vec<Tensor>) -> Result<Self> {
        Ok(Self {
            model,
            tokenizer,
            state: ConversationState::new(model, tokenizer, audio)?,
        })
    }

    /// Starts a conversation about a clip encoded with its LAL keys and values (as
    /// [`crate::ask::encode_file`] and [`crate::ask::encode_growing`] give them: a long
    /// recording window by window), which the first turn reads instead of computing them.
    pub fn from_encoded(
        model: &'m AudioLlm,
        tokenizer: &'m Tokenizer,
        audio: Vec<Tensor>,
        lal: ClipLal,
    ) -> Result<Self> {
        Ok(Self {
            model,
            tokenizer,
            state: ConversationState::from_encoded(model, tokenizer, audio, lal)?,
        })
    }

    /// Starts a conversation about `samples` (16 kHz mono), encoding them once with `encoders`.
    pub fn from_clip(
        model: &'m AudioLlm,
        tokenizer: &'m Tokenizer,
        encoders: &[Box<dyn AudioEncoder>],
        samples: &[f32],
    ) -> Result<Self> {
        let audio = encode_clip(encoders, samples)?;
        Self::new(model, tokenizer, audio)
    }

    /// Adds a system message (before the first turn).
    pub fn with_system(mut self, system: &str) -> Self {
        self.state = self.state.with_system(system);
        self
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.state.messages
    }

    /// Asks `text` and generates the answer, streaming it through `on_text`; the answer becomes
    /// part of the conversation.
    pub fn say(
        &mut self,
        text: &str,
        params: &GenerationParams,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        self.state
            .say(self.model, self.tokenizer, text, params, on_text)
    }
}

/// A conversation's own state (the clip's encoder outputs, the messages, the KV cache of the
/// turns so far), apart from the model: held by whoever holds the model, and given it at each
/// turn.
pub struct ConversationState {
    template: ChatTemplate,
    audio: Vec<Tensor>,
    /// The clip's LAL keys and values when they came with it (else the first turn computes
    /// them).
    lal: Option<ClipLal>,
    /// The messages so far (user and assistant turns, and a system message if given).
    pub messages: Vec<Message>,
    cached: Option<PromptCache>,
}

impl ConversationState {
    /// A conversation about a clip already encoded by each of `model`'s encoders.
    pub fn new(model: &AudioLlm, tokenizer: &Tokenizer, audio: Vec<Tensor>) -> Result<Self> {
        if audio.len() != model.encoders.len() {
            return Err(InferError::Invalid(format!(
                "{} encoder outputs for a model with {} encoders",
                audio.len(),
                model.encoders.len()
            )));
        }
        Ok(Self {
            template: ChatTemplate::for_tokenizer(tokenizer)?,
            audio,
            lal: None,
            messages: vec![],
            cached: None,
        })
    }

    /// A conversation about a clip encoded with its LAL keys and values, which the first turn
    /// reads instead of computing them (see [`Conversation::from_encoded`]).
    pub fn from_encoded(
        model: &AudioLlm,
        tokenizer: &Tokenizer,
        audio: Vec<Tensor>,
        lal: ClipLal,
    ) -> Result<Self> {
        let mut state = Self::new(model, tokenizer, audio)?;
        state.lal = Some(lal);
        Ok(state)
    }

    /// Adds a system message (before the first turn).
    pub fn with_system(mut self, system: &str) -> Self {
        self.messages.insert(0, Message::new("system", system));
        self
    }

    /// Asks `text` of `model` (the one the conversation was started with) and generates the
    /// answer, streaming it through `on_text`; the answer becomes part of the conversation.
    pub fn say(
        &mut self,
        model: &AudioLlm,
        tokenizer: &Tokenizer,
        text: &str,
        params: &GenerationParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        self.messages.push(Message::new("user", text));
        let segments = prompt_segments(&self.template, tokenizer, &self.messages)?;
        let wanted = items(&segments, 1);
        // At least one new position must run to give the next logits.
        let reusable = self.cached.take().and_then(|c| {
            let keep = c.shared_items(&wanted)?.min(wanted.len() - 1);
            (keep > 0).then_some((c, keep))
        });
        let (mut cached, hidden) = match reusable {
            Some((c, keep)) => c.extend(&model.llm, &wanted, keep)?,
            None => {
                let example = Example::one_clip(segments, self.audio.clone());
                let kept: Vec<Option<&ClipLal>> = self.lal.iter().map(Some).collect();
                let mut batch = model
                    .prepare_cached(&[example], Padding::Left, &kept)?
                    .detach();
                let hidden = model.llm.forward_embeds(
                    &batch.embeds,
                    Some(&batch.valid),
                    &mut batch.cache,
                )?;
                (PromptCache::new(batch.cache, wanted.clone()), hidden)
            }
        };
        let prompt_rows = cached.cache.len();
        let generation = decode(
            &model.llm,
            tokenizer,
            &mut cached.cache,
            &hidden,
            &[prompt_rows],
            std::slice::from_ref(params),
            |_, piece| {
                if !piece.is_empty() {
                    on_text(piece);
                }
                true
            },
        )?
        .remove(0);
        let generated_rows = cached.cache.len() - prompt_rows;
        cached.fed.extend(
            generation.tokens[..generated_rows]
                .iter()
                .map(|&t| Item::Token(t)),
        );
        self.cached = Some(cached);
        self.messages
            .push(Message::new("assistant", generation.text.clone()));
        Ok(generation)
    }
}
