//! What `pal.probe` (in `python/pal/probe.py`) needs from Rust: the manifests a suite reads,
//! their records, clips decoded at an encoder's sample rate, the suite derived for an external
//! encoder, the grid run (cells as child processes of `python -m pal`), and the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::errors::OrPy;

/// The manifests a probe suite reads (its curriculum's and its splits'), absolute.
#[pyfunction]
pub fn suite_manifests(suite: PathBuf) -> PyResult<Vec<PathBuf>> {
    pal_eval::probe_external::suite_manifests(&suite).or_py()
}

/// A manifest's records: `(audio path, messages, origin)` each (an external encoder's shards
/// hold one clip per example: a record about several is an error naming its line).
#[pyfunction]
pub fn manifest_records(py: Python<'_>, manifest: PathBuf) -> PyResult<Py<PyList>> {
    let records = py
        .detach(|| pal_data::load_manifest(&manifest, false))
        .or_py()?
        .records;
    let out = PyList::empty(py);
    for mut r in records {
        if r.clips.len() != 1 {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "{}: {} clips; feature shards hold one clip per example",
                r.origin,
                r.clips.len()
            )));
        }
        let messages: Vec<(String, String)> = r
            .messages
            .into_iter()
            .map(|m| (m.role, m.content))
            .collect();
        out.append((r.clips.remove(0), messages, r.origin))?;
    }
    Ok(out.unbind())
}

/// The clip at `path`, mono float32 at `sample_rate` Hz.
#[pyfunction]
#[pyo3(signature = (path, sample_rate = 16000))]
pub fn load_audio(py: Python<'_>, path: PathBuf, sample_rate: u32) -> PyResult<Py<PyAny>> {
    let samples = py
        .detach(|| -> anyhow::Result<Vec<f32>> {
            let audio = pal_audio::load_audio(&path)?;
            let origin = path.display().to_string();
            Ok(pal_audio::resample(
                &audio.samples,
                audio.sample_rate,
                sample_rate,
                &origin,
            )?)
        })
        .or_py()?;
    Ok(samples.into_pyarray(py).into_any().unbind())
}

/// Writes the suite that probes the external encoder `name` from `sets` (manifest path to its
/// shard set) into `folder`; returns its path.
#[pyfunction]
pub fn external_suite(
    suite: PathBuf,
    name: &str,
    sets: BTreeMap<PathBuf, PathBuf>,
    folder: PathBuf,
) -> PyResult<PathBuf> {
    pal_eval::probe_external::external_suite(&suite, name, &sets, &folder).or_py()
}

/// Runs the suite's cells not done yet (each trained and evaluated by `python -m pal` child
/// processes), calling `progress(done, total, label)`; returns the results folder and every
/// cell's result (dicts).
#[pyfunction]
#[pyo3(signature = (suite, progress = None))]
pub fn probe_run(
    py: Python<'_>,
    suite: PathBuf,
    progress: Option<Py<PyAny>>,
) -> PyResult<(PathBuf, Py<PyAny>)> {
    let python: PathBuf = py.import("sys")?.getattr("executable")?.extract()?;
    let pal = move |args: &[String]| {
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "pal"]).args(args);
        cmd
    };
    let (out, results) = py
        .detach(|| {
            pal_eval::probe::run(&suite, &pal, |done, total, cell| {
                if let Some(f) = &progress {
                    let label = format!("{} {:?} seed {}", cell.row, cell.mode, cell.seed);
                    Python::attach(|py| {
                        let _ = f.bind(py).call1((done, total, label));
                    });
                }
            })
        })
        .or_py()?;
    py.check_signals()?;
    Ok((out, pythonize::pythonize(py, &results)?.unbind()))
}

/// Writes `probe.json`, `probe.md` and `probe.png` for `cells` (results of [`probe_run`]) into
/// `out`; returns the markdown page.
#[pyfunction]
pub fn probe_report(out: PathBuf, title: &str, cells: &Bound<'_, PyAny>) -> PyResult<String> {
    let cells: Vec<pal_eval::probe::CellResult> = pythonize::depythonize(cells)?;
    let (_, md) = pal_eval::probe_report::write_report(&out, title, &cells).or_py()?;
    Ok(md)
}
