//! `pal eval`: generate an answer for every example of a manifest or shard set (batched) and
//! judge it.

use std::path::{Path, PathBuf};

use candle_core::Device;
use pal_data::encoding::{encode_records, EncodeOptions, RecordClips};
use pal_data::{load_manifest, Record};
use pal_infer::{generate_with_audio, FinishReason, GenerationParams};
use pal_models::audio_llm::BuiltModel;
use pal_models::audio_llm::{Example, Padding};
use pal_models::encoders::AudioEncoder;
use pal_models::formats::feature_shards::FeatureShardSet;
use pal_models::text::chat_template::ChatTemplate;
use pal_models::text::chat_template::Message;
use pal_models::text::segments::prompt_segments;
use pal_models::text::Segment;
use serde::Serialize;

use crate::metrics::{
    bleu4, cider_d, closed_answer_correct, is_time_reference, time_answer_correct, word_error_rate,
    TIME_TOLERANCE_SECONDS,
};
use crate::wellformed::WordList;

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
    /// Whether the answer is language ([`crate::wellformed`]); `None` without a word list or
    /// when answers are scored rather than generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub well_formed: Option<bool>,
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
    /// The share of well-formed answers ([`crate::wellformed`]), when judged.
    pub well_formed: Option<f64>,
    /// How answers were judged right: "labels" ([`closed_answer_correct`]), or, where every
    /// reference names a time ("at 42 seconds"), "time within 2 s" ([`time_answer_correct`]).
    pub judged_by: String,
    /// Every example.
    pub items: Vec<EvalItem>,
}

impl EvalReport {
    /// The summary of the report on `data` without its items, as `pal eval --json` writes it
    /// beside them and the Python `evaluate` returns it.
    pub fn summary(&self, data: &EvalData) -> serde_json::Value {
        serde_json::json!({
            "data": data.to_string(), "total": self.total, "correct": self.correct,
            "accuracy": self.accuracy, "wer": self.wer, "bleu4": self.bleu4,
            "cider_d": self.cider_d, "well_formed": self.well_formed, "judged_by": self.judged_by,
        })
    }
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

/// Where the test examples come from.
#[derive(Debug, Clone)]
pub enum EvalData {
    /// A JSONL manifest: clips are decoded and encoded (in parallel batches) first.
    Manifest(PathBuf),
    /// A feature shard set (`pal encode`, `scripts/write_shards.py`): the only way to evaluate
    /// an external encoder.
    Shards(PathBuf),
}

impl std::fmt::Display for EvalData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Manifest(p) | Self::Shards(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Evaluates `built` on a manifest by generation (see [`evaluate_with`]).
pub fn evaluate(
    built: &BuiltModel,
    manifest: &Path,
    batch_size: usize,
    max_tokens: usize,
) -> Result<EvalReport, EvalError> {
    evaluate_with(
        built,
        &EvalData::Manifest(manifest.to_path_buf()),
        batch_size,
        max_tokens,
        Scoring::Generate,
        None,
    )
}

/// A test example: the conversation up to the last assistant message and that message, and
/// per clip its encoder outputs.
struct TestCase {
    origin: String,
    messages: Vec<Message>,
    clips: RecordClips,
}

/// The test cases of a manifest (clips encoded in batches) or of a shard set.
fn test_cases(built: &BuiltModel, data: &EvalData) -> Result<Vec<TestCase>, EvalError> {
    let mut cases = vec![];
    match data {
        EvalData::Manifest(path) => {
            let records = load_manifest(path, false)?.records;
            let records: Vec<&Record> = records.iter().collect();
            // Before any clip is encoded: an example about more clips than the model takes.
            for r in &records {
                if let Some(message) = r.too_many_clips(built.model.max_clips) {
                    return Err(EvalError::Example(r.origin.clone(), message));
                }
            }
            let outputs =
                encode_records(&records, &built.encoders, &EncodeOptions::default(), false)
                    .map_err(|(r, e)| EvalError::Example(records[r].origin.clone(), e))?;
            for (r, clips) in records.iter().zip(outputs) {
                cases.push(TestCase {
                    origin: r.origin.clone(),
                    messages: r.messages.clone(),
                    clips: clips.map_err(|e| EvalError::Example(r.origin.clone(), e))?,
                });
            }
        }
        EvalData::Shards(dir) => {
            let set = FeatureShardSet::open(dir)?;
            let expected: Vec<(String, usize)> =
                built.encoders.iter().map(|e| (e.id(), e.dim())).collect();
            set.check_encoders(&expected)?;
            for s in 0..set.index.shards.len() {
                let shard = set.open_shard(s)?;
                for (i, record) in shard.records().iter().enumerate() {
                    if !record.messages.iter().any(|m| m.role == "assistant") {
                        return Err(EvalError::Example(
                            format!("{} record {i}", shard.path().display()),
                            "no assistant message to compare against".into(),
                        ));
                    }
                    cases.push(TestCase {
                        origin: if record.origin.is_empty() {
                            format!("{} record {i}", shard.path().display())
                        } else {
                            record.origin.clone()
                        },
                        messages: record.messages.clone(),
                        clips: vec![shard.example_audio(i, &Device::Cpu)?],
                    });
                }
            }
        }
    }
    Ok(cases)
}

/// Evaluates `built` on a manifest or shard set: the question is every message before the last
/// assistant message, the reference is that message. Closed answers are judged by
/// [`closed_answer_correct`] with the data's distinct references as the label set, or, where
/// every reference names a time, by [`time_answer_correct`]. With
/// `words`, generated answers are also judged for well-formedness ([`crate::wellformed`]).
pub fn evaluate_with(
    built: &BuiltModel,
    data: &EvalData,
    batch_size: usize,
    max_tokens: usize,
    scoring: Scoring,
    words: Option<&WordList>,
) -> Result<EvalReport, EvalError> {
    let template = ChatTemplate::for_tokenizer(&built.tokenizer)?;
    let mut labels: Vec<String> = vec![];
    let mut prepared: Vec<(Example, EvalItem)> = vec![];
    for case in test_cases(built, data)? {
        let last = case
            .messages
            .iter()
            .rposition(|m| m.role == "assistant")
            .expect("test cases have an assistant turn");
        let reference = case.messages[last].content.clone();
        if !labels.contains(&reference) {
            labels.push(reference.clone());
        }
        let segments = prompt_segments(&template, &built.tokenizer, &case.messages[..last])
            .map_err(|e| EvalError::Example(case.origin.clone(), e.to_string()))?;
        let question = case.messages[..last]
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join(" / ");
        prepared.push((
            Example {
                segments,
                clips: case.clips,
            },
            EvalItem {
                origin: case.origin,
                question,
                reference,
                answer: String::new(),
                correct: false,
                well_formed: None,
            },
        ));
    }
    let params = GenerationParams {
        max_tokens,
        ..Default::default()
    };
    let by_time = !labels.is_empty() && labels.iter().all(|l| is_time_reference(l));
    let judge = |answer: &str, reference: &str| match by_time {
        true => time_answer_correct(answer, reference),
        false => closed_answer_correct(answer, reference, &labels),
    };
    let mut items = vec![];
    if scoring == Scoring::LogLikelihood {
        // Each label as the answer, ended by the end-of-turn token: the most likely wins.
        let label_segments: Vec<Segment> = labels
            .iter()
            .map(|l| {
                let mut ids = built.tokenizer.encode(l)?;
                ids.extend(built.tokenizer.answer_end_id());
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
            item.correct = judge(&item.answer, &item.reference);
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
            item.correct = judge(&answer.text, &item.reference);
            let ended = answer.finish_reason == FinishReason::Stop;
            item.well_formed = words.map(|w| w.is_well_formed(&answer.text, ended));
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
    let judged: Vec<bool> = items.iter().filter_map(|i| i.well_formed).collect();
    let well_formed = (!judged.is_empty())
        .then(|| judged.iter().filter(|w| **w).count() as f64 / judged.len() as f64);
    Ok(EvalReport {
        well_formed,
        total: items.len(),
        correct,
        accuracy: correct as f64 / items.len().max(1) as f64,
        wer,
        bleu4: bleu,
        cider_d: cider,
        judged_by: match by_time {
            true => format!("time within {TIME_TOLERANCE_SECONDS} s"),
            false => "labels".to_string(),
        },
        items,
    })
}
