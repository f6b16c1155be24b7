//! `pal.ShardWriter`: the supported way to write a feature shard set (`docs/shards.md`) from
//! Python, on pal's own writer (the bytes `pal encode` writes: checksummed shards, an index
//! written last, `complete` once closed).

use std::path::PathBuf;
use std::sync::Mutex;

use numpy::{PyReadonlyArray2, PyUntypedArrayMethods};
use pal_models::formats::feature_shards::{
    FeatureDtype, ShardEncoder, ShardIndex, ShardRecord, ShardWriter as Writer,
};
use pal_models::text::chat_template::Message;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{bad_argument, OrPy, PalError};

/// Writes records (one `(tokens, dim)` float32 array per encoder, and the conversation) into a
/// shard set folder; `close()` (or leaving a `with` block) completes it.
#[pyclass(module = "pal", name = "ShardWriter")]
pub struct ShardWriter {
    writer: Mutex<Option<Writer>>,
    dims: Vec<usize>,
    names: Vec<String>,
    written: usize,
    path: PathBuf,
}

#[pymethods]
impl ShardWriter {
    /// A writer into `path` for `encoders`: `{name: dim}` (the identity defaults to the name),
    /// or `{name: (identity, dim)}`. `dtype` is the storage type (`f16`, `bf16` or `f32`).
    #[new]
    #[pyo3(signature = (path, encoders, *, dtype = "f16", shard_mb = 256.0, producer = "pal.ShardWriter"))]
    fn new(
        path: PathBuf,
        encoders: &Bound<'_, PyDict>,
        dtype: &str,
        shard_mb: f64,
        producer: &str,
    ) -> PyResult<Self> {
        let dtype: FeatureDtype = dtype
            .parse()
            .or_else(|e: String| bad_argument("dtype", e))?;
        if encoders.is_empty() {
            return bad_argument("encoders", "name at least one encoder: {name: dim}");
        }
        let mut described = vec![];
        for (name, spec) in encoders.iter() {
            let name: String = name.extract()?;
            let (id, dim) = match spec.extract::<usize>() {
                Ok(dim) => (name.clone(), dim),
                Err(_) => spec.extract::<(String, usize)>().or_else(|_| {
                    bad_argument(
                        "encoders",
                        format!("'{name}': give its width, or (identity, width)"),
                    )
                })?,
            };
            if dim == 0 {
                return bad_argument("encoders", format!("'{name}': width 0"));
            }
            described.push(ShardEncoder {
                name,
                id,
                dim,
                config: serde_json::json!({ "producer": producer }),
            });
        }
        let dims = described.iter().map(|e| e.dim).collect();
        let names = described.iter().map(|e| e.name.clone()).collect();
        let index = ShardIndex::new(described, dtype, serde_json::json!({ "writer": producer }));
        let writer = Writer::new(&path, index, (shard_mb * 1048576.0).max(1.0) as usize).or_py()?;
        Ok(Self {
            writer: Mutex::new(Some(writer)),
            dims,
            names,
            written: 0,
            path,
        })
    }

    /// Adds a record: `features` (one `(tokens, dim)` float32 array, or a list of them, one
    /// per encoder in order), its conversation (`messages`, with at least one assistant
    /// message), and optionally the clip's file, origin and duration.
    #[pyo3(signature = (features, messages, *, audio = "", origin = "", seconds = 0.0))]
    fn add(
        &mut self,
        features: &Bound<'_, PyAny>,
        messages: &Bound<'_, PyList>,
        audio: &str,
        origin: &str,
        seconds: f64,
    ) -> PyResult<()> {
        let arrays: Vec<Bound<'_, PyAny>> = match features.cast::<PyList>() {
            Ok(list) => list.iter().collect(),
            Err(_) => vec![features.clone()],
        };
        if arrays.len() != self.dims.len() {
            return bad_argument(
                "features",
                format!(
                    "{} arrays for {} encoders ({})",
                    arrays.len(),
                    self.dims.len(),
                    self.names.join(", ")
                ),
            );
        }
        let mut tensors = Vec::with_capacity(arrays.len());
        for (k, a) in arrays.iter().enumerate() {
            let Ok(array) = a.extract::<PyReadonlyArray2<'_, f32>>() else {
                return bad_argument(
                    "features",
                    format!(
                        "encoder '{}': a 2-D float32 array (tokens, dim)",
                        self.names[k]
                    ),
                );
            };
            let shape = array.shape().to_vec();
            if shape[1] != self.dims[k] || shape[0] == 0 {
                return bad_argument(
                    "features",
                    format!(
                        "encoder '{}': shape {shape:?}, expected (tokens > 0, {})",
                        self.names[k], self.dims[k]
                    ),
                );
            }
            let values: Vec<f32> = match array.as_slice() {
                Ok(s) => s.to_vec(),
                Err(_) => array.as_array().iter().copied().collect(),
            };
            if values.iter().any(|v| !v.is_finite()) {
                return bad_argument(
                    "features",
                    format!("encoder '{}': NaN or infinity", self.names[k]),
                );
            }
            tensors.push(
                candle_core::Tensor::from_vec(
                    values,
                    (shape[0], shape[1]),
                    &candle_core::Device::Cpu,
                )
                .or_py()?,
            );
        }
        let mut parsed = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let role: String = m
                .get_item("role")
                .and_then(|r| r.extract())
                .or_else(|_| bad_argument("messages", format!("[{i}] needs a string 'role'")))?;
            let content: String = m
                .get_item("content")
                .and_then(|c| c.extract())
                .or_else(|_| bad_argument("messages", format!("[{i}] needs a string 'content'")))?;
            parsed.push(Message::new(&role, content));
        }
        if !parsed.iter().any(|m| m.role == "assistant") {
            return bad_argument(
                "messages",
                "a record needs an assistant message (what training learns)",
            );
        }
        let record = ShardRecord {
            audio: audio.to_string(),
            origin: origin.to_string(),
            seconds,
            messages: parsed,
            tokens: vec![],
        };
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| PalError::new_err("the writer failed earlier"))?;
        let Some(writer) = guard.as_mut() else {
            return Err(PalError::new_err(format!(
                "{}: the writer is closed",
                self.path.display()
            )));
        };
        writer.push(self.written, record, &tensors).or_py()?;
        self.written += 1;
        Ok(())
    }

    /// Writes the last shard and marks the set complete; returns its folder.
    fn close(&mut self) -> PyResult<PathBuf> {
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| PalError::new_err("the writer failed earlier"))?;
        if let Some(writer) = guard.take() {
            writer.finish().or_py()?;
        }
        Ok(self.path.clone())
    }

    /// Records written so far.
    #[getter]
    fn records(&self) -> usize {
        self.written
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (kind, _value, _traceback))]
    fn __exit__(
        &mut self,
        kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        // Completed only when the block ended normally; after an exception the set stays
        // incomplete (readers refuse it) instead of looking whole.
        if kind.is_none() {
            self.close()?;
        }
        Ok(false)
    }
}
