//! One sequence's decoding state, written once for the batched decoding loop
//! ([`crate::generate`]) and for continuous batching ([`crate::continuous`]): sampling, stop
//! tokens, stop strings, the token limit, and which text is final enough to stream; and what
//! a caller asks of a generation and gets back.

use pal_models::Tokenizer;

use crate::sampling::Sampler;
use crate::Result;

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    /// Most new tokens per sequence.
    pub max_tokens: usize,
    /// 0 for greedy.
    pub temperature: f64,
    /// Nucleus mass kept when sampling.
    pub top_p: f64,
    /// Seed of the sampler (sequence `i` of a batch uses `seed + i`).
    pub seed: u64,
    /// Generation ends before any of these strings.
    pub stop: Vec<String>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: vec![],
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller cancelled it (for example, its client went away).
    Cancelled,
}

/// One generated sequence.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The text (without the stop token or stop string).
    pub text: String,
    /// Generated token ids (without the stop token).
    pub tokens: Vec<u32>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// A sequence being generated.
pub struct SequenceState {
    params: GenerationParams,
    sampler: Sampler,
    tokens: Vec<u32>,
    text: String,
    emitted: usize,
    finished: Option<FinishReason>,
    prompt_tokens: usize,
}

impl SequenceState {
    /// A sequence after a prompt of `prompt_tokens` rows, sampled with `params` (its seed as
    /// given).
    pub fn new(params: GenerationParams, prompt_tokens: usize) -> Self {
        Self {
            sampler: Sampler::new(params.temperature, params.top_p, params.seed),
            params,
            tokens: vec![],
            text: String::new(),
            emitted: 0,
            finished: None,
            prompt_tokens,
        }
    }

    /// Why it ended, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Ends it as cancelled (its client went away), unless it already ended.
    pub fn cancel(&mut self) {
        self.finished.get_or_insert(FinishReason::Cancelled);
    }

    /// Takes the logits for its next token: samples it, applies the stop token, stop strings and
    /// token limit. Returns the token to feed back (`None` once it has ended) and the text that
    /// became final (to stream; empty when none did).
    pub fn step(&mut self, logits: &[f32], tokenizer: &Tokenizer) -> Result<(Option<u32>, String)> {
        if self.finished.is_some() {
            return Ok((None, String::new()));
        }
        if self.at_limit() {
            return Ok((None, self.end_at_limit()));
        }
        let token = self.sampler.sample(logits);
        if tokenizer.stop_token_ids.contains(&token) {
            self.finished = Some(FinishReason::Stop);
            return Ok((None, self.rest()));
        }
        self.tokens.push(token);
        let text = tokenizer.decode(&self.tokens, true)?;
        let cut = self
            .params
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min();
        match cut {
            Some(cut) => {
                self.text = text[..cut].to_string();
                self.finished = Some(FinishReason::Stop);
                Ok((None, self.rest()))
            }
            None => {
                self.text = text;
                // Hold back an incomplete UTF-8 character and anything that could be the start
                // of a stop string.
                let mut safe = stable_len(&self.text, &self.params.stop);
                while safe > self.emitted && !self.text.is_char_boundary(safe) {
                    safe -= 1;
                }
                let piece = self.text[self.emitted.min(safe)..safe].to_string();
                self.emitted = self.emitted.max(safe);
                Ok((Some(token), piece))
            }
        }
    }

    /// Whether it has its `max_tokens` tokens (its next step ends it).
    pub fn at_limit(&self) -> bool {
        self.tokens.len() >= self.params.max_tokens
    }

    /// Ends it at its token limit (no logits needed) and returns the text not streamed yet.
    pub fn end_at_limit(&mut self) -> String {
        self.finished = Some(FinishReason::Length);
        self.rest()
    }

    /// The text not streamed yet (all of it is final once the sequence has ended).
    pub fn rest(&mut self) -> String {
        let piece = self.text[self.emitted.min(self.text.len())..].to_string();
        self.emitted = self.text.len();
        piece
    }

    /// The finished generation (a sequence that never ended counts as cut by its token limit).
    pub fn into_generation(self) -> Generation {
        Generation {
            text: self.text,
            tokens: self.tokens,
            prompt_tokens: self.prompt_tokens,
            finish_reason: self.finished.unwrap_or(FinishReason::Length),
        }
    }
}

/// Length of the prefix of `text` that is final: it drops a trailing replacement character (an
/// incomplete UTF-8 sequence) and any suffix that is a prefix of a stop string.
fn stable_len(text: &str, stop: &[String]) -> usize {
    let mut len = text.trim_end_matches('\u{FFFD}').len();
    for s in stop {
        for k in (1..s.len()).rev() {
            if s.is_char_boundary(k) && text[..len].ends_with(&s[..k]) {
                len = len.min(len - k);
                break;
            }
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_len_holds_back_partial_stop_strings() {
        assert_eq!(stable_len("Paris. EN", &["END".into()]), 7);
        assert_eq!(stable_len("Paris", &["END".into()]), 5);
        assert_eq!(stable_len("ab\u{FFFD}", &[]), 2);
    }
}
