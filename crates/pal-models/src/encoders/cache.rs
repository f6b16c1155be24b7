//! An on-disk cache of a frozen encoder's outputs, keyed by content hash: a clip is encoded once
//! across runs.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::encoders::audio_encoder::AudioEncoder;
use crate::error::{ModelError, Result};

/// An on-disk cache of encoder outputs, keyed by the SHA-256 of the encoder's id and the samples.
/// Only for frozen encoders: the key does not cover trained weights.
pub struct CachedEncoder<E: AudioEncoder> {
    /// The encoder.
    pub inner: E,
    /// Cache folder.
    pub dir: PathBuf,
}

impl<E: AudioEncoder> CachedEncoder<E> {
    /// Caches `inner`'s outputs under `dir`.
    pub fn new(inner: E, dir: PathBuf) -> Self {
        Self { inner, dir }
    }

    /// Cache file of a clip.
    pub fn path_for(&self, samples: &[f32]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.inner.id().as_bytes());
        for s in samples {
            h.update(s.to_le_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(&hex[..2]).join(format!("{hex}.safetensors"))
    }
}

impl<E: AudioEncoder> AudioEncoder for CachedEncoder<E> {
    fn id(&self) -> String {
        self.inner.id()
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn encode(&self, samples: &[f32]) -> Result<Tensor> {
        Ok(self
            .encode_batch(&[samples])?
            .pop()
            .expect("one clip in, one out"))
    }

    /// Clips found in the cache are read; the others are encoded as one batch and stored.
    fn encode_batch(&self, clips: &[&[f32]]) -> Result<Vec<Tensor>> {
        let paths: Vec<PathBuf> = clips.iter().map(|c| self.path_for(c)).collect();
        let mut found: Vec<Option<Tensor>> = paths.iter().map(|p| read_entry(p)).collect();
        let missing: Vec<usize> = (0..clips.len()).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let batch: Vec<&[f32]> = missing.iter().map(|&i| clips[i]).collect();
            for (&i, tokens) in missing.iter().zip(self.inner.encode_batch(&batch)?) {
                write_entry(&paths[i], &tokens)?;
                found[i] = Some(tokens);
            }
        }
        Ok(found.into_iter().map(|t| t.expect("filled")).collect())
    }
}

/// A cached entry; a damaged one is recomputed, not trusted.
fn read_entry(path: &std::path::Path) -> Option<Tensor> {
    if !path.exists() {
        return None;
    }
    candle_core::safetensors::load(path, &Device::Cpu)
        .ok()
        .and_then(|mut t| t.remove("tokens"))
}

fn write_entry(path: &std::path::Path, tokens: &Tensor) -> Result<()> {
    let dir = path.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let cpu = tokens.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("tokens".to_string(), cpu)]),
        &tmp,
    )?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}
