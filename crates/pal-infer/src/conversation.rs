//! A multi-turn chat about one clip (`pal chat --model RUN --audio FILE`): the clip goes through
//! the encoders once and its LAL key/value prefix is computed once; each later turn runs only its
//! new tokens through the LLM, on the KV cache kept from the turns before.

use candle_core::Tensor;
use pal_models::audio_llm::{AudioLlm, Example, Padding};
use pal_models::encoders::{encode_clip, AudioEncoder};
use pal_models::text::segments::prompt_segments;
use pal_models::Tokenizer;

use crate::generate::{decode, Generation, GenerationParams};
use crate::reuse::{items, Item, PromptCache};
use crate::{ChatTemplate, InferError, Message, Result};

/// A conversation about one clip.
pub struct Conversation<'m> {
    model: &'m AudioLlm,
    tokenizer: &'m Tokenizer,
    template: ChatTemplate,
    audio: Vec<Tensor>,
    /// The messages so far (user and assistant turns, and a system message if given).
    pub messages: Vec<Message>,
    cached: Option<PromptCache>,
}

impl<'m> Conversation<'m> {
    /// Starts a conversation about a clip already encoded by each of the model's encoders.
    pub fn new(model: &'m AudioLlm, tokenizer: &'m Tokenizer, audio: Vec<Tensor>) -> Result<Self> {
        if audio.len() != model.encoders.len() {
            return Err(InferError::Invalid(format!(
                "{} encoder outputs for a model with {} encoders",
                audio.len(),
                model.encoders.len()
            )));
        }
        Ok(Self {
            model,
            tokenizer,
            template: ChatTemplate::for_tokenizer(tokenizer)?,
            audio,
            messages: vec![],
            cached: None,
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
        self.messages.insert(0, Message::new("system", system));
        self
    }

    /// Asks `text` and generates the answer, streaming it through `on_text`; the answer becomes
    /// part of the conversation.
    pub fn say(
        &mut self,
        text: &str,
        params: &GenerationParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        self.messages.push(Message::new("user", text));
        let segments = prompt_segments(&self.template, self.tokenizer, &self.messages)?;
        let wanted = items(&segments, 1);
        // At least one new position must run to give the next logits.
        let reusable = self.cached.take().and_then(|c| {
            let keep = c.shared_items(&wanted)?.min(wanted.len() - 1);
            (keep > 0).then_some((c, keep))
        });
        let (mut cached, hidden) = match reusable {
            Some((c, keep)) => c.extend(&self.model.llm, &wanted, keep)?,
            None => {
                let example = Example::one_clip(segments, self.audio.clone());
                let mut batch = self.model.prepare(&[example], Padding::Left)?.detach();
                let hidden = self.model.llm.forward_embeds(
                    &batch.embeds,
                    Some(&batch.valid),
                    &mut batch.cache,
                )?;
                (PromptCache::new(batch.cache, wanted.clone()), hidden)
            }
        };
        let prompt_rows = cached.cache.len();
        let generation = decode(
            &self.model.llm,
            self.tokenizer,
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
