//! A multi-turn chat about one clip (`pal chat --model RUN --audio FILE`): the clip goes through
//! the encoders once and its LAL key/value prefix is computed once; each later turn runs only its
//! new tokens through the LLM, on the KV cache kept from the turns before.

use candle_core::Tensor;
use pal_models::audio_llm::{AudioLlm, Example, Padding};
use pal_models::encoders::{encode_clip, AudioEncoder};
use pal_models::text::segments::prompt_segments;
use pal_models::text::Segment;
use pal_models::{KvCache, Tokenizer};

use crate::generate::{decode, Generation, GenerationParams};
use crate::{ChatTemplate, InferError, Message, Result};

/// What one position of the conversation holds: the clip (all its in-sequence rows) or a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Audio,
    Token(u32),
}

fn items(segments: &[Segment]) -> Vec<Item> {
    segments
        .iter()
        .flat_map(|s| match s {
            Segment::Audio => vec![Item::Audio],
            Segment::Text { ids, .. } => ids.iter().map(|&t| Item::Token(t)).collect(),
        })
        .collect()
}

/// The KV cache after the latest turn and what its rows hold.
struct Cached {
    cache: KvCache,
    fed: Vec<Item>,
    /// Rows the clip takes in the sequence (0 for a LAL-only model).
    audio_rows: usize,
}

impl Cached {
    /// Cache rows taken by the first `n` items.
    fn rows(&self, n: usize) -> usize {
        self.fed[..n]
            .iter()
            .map(|i| match i {
                Item::Audio => self.audio_rows,
                Item::Token(_) => 1,
            })
            .sum()
    }
}

/// A conversation about one clip.
pub struct Conversation<'m> {
    model: &'m AudioLlm,
    tokenizer: &'m Tokenizer,
    template: ChatTemplate,
    audio: Vec<Tensor>,
    /// The messages so far (user and assistant turns, and a system message if given).
    pub messages: Vec<Message>,
    cached: Option<Cached>,
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
        let wanted = items(&segments);
        let reusable = self.cached.take().and_then(|mut c| {
            let mut common = c
                .fed
                .iter()
                .zip(&wanted)
                .take_while(|(a, b)| a == b)
                .count();
            // At least one new position must run to give the next logits.
            common = common.min(wanted.len() - 1);
            let clip_kept = !c.fed[common..].contains(&Item::Audio);
            let no_new_clip = !wanted[common..].contains(&Item::Audio);
            (clip_kept && no_new_clip).then(|| {
                let rows = c.rows(common);
                c.fed.truncate(common);
                (c, rows)
            })
        });
        let (mut cached, hidden) = match reusable {
            Some((mut c, rows)) => {
                c.cache.truncate(rows)?;
                let ids: Vec<u32> = wanted[c.fed.len()..]
                    .iter()
                    .map(|i| match i {
                        Item::Token(t) => *t,
                        Item::Audio => unreachable!("checked above"),
                    })
                    .collect();
                let device = self.model.llm.device();
                let ids = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?;
                let embeds = self.model.llm.embed(&ids)?;
                let hidden = self.model.llm.forward_embeds(&embeds, None, &mut c.cache)?;
                c.fed = wanted.clone();
                (c, hidden)
            }
            None => {
                let example = Example::one_clip(segments, self.audio.clone());
                let mut batch = self.model.prepare(&[example], Padding::Left)?.detach();
                let hidden = self.model.llm.forward_embeds(
                    &batch.embeds,
                    Some(&batch.valid),
                    &mut batch.cache,
                )?;
                let tokens = wanted.iter().filter(|i| **i != Item::Audio).count();
                let audio_rows = batch.cache.len() - tokens;
                (
                    Cached {
                        cache: batch.cache,
                        fed: wanted.clone(),
                        audio_rows,
                    },
                    hidden,
                )
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
