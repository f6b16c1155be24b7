//! Questions about clips, as `pal ask` and the Python package's `AudioLlm.ask`/`ask_batch` put
//! them: one question about one clip (or several, for a model whose config allows them), and
//! many one-clip questions at once, their clips decoded on worker threads and encoded in
//! length-sorted batches, their answers generated in batches ([`pal_data::encoding`], the path
//! `pal eval` takes).

use pal_data::encoding::{encode_in_order, ClipSource, EncodeOptions};
use pal_models::audio_llm::{BuiltModel, Example};
use pal_models::text::segments::{prompt_segments, AUDIO_MARKER};
use pal_models::text::Segment;

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
pub fn ask(
    built: &BuiltModel,
    clips: &[Vec<f32>],
    question: &str,
    params: &GenerationParams,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
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
    let mut generated = generate_batch(
        &built.model,
        &built.tokenizer,
        std::slice::from_ref(&example),
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
