//! `pal.AudioLlm` (a trained run: ask, ask in batches, chat, transcribe) and
//! `pal.Conversation`. Every call releases the GIL while it computes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use pal_infer::ask::Question;
use pal_infer::{ConversationState, GenerationParams};
use pal_models::audio_llm::BuiltModel;
use pal_models::encoders::whisper::{Whisper, WhisperTokenizer};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::audio::{audio_input, to_16k};
use crate::errors::{bad_argument, OrPy, PalError};

/// The generation settings every call takes.
fn params(
    max_tokens: usize,
    temperature: f64,
    top_p: f64,
    seed: u64,
    stop: Option<Vec<String>>,
) -> PyResult<GenerationParams> {
    if max_tokens == 0 {
        return bad_argument("max_tokens", "must be at least 1");
    }
    if !(0.0..=2.0).contains(&temperature) {
        return bad_argument(
            "temperature",
            format!("must be in [0, 2], got {temperature}"),
        );
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return bad_argument("top_p", format!("must be in (0, 1], got {top_p}"));
    }
    Ok(GenerationParams {
        max_tokens,
        temperature,
        top_p,
        seed,
        stop: stop.unwrap_or_default(),
    })
}

/// A trained audio-LLM (a run folder: `model.toml` and `adapter.safetensors`), loaded once.
#[pyclass(frozen, module = "pal", name = "AudioLlm")]
pub struct AudioLlm {
    built: Arc<BuiltModel>,
    run: PathBuf,
    transcriber: OnceLock<Option<Arc<(Whisper, WhisperTokenizer)>>>,
}

#[pymethods]
impl AudioLlm {
    /// Loads a run folder (or the shipped adapter's folder).
    #[staticmethod]
    #[pyo3(signature = (run, *, device = "cpu", dtype = "auto", weights = "auto"))]
    fn load(
        py: Python<'_>,
        run: PathBuf,
        device: &str,
        dtype: &str,
        weights: &str,
    ) -> PyResult<Self> {
        let device: pal_nn::ComputeDevice = device
            .parse()
            .or_else(|e: String| bad_argument("device", e))?;
        let dtype: pal_nn::ComputeDtype = dtype
            .parse()
            .or_else(|e: String| bad_argument("dtype", e))?;
        let weights: pal_models::WeightForm = weights
            .parse()
            .or_else(|e: String| bad_argument("weights", e))?;
        let dir = if run.is_file() {
            run.parent().map(PathBuf::from).unwrap_or_default()
        } else {
            run.clone()
        };
        if !dir.exists() {
            return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                "{}: no such run folder",
                dir.display()
            )));
        }
        let built = py
            .detach(|| {
                pal_models::audio_llm::build::load_run_for_inference(&dir, weights, device, dtype)
            })
            .or_py()?;
        Ok(Self {
            built: Arc::new(built),
            run: dir,
            transcriber: OnceLock::new(),
        })
    }

    /// The most clips one question may be about (the model config's `max_clips`).
    #[getter]
    fn max_clips(&self) -> usize {
        self.built.model.max_clips
    }

    /// The run folder.
    #[getter]
    fn run(&self) -> PathBuf {
        self.run.clone()
    }

    /// The encoders' identities, in order.
    #[getter]
    fn encoders(&self) -> Vec<String> {
        self.built.encoders.iter().map(|e| e.id()).collect()
    }

    fn __repr__(&self) -> String {
        format!("AudioLlm('{}')", self.run.display())
    }

    /// The answer to `question` about `audio` (a path, bytes, a float32 array with
    /// `sample_rate`, or a list of them for a model that takes several clips).
    #[pyo3(signature = (audio, question, *, sample_rate = None, max_tokens = 64, temperature = 0.0, top_p = 1.0, seed = 0, stop = None))]
    #[allow(clippy::too_many_arguments)]
    fn ask(
        &self,
        py: Python<'_>,
        audio: &Bound<'_, PyAny>,
        question: &str,
        sample_rate: Option<u32>,
        max_tokens: usize,
        temperature: f64,
        top_p: f64,
        seed: u64,
        stop: Option<Vec<String>>,
    ) -> PyResult<String> {
        let params = params(max_tokens, temperature, top_p, seed, stop)?;
        let inputs = if let Ok(list) = audio.cast::<PyList>() {
            list.iter()
                .enumerate()
                .map(|(i, a)| audio_input(&a, sample_rate, &format!("audio[{i}]")))
                .collect::<PyResult<Vec<_>>>()?
        } else {
            vec![audio_input(audio, sample_rate, "audio")?]
        };
        let built = self.built.clone();
        let question = question.to_string();
        py.detach(move || -> anyhow::Result<String> {
            let clips = inputs
                .iter()
                .map(to_16k)
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(pal_infer::ask::ask(&built, &clips, &question, &params, |_| {})?.text)
        })
        .or_py()
    }

    /// The answers to many questions, one clip each, in order: clips decoded on worker threads
    /// and encoded in length-sorted batches, answers generated `batch_size` at a time (the path
    /// `pal eval` takes). `questions` is one question for every clip, or a list. A clip that
    /// cannot be read raises, naming it. Ctrl-C stops between batches.
    #[pyo3(signature = (audios, questions, *, sample_rate = None, max_tokens = 64, temperature = 0.0, top_p = 1.0, seed = 0, batch_size = 8))]
    #[allow(clippy::too_many_arguments)]
    fn ask_batch(
        &self,
        py: Python<'_>,
        audios: &Bound<'_, PyAny>,
        questions: &Bound<'_, PyAny>,
        sample_rate: Option<u32>,
        max_tokens: usize,
        temperature: f64,
        top_p: f64,
        seed: u64,
        batch_size: usize,
    ) -> PyResult<Vec<String>> {
        let params = params(max_tokens, temperature, top_p, seed, None)?;
        let audios: Vec<Bound<'_, PyAny>> = audios.try_iter()?.collect::<PyResult<_>>()?;
        let texts: Vec<String> = if let Ok(q) = questions.extract::<String>() {
            vec![q; audios.len()]
        } else {
            questions.extract()?
        };
        if texts.len() != audios.len() {
            return bad_argument(
                "questions",
                format!("{} questions for {} clips", texts.len(), audios.len()),
            );
        }
        let mut batch = Vec::with_capacity(audios.len());
        for (i, (a, text)) in audios.iter().zip(texts).enumerate() {
            let clip = audio_input(a, sample_rate, &format!("audios[{i}]"))?;
            batch.push(Question { clip, text });
        }
        let built = self.built.clone();
        let answers = py
            .detach(move || {
                pal_infer::ask::ask_batch(&built, &batch, &params, batch_size, || {
                    Python::attach(|py| py.check_signals()).is_ok()
                })
            })
            .or_py()?;
        py.check_signals()?;
        answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| match a {
                Ok(g) => Ok(g.text),
                Err(e) => Err(crate::errors::AudioError::new_err(format!(
                    "audios[{i}]: {e}"
                ))),
            })
            .collect()
    }

    /// A conversation about `audio` (encoded once; each turn runs only its new tokens).
    #[pyo3(signature = (audio, *, sample_rate = None, system = None))]
    fn chat(
        slf: &Bound<'_, Self>,
        audio: &Bound<'_, PyAny>,
        sample_rate: Option<u32>,
        system: Option<String>,
    ) -> PyResult<Conversation> {
        let input = audio_input(audio, sample_rate, "audio")?;
        let built = slf.get().built.clone();
        let state = slf
            .py()
            .detach(move || -> anyhow::Result<ConversationState> {
                let samples = to_16k(&input)?;
                // Encoded as `ask` encodes one clip (a long one window by window).
                let (audio, lal) = pal_infer::ask::encode_samples(&built, &samples)?;
                let state =
                    ConversationState::from_encoded(&built.model, &built.tokenizer, audio, lal)?;
                Ok(match system {
                    Some(s) => state.with_system(&s),
                    None => state,
                })
            })
            .or_py()?;
        Ok(Conversation {
            model: slf.clone().unbind(),
            state: Mutex::new(state),
        })
    }

    /// Whisper's transcript of `audio`, from the run's Whisper encoder and its decoder.
    #[pyo3(signature = (audio, *, sample_rate = None))]
    fn transcribe(
        &self,
        py: Python<'_>,
        audio: &Bound<'_, PyAny>,
        sample_rate: Option<u32>,
    ) -> PyResult<String> {
        let input = audio_input(audio, sample_rate, "audio")?;
        let run = self.run.clone();
        let cell = &self.transcriber;
        py.detach(|| -> anyhow::Result<String> {
            let whisper = cell
                .get_or_init(|| {
                    pal_models::audio_llm::build::run_transcriber(
                        &run,
                        candle_core::DType::F32,
                        &candle_core::Device::Cpu,
                    )
                    .ok()
                    .flatten()
                    .map(Arc::new)
                })
                .clone()
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: the run's encoder is not a Whisper with its decoder, so it cannot transcribe",
                        run.display()
                    )
                })?;
            let samples = to_16k(&input)?;
            Ok(pal_infer::transcribe(&whisper.0, &whisper.1, &samples)?)
        })
        .or_py()
    }
}

/// A conversation about one clip with an [`AudioLlm`].
#[pyclass(frozen, module = "pal", name = "Conversation")]
pub struct Conversation {
    model: Py<AudioLlm>,
    state: Mutex<ConversationState>,
}

#[pymethods]
impl Conversation {
    /// Says `text` and returns the answer, which becomes part of the conversation.
    #[pyo3(signature = (text, *, max_tokens = 64, temperature = 0.0, top_p = 1.0, seed = 0))]
    fn say(
        &self,
        py: Python<'_>,
        text: &str,
        max_tokens: usize,
        temperature: f64,
        top_p: f64,
        seed: u64,
    ) -> PyResult<String> {
        let params = params(max_tokens, temperature, top_p, seed, None)?;
        let built = self.model.get().built.clone();
        let text = text.to_string();
        let state = &self.state;
        py.detach(|| -> anyhow::Result<String> {
            let mut state = state
                .lock()
                .map_err(|_| anyhow::anyhow!("the conversation failed earlier"))?;
            Ok(state
                .say(&built.model, &built.tokenizer, &text, &params, |_| {})?
                .text)
        })
        .or_py()
    }

    /// The messages so far, as `{"role": ..., "content": ...}` dicts.
    #[getter]
    fn messages(&self) -> PyResult<Vec<(String, String)>> {
        let state = self
            .state
            .lock()
            .map_err(|_| PalError::new_err("the conversation failed earlier"))?;
        Ok(state
            .messages
            .iter()
            .map(|m| (m.role.clone(), m.content.clone()))
            .collect())
    }
}
