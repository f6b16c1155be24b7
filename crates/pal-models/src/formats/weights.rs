//! Tensors by their Hugging Face names, from safetensors files (single or sharded) or from GGUF
//! (dequantized, renamed to Hugging Face names by [`crate::formats::gguf`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor};
use pal_nn::Linear;

use crate::error::{ModelError, Result};

/// A set of named tensors and the file(s) they came from (for error messages).
pub struct Weights {
    source: Source,
    dtype: DType,
    device: Device,
    /// Added to every RMSNorm weight (`*norm.weight`) as it is read: see
    /// [`Weights::with_norm_shift`].
    norm_shift: f64,
}

enum Source {
    /// Memory-mapped safetensors files, with the file of each tensor.
    Safetensors {
        files: Vec<(PathBuf, MmapedSafetensors)>,
        file_of: HashMap<String, usize>,
    },
    /// Tensors already in memory (from GGUF, or built in code).
    Memory {
        path: PathBuf,
        tensors: HashMap<String, Tensor>,
    },
}

impl Weights {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn from_hf_folder(folder: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let index = folder.join("model.safetensors.index.json");
        let single = folder.join("model.safetensors");
        let paths: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::format(&index, e))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::format(&index, "no 'weight_map' object"))?;
            let mut shards: Vec<PathBuf> = map
                .values()
                .filter_map(|v| v.as_str())
                .map(|f| folder.join(f))
                .collect();
            shards.sort();
            shards.dedup();
            shards
        } else if single.exists() {
            vec![single]
        } else {
            return Err(ModelError::format(
                folder,
                "no model.safetensors or model.safetensors.index.json in this folder",
            ));
        };
        Self::from_safetensors(&paths, dtype, device)
    }

    /// Opens the given safetensors files. A missing or truncated file is an error naming it.
    pub fn from_safetensors(paths: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        let mut files = Vec::new();
        let mut file_of = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            if !path.exists() {
                return Err(ModelError::NotFound(path.clone()));
            }
            // SAFETY: the file is mapped read-only; pal never writes to weight files it has open.
            let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
                ModelError::format(path, format!("not a valid safetensors file: {e}"))
            })?;
            for (name, _) in st.tensors() {
                file_of.insert(name, i);
            }
            files.push((path.clone(), st));
        }
        Ok(Self {
            source: Source::Safetensors { files, file_of },
            dtype,
            device: device.clone(),
            norm_shift: 0.0,
        })
    }

    /// Wraps tensors that are already in memory; `path` names their origin in errors.
    pub fn from_tensors(
        path: impl Into<PathBuf>,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            source: Source::Memory {
                path: path.into(),
                tensors,
            },
            dtype,
            device: device.clone(),
            norm_shift: 0.0,
        }
    }

    /// These weights with `shift` added to every RMSNorm weight (a tensor named `*norm.weight`)
    /// as it is read: a Hugging Face Gemma checkpoint stores `w` of `x_normed * (1 + w)`
    /// ([`crate::llm::LlamaConfig::hf_norm_shift`]).
    pub fn with_norm_shift(mut self, shift: f64) -> Self {
        self.norm_shift = shift;
        self
    }

    /// The file or folder the weights come from.
    pub fn path(&self) -> &Path {
        match &self.source {
            Source::Safetensors { files, .. } => files
                .first()
                .map(|f| f.0.as_path())
                .unwrap_or(Path::new("")),
            Source::Memory { path, .. } => path,
        }
    }

    /// The dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Safetensors { file_of, .. } => file_of.contains_key(name),
            Source::Memory { tensors, .. } => tensors.contains_key(name),
        }
    }

    /// All tensor names.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.source {
            Source::Safetensors { file_of, .. } => file_of.keys().cloned().collect(),
            Source::Memory { tensors, .. } => tensors.keys().cloned().collect(),
        };
        names.sort();
        names
    }

    /// The tensor `name`, checked against `shape`, in this set's dtype and device.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (path, tensor) = match &self.source {
            Source::Safetensors { files, file_of } => {
                let i = *file_of.get(name).ok_or_else(|| self.missing(name))?;
                let (path, st) = &files[i];
                let t = st
                    .load(name, &Device::Cpu)
                    .map_err(|e| ModelError::format(path, format!("tensor '{name}': {e}")))?;
                (path.as_path(), t)
            }
            Source::Memory { path, tensors } => {
                let t = tensors.get(name).ok_or_else(|| self.missing(name))?;
                (path.as_path(), t.clone())
            }
        };
        if tensor.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: tensor.dims().to_vec(),
            });
        }
        let tensor = tensor.to_dtype(self.dtype)?.to_device(&self.device)?;
        match self.norm_shift != 0.0 && name.ends_with("norm.weight") {
            true => Ok((tensor + self.norm_shift)?),
            false => Ok(tensor),
        }
    }

    /// The tensor `name` if present (checked against `shape`), else `None`.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor {
            path: self.path().to_path_buf(),
            name: name.to_string(),
        }
    }
}

/// Loads a linear layer `{prefix}.weight` (`out x inp`) and, if `bias`, `{prefix}.bias`.
pub fn load_linear(
    weights: &Weights,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Linear> {
    let weight = weights.get(&format!("{prefix}.weight"), &[out, inp])?;
    let bias = if bias {
        Some(weights.get(&format!("{prefix}.bias"), &[out])?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}
