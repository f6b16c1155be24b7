//! Questions about clips, as `pal ask` and the Python package's `AudioLlm.ask`/`ask_batch` put
//! them: one question about one clip (or several, for a model whose config allows them), and
//! many one-clip questions at once, their clips decoded on worker threads and encoded in
//! length-sorted batches, their answers generated in batches ([`pal_data::encoding`], the path
//! `pal eval` takes).

use std::path::Path;

use candle_core::Tensor;
use pal_data::encoding::{encode_in_order, ClipSource, EncodeOptions};
use pal_models::audio_llm::{BuiltModel, ClipLal, Example, GrowingClip};
use pal_models::text::segments::{prompt_segments, AUDIO_MARKER};
use pal_models::text::Segment;

use crate::generate::generate_batch_cached;
use crate::{
    generate_batch, ChatTemplate, Generation, GenerationParams, InferError, Message, Result,
};

/// The prompt of `question` about `clips` clips: one clip goes where training put it (the start
/// of the user message), several are placed in order before the question.
pub fn question_segments(built: &BuiltModel, question: &str, clips: usize) -> Result<Vec<Segment>> {
    if clips > built.model.max_clips {
        return Err(InferError::Invalid(format!(
            "{clips} clips given; this model takes at most {} (max_clips in its model config)",
            built.model.max_clips
        )));
    }
    let text = match clips {
        1 => question.to_string(),
        n => format!("{}{question}", format!("{AUDIO_MARKER}\n").repeat(n)),
    };
    let template = ChatTemplate::for_tokenizer(&built.tokenizer)?;
    Ok(prompt_segments(
        &template,
        &built.tokenizer,
        &[Message::new("user", text)],
    )?)
}

/// The answer to `question` about `clips` (16 kHz mono each), its text streamed to `on_text`.
/// One clip is encoded window by window ([`encode_growing`]) where the model allows it;
/// several go through the encoders together, their LAL keys computed in the prefill (each
/// after the clips before it).
pub fn ask(
    built: &BuiltModel,
    clips: &[Vec<f32>],
    question: &str,
    params: &GenerationParams,
    on_text: impl FnMut(&str),
) -> Result<Generation> {
    if let [clip] = clips {
        let (audio, lal) = encode_samples(built, clip)
            .map_err(|e| InferError::Invalid(format!("encoding clip 0: {e}")))?;
        return ask_encoded(built, audio, &lal, question, params, on_text);
    }
    let segments = question_segments(built, question, clips.len())?;
    let mut audio = Vec::with_capacity(clips.len());
    for (i, samples) in clips.iter().enumerate() {
        audio.push(
            built
                .encode_clip(samples)
                .map_err(|e| InferError::Invalid(format!("encoding clip {i}: {e}")))?,
        );
    }
    let example = Example {
        segments,
        clips: audio,
    };
    answer(built, example, &[], params, on_text)
}

/// Whether the model's clips can be encoded window by window (not when several LAL encoders'
/// keys take positions: see [`GrowingClip::new`]).
fn grows(built: &BuiltModel) -> bool {
    GrowingClip::new(&built.model).is_ok()
}

/// One clip's samples (16 kHz mono) encoded as [`ask_encoded`] takes them: window by window
/// ([`GrowingClip::encode_whole`]), or, for a model whose clips cannot grow, at once (up to the
/// model's length and memory limits either way, [`pal_models::audio_llm::limits`]).
pub fn encode_samples(built: &BuiltModel, samples: &[f32]) -> Result<(Vec<Tensor>, ClipLal)> {
    if !grows(built) {
        GrowingClip::check_length(&built.model, &built.encoders, samples.len())?;
        let outputs = built.encode_clip(samples)?;
        let lal = built.model.clip_lal(&outputs)?;
        return Ok((outputs, lal));
    }
    Ok(GrowingClip::encode_whole(
        &built.model,
        &built.encoders,
        samples,
    )?)
}

/// The audio file at `path` encoded as [`ask_encoded`] takes it: decoded and encoded window by
/// window as it is read ([`encode_growing`]), or, for a model whose clips cannot grow, decoded
/// whole and encoded at once (up to the model's length and memory limits either way). Errors
/// name the file.
pub fn encode_file(built: &BuiltModel, path: &Path) -> Result<(Vec<Tensor>, ClipLal)> {
    let named = |e: String| InferError::Invalid(format!("{}: {e}", path.display()));
    if !grows(built) {
        let audio = pal_audio::load_audio(path)
            .and_then(|a| a.to_16k(&path.display().to_string()))
            .map_err(|e| InferError::Invalid(e.to_string()))?;
        return encode_samples(built, &audio.samples).map_err(|e| named(e.to_string()));
    }
    let mut stream = pal_audio::Stream16k::from_path(path, None)
        .map_err(|e| InferError::Invalid(e.to_string()))?;
    let pieces = std::iter::from_fn(|| stream.next_chunk().transpose())
        .map(|p| p.map_err(|e| InferError::Invalid(e.to_string())));
    encode_growing(built, pieces).map_err(|e| named(e.to_string()))
}

/// One clip's audio encoded window by window as it is read ([`GrowingClip`]): each window of
/// the encoders (30 s for Whisper) encoded alone as soon as it is whole, its LAL keys and values
/// computed then and kept (packed in bf16 where the model attends so), so that a recording of
/// any length is held as its keys and encoder outputs, never as its samples or all its
/// activations at once. `pieces` gives the clip's 16 kHz samples in order, in pieces of any
/// size (a decoder's packets). Returns each encoder's outputs and the clip's LAL keys and
/// values. Refused, before any of it is encoded, past the model's length or memory limit
/// (`max_audio_seconds`, `max_audio_mib`; without them the encoders' `max_windows`).
pub fn encode_growing(
    built: &BuiltModel,
    pieces: impl IntoIterator<Item = Result<Vec<f32>>>,
) -> Result<(Vec<Tensor>, ClipLal)> {
    let window = GrowingClip::window_samples(&built.encoders);
    let mut clip = GrowingClip::new(&built.model)?;
    let mut pending: Vec<f32> = Vec::with_capacity(2 * window);
    let mut total = 0usize;
    for piece in pieces {
        let piece = piece?;
        total += piece.len();
        // Refused as soon as the stream passes the limit, before more of it is read.
        GrowingClip::check_length(&built.model, &built.encoders, total)
            .map_err(|e| InferError::Invalid(e.to_string()))?;
        pending.extend_from_slice(&piece);
        let whole = pending.len() / window * window;
        for w in pending[..whole].chunks(window) {
            clip.push(&built.model, &built.encoders, w)?;
        }
        pending.drain(..whole);
    }
    Ok(clip.with_tail(&built.model, &built.encoders, &pending)?)
}

/// The answer to `question` about one clip already encoded (as [`encode_growing`] returns it),
/// its text streamed to `on_text`.
pub fn ask_encoded(
    built: &BuiltModel,
    audio: Vec<Tensor>,
    lal: &ClipLal,
    question: &str,
    params: &GenerationParams,
    on_text: impl FnMut(&str),
) -> Result<Generation> {
    let segments = question_segments(built, question, 1)?;
    answer(
        built,
        Example::one_clip(segments, audio),
        &[Some(lal)],
        params,
        on_text,
    )
}

/// Generates the answer to `example` (LAL keys from `cached`, or computed): refused, naming
/// both figures, when its audio, prompt and `max_tokens` need more positions than the model
/// has (PLITS puts every audio token in the sequence).
fn answer(
    built: &BuiltModel,
    example: Example,
    cached: &[Option<&ClipLal>],
    params: &GenerationParams,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let needed = built.model.prompt_positions(&example)? + params.max_tokens;
    let positions = built.model.llm.rope.len();
    if needed > positions {
        return Err(InferError::Invalid(format!(
            "the audio, the prompt and max_tokens take {needed} positions; the model has {positions} (send a shorter clip, or use a LAL model whose audio keys take no positions: lal.rope = \"none\")"
        )));
    }
    let mut generated = generate_batch_cached(
        &built.model,
        &built.tokenizer,
        std::slice::from_ref(&example),
        cached,
        std::slice::from_ref(params),
        |_, piece| {
            if !piece.is_empty() {
                on_text(piece);
            }
            true
        },
    )?;
    Ok(generated.remove(0))
}

/// One question about one clip, for [`ask_batch`].
pub struct Question<S> {
    /// The clip.
    pub clip: S,
    /// The question.
    pub text: String,
}

/// The answers to many one-clip questions, in order: clips decoded on worker threads and
/// encoded in length-sorted batches, then answered `batch_size` at a time. A clip that cannot
/// be read fails its question alone (`Err` with a message naming it). `keep_going` is asked
/// before each batch of answers; `false` stops (answers so far are returned, the rest are
/// `Err("stopped")`).
pub fn ask_batch<S: ClipSource>(
    built: &BuiltModel,
    questions: &[Question<S>],
    params: &GenerationParams,
    batch_size: usize,
    mut keep_going: impl FnMut() -> bool,
) -> Result<Vec<std::result::Result<Generation, String>>> {
    let clips: Vec<&S> = questions.iter().map(|q| &q.clip).collect();
    let mut outcomes: Vec<Option<std::result::Result<Generation, String>>> =
        (0..questions.len()).map(|_| None).collect();
    let mut ready: Vec<(usize, Example)> = vec![];
    encode_in_order(
        &clips,
        0,
        &built.encoders,
        &EncodeOptions::default(),
        |i, clip| {
            match clip {
                Ok(clip) => {
                    let segments = question_segments(built, &questions[i].text, 1)?;
                    ready.push((i, Example::one_clip(segments, clip.audio)));
                }
                Err(e) => outcomes[i] = Some(Err(e)),
            }
            Ok::<(), InferError>(())
        },
    )?;
    for chunk in ready.chunks(batch_size.max(1)) {
        if !keep_going() {
            break;
        }
        let examples: Vec<Example> = chunk.iter().map(|(_, e)| e.clone()).collect();
        let per_example = vec![params.clone(); examples.len()];
        let answers = generate_batch(
            &built.model,
            &built.tokenizer,
            &examples,
            &per_example,
            |_, _| true,
        )?;
        for ((i, _), answer) in chunk.iter().zip(answers) {
            outcomes[*i] = Some(Ok(answer));
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("stopped".into())))
        .collect())
}
