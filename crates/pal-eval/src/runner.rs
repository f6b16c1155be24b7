//! `pal eval`: generate an answer for every manifest example (batched) and judge it.

use std::path::Path;

use candle_core::Tensor;
use pal_data::load_manifest;
use pal_infer::{generate_with_audio, GenerationParams};
use pal_models::audio_llm::BuiltModel;
use pal_models::audio_llm::{Example, Padding};
use pal_models::text::chat_template::ChatTemplate;
use pal_models::text::segments::prompt_segments;
use pal_models::text::Segment;
use serde::Serialize;

use crate::metrics::{bleu4, cider_d, closed_answer_correct, word_error_rate};

/// One judged example.
#[derive(Debug, Clone, Serialize)]
pub struct EvalItem {
    /// `manifest:line`.
    pub origin: String,
    /// The question.
    pub question: String,
    /// The reference answer.
    pub reference: String,
    /// The model's answer.
    pub answer: String,
    /// Whether it is judged correct.
    pub correct: bool,
}

/// The result of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Examples judged.
    pub total: usize,
    /// Correct answers.
    pub correct: usize,
    /// `correct / total`.
    pub accuracy: f64,
    /// Corpus word error rate of the answers against the references (transcription tasks).
    pub wer: f64,
    /// Corpus BLEU-4 in [0, 1] (captioning tasks).
    pub bleu4: f64,
    /// Corpus CIDEr-D (captioning tasks).
    pub cider_d: f64,
    /// Every example.
    pub items: Vec<EvalItem>,
}

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Manifest problem.
    #[error(transparent)]
    Manifest(#[from] pal_data::ManifestError),
    /// Example problem, named `manifest:line`.
    #[error("{0}: {1}")]
    Example(String, String),
    /// Model or generation problem.
    #[error(transparent)]
    Infer(#[from] pal_infer::InferError),
    /// Model problem.
    #[error(transparent)]
    Model(#[from] pal_models::ModelError),
}

/// How closed answers are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// Generate freely, then judge the text.
    Generate,
    /// Score every label of the task (the manifest's distinct references) by the model's
    /// log-likelihood and answer with the most likely one.
    LogLikelihood,
}

/// Evaluates `built` on a manifest by generation (see [`evaluate_with`]).
pub fn evaluate(
    built: &BuiltModel,
    manifest: &Path,
    batch_size: usize,
    max_tokens: usize,
) -> Result<EvalReport, EvalError> {
    evaluate_with(built, manifest, batch_size, max_tokens, Scoring::Generate)
}

/// Evaluates `built` on a manifest: the question is every message before the last assistant
/// message, the reference is that message. Closed answers are judged by
/// [`closed_answer_correct`] with the manifest's distinct references as the label set.
pub fn evaluate_with(
    built: &BuiltModel,
    manifest: &Path,
    batch_size: usize,
    max_tokens: usize,
    scoring: Scoring,
) -> Result<EvalReport, EvalError> {
    let records = load_manifest(manifest, false)?.records;
    let template = ChatTemplate::for_tokenizer(&built.tokenizer)?;
    let mut labels: Vec<String> = vec![];
    let mut prepared: Vec<(Example, EvalItem)> = vec![];
    for r in &records {
        let last = r
            .messages
            .iter()
            .rposition(|m| m.role == "assistant")
            .expect("manifest lines have an assistant turn");
        let reference = r.messages[last].content.clone();
        if !labels.contains(&reference) {
            labels.push(reference.clone());
        }
        let fail = |e: String| EvalError::Example(r.origin.clone(), e);
        let audio = pal_audio::load_audio(&r.audio)
            .and_then(|a| a.to_16k(&r.audio.display().to_string()))
            .map_err(|e| fail(e.to_string()))?;
        let outputs: Vec<Tensor> = built
            .encode_clip(&audio.samples)
            .map_err(|e| fail(e.to_string()))?;
        let segments = prompt_segments(&template, &built.tokenizer, &r.messages[..last])
            .map_err(|e| fail(e.to_string()))?;
        let question = r.messages[..last]
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join(" / ");
        prepared.push((
            Example {
                segments,
                audio: outputs,
            },
            EvalItem {
                origin: r.origin.clone(),
                question,
                reference,
                answer: String::new(),
                correct: false,
            },
        ));
    }
    let params = GenerationParams {
        max_tokens,
        ..Default::default()
    };
    let mut items = vec![];
    if scoring == Scoring::LogLikelihood {
        // Each label as the answer, ended by the end-of-turn token: the most likely wins.
        let label_segments: Vec<Segment> = labels
            .iter()
            .map(|l| {
                let mut ids = built.tokenizer.encode(l)?;
                ids.extend(built.tokenizer.stop_token_ids.first().copied());
                Ok(Segment::Text { ids, trained: true })
            })
            .collect::<Result<_, pal_models::ModelError>>()?;
        for (example, item) in &prepared {
            let candidates: Vec<Example> = label_segments
                .iter()
                .map(|seg| {
                    let mut e = example.clone();
                    e.segments.push(seg.clone());
                    e
                })
                .collect();
            let mut scores = vec![];
            for chunk in candidates.chunks(batch_size.max(1)) {
                let mut batch = built.model.prepare(chunk, Padding::Right)?.detach();
                scores.extend(built.model.target_log_probs(&mut batch)?);
            }
            let best = scores
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0);
            let mut item = item.clone();
            item.answer = labels[best].clone();
            item.correct = closed_answer_correct(&item.answer, &item.reference, &labels);
            items.push(item);
        }
    }
    let generating = scoring == Scoring::Generate;
    for chunk in prepared.chunks(batch_size.max(1)).filter(|_| generating) {
        let examples: Vec<Example> = chunk.iter().map(|c| c.0.clone()).collect();
        let answers = generate_with_audio(
            &built.model,
            &built.tokenizer,
            &examples,
            &params,
            |_, _| {},
        )?;
        for ((_, item), answer) in chunk.iter().zip(answers) {
            let mut item = item.clone();
            item.correct = closed_answer_correct(&answer.text, &item.reference, &labels);
            item.answer = answer.text;
            items.push(item);
        }
    }
    let correct = items.iter().filter(|i| i.correct).count();
    let pairs: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.reference.as_str(), i.answer.as_str()))
        .collect();
    let captions: Vec<(&str, Vec<&str>)> = items
        .iter()
        .map(|i| (i.answer.as_str(), vec![i.reference.as_str()]))
        .collect();
    let (wer, bleu, cider) = (
        word_error_rate(&pairs),
        bleu4(&captions),
        cider_d(&captions).0,
    );
    Ok(EvalReport {
        total: items.len(),
        correct,
        accuracy: correct as f64 / items.len().max(1) as f64,
        wer,
        bleu4: bleu,
        cider_d: cider,
        items,
    })
}
