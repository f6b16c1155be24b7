//! Continuous batching: sequences join a running batch between decoding steps and leave it as
//! soon as they end (stop, token limit, or cancelled by their caller), so a finished or
//! cancelled answer never costs another step and a new one need not wait for the batch to end.
//! Each sequence keeps its own KV cache (its clip's LAL keys/values in front), so sequences at
//! different positions and about different clips decode together
//! ([`pal_models::Llama::decode_step`]).

use std::sync::Arc;

use pal_models::audio_llm::{AudioLlm, ClipLal, Example};
use pal_models::{KvCache, Llama, Tokenizer};

use crate::generate::prefill_examples;
use crate::reuse::{items, PromptCache};
use crate::sequence::SequenceState;
use crate::sequence::{Generation, GenerationParams};
use crate::Result;

/// A sequence after its prompt: its cache and the logits of its first token.
pub struct Prefilled {
    cache: KvCache,
    logits: Vec<f32>,
    prompt_tokens: usize,
}

impl Prefilled {
    /// Rows of its prompt (text and in-sequence audio; LAL keys not counted).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }
}

/// Runs the prompt of one example (its LAL keys/values taken from `lal` when given, as a
/// server's audio cache keeps them; computed otherwise).
pub fn prefill(model: &AudioLlm, example: &Example, lal: Option<&ClipLal>) -> Result<Prefilled> {
    let cached: Vec<Option<&ClipLal>> = lal.map(|l| vec![Some(l)]).unwrap_or_default();
    let mut prefilled = prefill_batch(model, std::slice::from_ref(example), &cached)?;
    Ok(prefilled.remove(0))
}

/// A prompt's cache and the logits of its last row, as a server keeps them (with the clip they
/// are about): the same prompt again starts decoding at once, and one that shares a beginning
/// with it runs only the rest ([`prefill_reusing`]).
#[derive(Clone, Debug)]
pub struct KeptPrompt {
    /// The prompt's KV cache and what it holds.
    pub prompt: PromptCache,
    /// Logits of the token after the prompt.
    pub logits: Vec<f32>,
}

impl KeptPrompt {
    /// Bytes it holds (its clip's LAL keys/values are the clip's, not counted).
    pub fn bytes(&self) -> usize {
        self.prompt.bytes() + self.logits.len() * std::mem::size_of::<f32>()
    }
}

/// How much of a prompt an earlier one spared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reused {
    /// Rows taken from the earlier prompt's cache.
    pub rows: usize,
    /// Rows run through the LLM.
    pub run: usize,
}

/// Runs the prompt of a one-clip example like [`prefill`], starting from the earlier prompt
/// about the same clip in `kept` that shares the most with it: the same prompt runs nothing, a
/// different question about the clip only the rows after the clip. Returns the sequence, what
/// was reused, and the prompt to keep for later requests (the kept one itself when the prompts
/// are the same).
pub fn prefill_reusing(
    model: &AudioLlm,
    example: &Example,
    lal: Option<&ClipLal>,
    kept: &[Arc<KeptPrompt>],
) -> Result<(Prefilled, Reused, Arc<KeptPrompt>)> {
    let wanted = items(&example.segments, example.clips.len());
    let best = kept
        .iter()
        .filter_map(|k| Some((k, k.prompt.shared_items(&wanted)?)))
        .max_by_key(|(_, shared)| *shared);
    let (kept, reused) = match best {
        Some((k, shared)) if shared == wanted.len() && k.prompt.fed.len() == shared => {
            let rows = k.prompt.cache.len();
            (Arc::clone(k), Reused { rows, run: 0 })
        }
        Some((k, shared)) => {
            let keep = shared.min(wanted.len() - 1);
            let (mut prompt, hidden) = k.prompt.clone().extend(&model.llm, &wanted, keep)?;
            // Kept and cloned for every request that reuses it: without the growable buffers.
            prompt.cache.compact()?;
            let run = hidden.dims()[1];
            let logits = last_logits(&model.llm, &hidden)?.remove(0);
            let rows = prompt.cache.len() - run;
            (
                Arc::new(KeptPrompt { prompt, logits }),
                Reused { rows, run },
            )
        }
        None => {
            let prefilled = prefill(model, example, lal)?;
            let run = prefilled.prompt_tokens;
            let prompt = PromptCache::new(prefilled.cache, wanted);
            let logits = prefilled.logits;
            (
                Arc::new(KeptPrompt { prompt, logits }),
                Reused { rows: 0, run },
            )
        }
    };
    let prefilled = Prefilled {
        cache: kept.prompt.cache.clone(),
        logits: kept.logits.clone(),
        prompt_tokens: kept.prompt.cache.len(),
    };
    Ok((prefilled, reused, kept))
}

/// The logits of the last row of each item of `hidden` `(b, n, d)`, as f32.
fn last_logits(llm: &Llama, hidden: &candle_core::Tensor) -> Result<Vec<Vec<f32>>> {
    let n = hidden.dims()[1];
    Ok(llm
        .logits(&hidden.narrow(1, n - 1, 1)?)?
        .squeeze(1)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?)
}

/// Runs the prompts of several examples in one left-padded batch, then gives each its own
/// cache without the padding. `cached`: each example's LAL keys/values, or empty to compute
/// them. (`pal serve` prefills one request at a time: on pal's quantized kernels a row costs
/// the same in a short product as in a long one, and padding costs rows.)
pub fn prefill_batch(
    model: &AudioLlm,
    examples: &[Example],
    cached: &[Option<&ClipLal>],
) -> Result<Vec<Prefilled>> {
    let (cache, hidden, prompt_tokens) = prefill_examples(model, examples, cached)?;
    let logits = last_logits(&model.llm, &hidden)?;
    Ok(cache
        .split()?
        .into_iter()
        .zip(logits)
        .zip(prompt_tokens)
        .map(|((cache, logits), prompt_tokens)| Prefilled {
            cache,
            logits,
            prompt_tokens,
        })
        .collect())
}

/// A running sequence, known to its caller by `key`.
struct Entry<K> {
    key: K,
    state: SequenceState,
    cache: KvCache,
    /// The token fed at the next step.
    next: u32,
}

/// What a decoding step ended.
pub struct StepOutcome<K> {
    /// Sequences that ended, with their generations.
    pub ended: Vec<(K, Generation)>,
    /// Sequences the model failed on (alone: the others of the step went on), with the error.
    pub failed: Vec<(K, String)>,
}

/// The running batch.
pub struct Running<K> {
    entries: Vec<Entry<K>>,
}

impl<K> Default for Running<K> {
    fn default() -> Self {
        Self { entries: vec![] }
    }
}

impl<K> Running<K> {
    /// Sequences running.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a prefilled sequence: samples its first token and gives its first text to
    /// `on_event` (which returns `false` to cancel). Returns the generation when the sequence
    /// ended at once.
    pub fn join(
        &mut self,
        key: K,
        prefilled: Prefilled,
        params: GenerationParams,
        tokenizer: &Tokenizer,
        mut on_event: impl FnMut(&K, &str) -> bool,
    ) -> Result<Option<(K, Generation)>> {
        let mut state = SequenceState::new(params, prefilled.prompt_tokens);
        let next = advance(&mut state, &prefilled.logits, tokenizer, |piece| {
            on_event(&key, piece)
        })?;
        match next {
            Some(next) => {
                self.entries.push(Entry {
                    key,
                    state,
                    cache: prefilled.cache,
                    next,
                });
                Ok(None)
            }
            None => Ok(Some((key, state.into_generation()))),
        }
    }

    /// One decoding step of every running sequence; those that end leave the batch. When the
    /// batch's step fails, each sequence is stepped alone, so only those the model fails on
    /// fail.
    pub fn step(
        &mut self,
        model: &Llama,
        tokenizer: &Tokenizer,
        mut on_event: impl FnMut(&K, &str) -> bool,
    ) -> Result<StepOutcome<K>> {
        let mut outcome = StepOutcome {
            ended: vec![],
            failed: vec![],
        };
        let rows = match logits(model, &mut self.entries) {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(_) if self.entries.len() > 1 => self
                .entries
                .iter_mut()
                .map(|e| logits(model, std::slice::from_mut(e)).map(|mut r| r.remove(0)))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        let mut kept = Vec::with_capacity(self.entries.len());
        for (mut entry, row) in self.entries.drain(..).zip(rows) {
            let row = match row {
                Ok(row) => row,
                Err(e) => {
                    outcome.failed.push((entry.key, e.to_string()));
                    continue;
                }
            };
            let key = &entry.key;
            // A sequence whose sampling or text fails fails alone; the others go on.
            match advance(&mut entry.state, &row, tokenizer, |p| on_event(key, p)) {
                Ok(Some(next)) => {
                    entry.next = next;
                    kept.push(entry);
                }
                Ok(None) => outcome
                    .ended
                    .push((entry.key, entry.state.into_generation())),
                Err(e) => outcome.failed.push((entry.key, e.to_string())),
            }
        }
        self.entries = kept;
        Ok(outcome)
    }

    /// Removes every running sequence (after a failure the caller could not isolate), returning
    /// their keys.
    pub fn drain(&mut self) -> Vec<K> {
        self.entries.drain(..).map(|e| e.key).collect()
    }
}

/// The logits of the next token of each entry (one decoding step).
fn logits<K>(model: &Llama, entries: &mut [Entry<K>]) -> Result<Vec<Vec<f32>>> {
    let tokens: Vec<u32> = entries.iter().map(|e| e.next).collect();
    let mut caches: Vec<&mut KvCache> = entries.iter_mut().map(|e| &mut e.cache).collect();
    let logits = model.decode_step(&tokens, &mut caches)?;
    Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

/// Feeds a sequence its logits and streams its new text; returns the token to feed next, or
/// `None` when it ended (a sequence at its token limit ends here, without another step).
fn advance(
    state: &mut SequenceState,
    logits: &[f32],
    tokenizer: &Tokenizer,
    mut on_event: impl FnMut(&str) -> bool,
) -> Result<Option<u32>> {
    let (mut next, mut piece) = state.step(logits, tokenizer)?;
    if next.is_some() && state.at_limit() {
        piece.push_str(&state.end_at_limit());
        next = None;
    }
    if !on_event(&piece) {
        state.cancel();
        next = None;
    }
    Ok(next)
}
