//! An encoder that pal does not run: its outputs exist only as feature shards, written by
//! another program (`scripts/write_shards.py` from BEATs, CLAP, wav2vec2, ...). A model can train
//! and be evaluated on such shards; it cannot encode new audio.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::encoders::audio_encoder::AudioEncoder;
use crate::error::{ModelError, Result};
use crate::formats::feature_shards::ShardIndex;

/// An encoder known by the identity and width its shard set's index gives.
#[derive(Debug, Clone)]
pub struct ExternalEncoder {
    id: String,
    dim: usize,
    /// The shard set that named it.
    pub source: PathBuf,
}

impl ExternalEncoder {
    /// The encoder `name` of the shard set at `dir` (or its only encoder).
    pub fn from_shards(dir: &Path, name: &str) -> Result<Self> {
        let index = ShardIndex::read(dir)?;
        let entry = match index.encoders.as_slice() {
            [only] => only,
            many => many.iter().find(|e| e.name == name).ok_or_else(|| {
                ModelError::format(
                    dir.join(crate::formats::feature_shards::INDEX_FILE),
                    format!(
                        "has no encoder named '{name}' (it has {})",
                        many.iter()
                            .map(|e| e.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?,
        };
        Ok(Self {
            id: entry.id.clone(),
            dim: entry.dim,
            source: dir.to_path_buf(),
        })
    }
}

impl AudioEncoder for ExternalEncoder {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn encode(&self, _samples: &[f32]) -> Result<Tensor> {
        Err(ModelError::Unsupported(format!(
            "encoder '{}' is external: pal only has its features in shard sets (such as {}), so it cannot encode new audio; train and evaluate it from shards (`pal eval --shards`)",
            self.id,
            self.source.display()
        )))
    }
}
