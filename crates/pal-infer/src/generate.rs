//! Batched generation with a KV cache: left-padded prefill, then one token per step for every
//! unfinished sequence, with stop tokens, stop strings and a token limit.

use candle_core::{Device, Tensor};
use pal_models::audio_llm::{AudioLlm, ClipLal, Example, Padding};
use pal_models::{KvCache, Llama, Tokenizer};

use crate::sequence::SequenceState;
pub use crate::sequence::{FinishReason, Generation, GenerationParams};
use crate::{InferError, Result};

/// Left-pads `prompts` into `(batch, longest)` token ids and a validity mask.
pub fn left_pad(prompts: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    let mut valid = Vec::with_capacity(prompts.len() * longest);
    for p in prompts {
        let pad_len = longest - p.len();
        ids.extend(std::iter::repeat_n(pad, pad_len).chain(p.iter().copied()));
        valid.extend(std::iter::repeat_n(0u32, pad_len).chain(std::iter::repeat_n(1u32, p.len())));
    }
    let shape = (prompts.len(), longest);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(valid, shape, device)?,
    ))
}

/// Generates a continuation of each prompt (token ids) in one batch. `on_text(i, piece)` receives
/// each new piece of text of sequence `i` as soon as it is final (for streaming).
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &GenerationParams,
    on_text: impl FnMut(usize, &str),
) -> Result<Vec<Generation>> {
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(InferError::Invalid("empty prompt".into()));
    }
    let pad = tokenizer.stop_token_ids.first().copied().unwrap_or(0);
    let (ids, valid) = left_pad(prompts, pad, model.device())?;
    let mut cache: KvCache = model.new_cache();
    let hidden = model.forward_embeds(&model.embed(&ids)?, Some(&valid), &mut cache)?;
    let lengths: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    decode(
        model,
        tokenizer,
        &mut cache,
        &hidden,
        &lengths,
        &per_sequence(params, prompts.len()),
        streaming(on_text),
    )
}

/// The same parameters for `n` sequences, sequence `i` sampling with seed `seed + i`.
fn per_sequence(params: &GenerationParams, n: usize) -> Vec<GenerationParams> {
    (0..n)
        .map(|i| GenerationParams {
            seed: params.seed.wrapping_add(i as u64),
            ..params.clone()
        })
        .collect()
}

/// A text callback that never cancels, as an event callback.
fn streaming(mut on_text: impl FnMut(usize, &str)) -> impl FnMut(usize, &str) -> bool {
    move |i, piece| {
        if !piece.is_empty() {
            on_text(i, piece);
        }
        true
    }
}

/// Generates answers for audio-LLM examples (prompt segments and encoder outputs) in one batch:
/// in-sequence audio tokens and LAL key/value prefixes are built once, then decoding is ordinary.
/// Sequence `i` samples with seed `params.seed + i`.
pub fn generate_with_audio(
    model: &AudioLlm,
    tokenizer: &Tokenizer,
    examples: &[Example],
    params: &GenerationParams,
    on_text: impl FnMut(usize, &str),
) -> Result<Vec<Generation>> {
    generate_batch(
        model,
        tokenizer,
        examples,
        &per_sequence(params, examples.len()),
        streaming(on_text),
    )
}

/// Like [`generate_with_audio`] with parameters per example (a server batches requests that
/// ask for different things). `on_event(i, piece)` is called for every unfinished sequence at
/// every step, with its new text (possibly empty); returning `false` cancels sequence `i`
/// (its client went away) and frees its place in the batch.
pub fn generate_batch(
    model: &AudioLlm,
    tokenizer: &Tokenizer,
    examples: &[Example],
    params: &[GenerationParams],
    on_event: impl FnMut(usize, &str) -> bool,
) -> Result<Vec<Generation>> {
    generate_batch_cached(model, tokenizer, examples, &[], params, on_event)
}

/// [`generate_batch`] with each example's LAL keys and values taken from `cached` (one per
/// example, from [`AudioLlm::clip_lal`]; empty: computed), as a server with an audio cache runs
/// it.
pub fn generate_batch_cached(
    model: &AudioLlm,
    tokenizer: &Tokenizer,
    examples: &[Example],
    cached: &[Option<&ClipLal>],
    params: &[GenerationParams],
    on_event: impl FnMut(usize, &str) -> bool,
) -> Result<Vec<Generation>> {
    if examples.is_empty() {
        return Ok(vec![]);
    }
    if params.len() != examples.len() {
        return Err(InferError::Invalid(format!(
            "{} examples but {} parameter sets",
            examples.len(),
            params.len()
        )));
    }
    let (mut cache, hidden, lengths) = prefill_examples(model, examples, cached)?;
    decode(
        &model.llm, tokenizer, &mut cache, &hidden, &lengths, params, on_event,
    )
}

/// The prompts of `examples` in one left-padded batch (LAL keys/values from `cached`, one per
/// example, or computed when it is empty): the cache that holds them, the last layer's hidden
/// states, and each prompt's length in rows (padding not counted).
pub(crate) fn prefill_examples(
    model: &AudioLlm,
    examples: &[Example],
    cached: &[Option<&ClipLal>],
) -> Result<(KvCache, Tensor, Vec<usize>)> {
    let mut batch = model
        .prepare_cached(examples, Padding::Left, cached)?
        .detach();
    let hidden = model
        .llm
        .forward_embeds(&batch.embeds, Some(&batch.valid), &mut batch.cache)?;
    let lengths: Vec<usize> = batch
        .valid
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?
        .iter()
        .map(|row| row.iter().filter(|v| **v > 0.5).count())
        .collect();
    Ok((batch.cache, hidden, lengths))
}

/// The decoding loop shared by text and audio prompts and conversations: `hidden` is the
/// prefill's output (its last row gives the first logits) and `cache` holds the prompt. On
/// return, `cache` also holds the generated tokens of each sequence up to (not including) the
/// last one it sampled, or all of them when it stopped at a stop token.
pub(crate) fn decode(
    model: &Llama,
    tokenizer: &Tokenizer,
    cache: &mut KvCache,
    hidden: &Tensor,
    prompt_lengths: &[usize],
    params: &[GenerationParams],
    mut on_event: impl FnMut(usize, &str) -> bool,
) -> Result<Vec<Generation>> {
    let b = prompt_lengths.len();
    let device = model.device();
    let pad = tokenizer.stop_token_ids.first().copied().unwrap_or(0);
    let n = hidden.dims()[1];
    let mut logits = model.logits(&hidden.narrow(1, n - 1, 1)?)?.squeeze(1)?;
    let mut sequences: Vec<SequenceState> = params
        .iter()
        .zip(prompt_lengths)
        .map(|(p, &length)| SequenceState::new(p.clone(), length))
        .collect();
    let longest = params.iter().map(|p| p.max_tokens).max().unwrap_or(0);
    for _ in 0..longest {
        let rows = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(b);
        for (i, sequence) in sequences.iter_mut().enumerate() {
            if sequence.finished().is_some() {
                next.push(pad);
                continue;
            }
            let (token, piece) = sequence.step(&rows[i], tokenizer)?;
            next.push(token.unwrap_or(pad));
            if !on_event(i, &piece) {
                sequence.cancel();
            }
        }
        if sequences.iter().all(|s| s.finished().is_some()) {
            break;
        }
        let step = Tensor::from_vec(next, (b, 1), device)?;
        logits = model.forward(&step, None, cache)?.squeeze(1)?;
    }
    Ok(sequences
        .into_iter()
        .enumerate()
        .map(|(i, mut sequence)| {
            let rest = sequence.rest();
            if sequence.finished().is_none() && !rest.is_empty() {
                on_event(i, &rest);
            }
            sequence.into_generation()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_pad_aligns_prompts_right() {
        let (ids, valid) = left_pad(&[vec![1, 2, 3], vec![4]], 0, &Device::Cpu).unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            vec![vec![1, 2, 3], vec![0, 0, 4]]
        );
        assert_eq!(
            valid.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![0, 0, 1]]
        );
    }
}
