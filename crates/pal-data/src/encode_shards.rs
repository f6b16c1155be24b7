//! `pal encode`: the clips of some manifests through a model's frozen encoders into a feature
//! shard set (format: `pal_models::formats::feature_shards`, `docs/shards.md`). Killed and run
//! again with the same arguments, it keeps the complete shards and continues after them, and
//! the result is byte for byte what an uninterrupted run writes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use pal_models::encoders::AudioEncoder;
use pal_models::formats::feature_shards::{
    FeatureDtype, ShardEncoder, ShardFailure, ShardIndex, ShardRecord, ShardWriter, INDEX_FILE,
};
use serde_json::json;

use crate::encoding::{encode_in_order, EncodeOptions};
use crate::manifest::{load_manifest, ManifestError, Record};

/// What to encode and how to store it.
#[derive(Debug, Clone)]
pub struct EncodeJob {
    /// JSONL manifests, read in order.
    pub manifests: Vec<PathBuf>,
    /// The shard set folder.
    pub out: PathBuf,
    /// Storage dtype.
    pub dtype: FeatureDtype,
    /// Shard size target in bytes (a shard ends with the record that reaches it).
    pub shard_bytes: usize,
    /// Skip undecodable clips and bad manifest lines (each warned and counted) instead of
    /// stopping.
    pub skip_bad: bool,
    /// Decoding threads and batching.
    pub options: EncodeOptions,
}

/// What an encoding run did.
#[derive(Debug, Clone)]
pub struct EncodeSummary {
    /// The finished index.
    pub index: ShardIndex,
    /// Records encoded by this run (not counting those kept from an interrupted one).
    pub encoded_now: usize,
    /// Records kept from an interrupted run.
    pub kept: usize,
    /// Bytes of all shards.
    pub bytes: u64,
    /// Wall time of this run, seconds.
    pub elapsed_s: f64,
}

/// An encoding failure.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A manifest problem.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A model, shard or file problem.
    #[error(transparent)]
    Model(#[from] pal_models::ModelError),
    /// A clip that could not be read or encoded, named `manifest:line` and file.
    #[error("{origin} ({audio}): {message} (use --skip-bad to skip such clips)")]
    Clip {
        /// `manifest:line`.
        origin: String,
        /// The audio file.
        audio: PathBuf,
        /// Why.
        message: String,
    },
    /// The output folder holds another job's shards.
    #[error("{0}: {1}")]
    Conflict(PathBuf, String),
    /// An example about several clips: a shard record holds one.
    #[error("{origin}: {clips} clips; feature shards hold one clip per example (train on examples about several clips from their manifest)")]
    SeveralClips {
        /// `manifest:line`.
        origin: String,
        /// How many clips it lists.
        clips: usize,
    },
}

/// A model's frozen encoders and their descriptions for a shard set's index.
pub type DescribedEncoders = (Vec<Box<dyn AudioEncoder>>, Vec<ShardEncoder>);

/// The frozen encoders of a model config (a `model.toml`, or a run folder holding one), on the
/// CPU in f32, and their descriptions for a shard set's index.
pub fn encoders_of(model: &Path) -> pal_models::Result<DescribedEncoders> {
    let config_path = if model.is_dir() {
        model.join("model.toml")
    } else {
        model.to_path_buf()
    };
    let config = pal_models::audio_llm::ModelConfig::load(&config_path)?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    let encoders = pal_models::audio_llm::build_encoders(
        &config,
        base,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?;
    let described = config
        .encoders
        .iter()
        .zip(&encoders)
        .map(|(spec, e)| ShardEncoder {
            name: spec.name.clone(),
            id: e.id(),
            dim: e.dim(),
            config: serde_json::json!({
                "kind": spec.kind, "layer": spec.layer, "real_length": spec.real_length,
                "max_windows": spec.max_windows,
            }),
        })
        .collect();
    Ok((encoders, described))
}

/// Encodes the job's clips with `encoders` (described by `described`, same order), calling
/// `progress(records done, records in all, seconds of audio done)` after each record.
pub fn encode_to_shards<E: AudioEncoder>(
    job: &EncodeJob,
    encoders: &[E],
    described: Vec<ShardEncoder>,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<EncodeSummary, EncodeError> {
    let start_time = Instant::now();
    let mut records: Vec<Record> = vec![];
    let mut manifest_failures = vec![];
    let mut sources = vec![];
    for path in &job.manifests {
        let manifest = load_manifest(path, job.skip_bad)?;
        for bad in &manifest.skipped {
            eprintln!("warning: skipped {bad}");
            manifest_failures.push(ShardFailure {
                origin: match bad {
                    ManifestError::Line { path, line, .. } => format!("{}:{line}", path.display()),
                    other => other.to_string(),
                },
                error: bad.to_string(),
            });
        }
        let absolute = path.canonicalize().unwrap_or_else(|_| path.clone());
        sources.push(json!({"manifest": absolute, "records": manifest.records.len()}));
        if let Some(r) = manifest.records.iter().find(|r| r.clips.len() != 1) {
            return Err(EncodeError::SeveralClips {
                origin: r.origin.clone(),
                clips: r.clips.len(),
            });
        }
        records.extend(manifest.records);
    }
    let options = &job.options;
    let description = json!({
        "manifests": sources,
        "shard_bytes": job.shard_bytes,
        "window": options.window,
        "batch_clips": options.batch_clips,
        "batch_seconds": options.batch_seconds,
    });
    let index = resume_or_start(job, &described, description, manifest_failures)?;
    if index.complete {
        progress(records.len(), records.len(), index.seconds);
        return Ok(EncodeSummary {
            bytes: index.shards.iter().map(|s| s.bytes).sum(),
            kept: index.records,
            encoded_now: 0,
            index,
            elapsed_s: start_time.elapsed().as_secs_f64(),
        });
    }
    let start = index.consumed;
    let kept = index.records;
    let mut seconds_done = index.seconds;
    let mut writer = ShardWriter::new(&job.out, index, job.shard_bytes)?;
    let files: Vec<PathBuf> = records.iter().map(|r| r.clips[0].clone()).collect();
    let mut encoded_now = 0;
    encode_in_order(&files, start, encoders, options, |i, outcome| {
        let record = &records[i];
        match outcome {
            Ok(clip) => {
                seconds_done += clip.seconds;
                writer.push(
                    i,
                    ShardRecord {
                        audio: record.clips[0].display().to_string(),
                        origin: record.origin.clone(),
                        seconds: clip.seconds,
                        messages: record.messages.clone(),
                        tokens: vec![],
                    },
                    &clip.audio,
                )?;
                encoded_now += 1;
            }
            Err(message) if job.skip_bad => {
                eprintln!(
                    "warning: skipped {} ({}): {message}",
                    record.origin,
                    record.clips[0].display()
                );
                writer.fail(
                    i,
                    ShardFailure {
                        origin: record.origin.clone(),
                        error: message,
                    },
                );
            }
            Err(message) => {
                return Err(EncodeError::Clip {
                    origin: record.origin.clone(),
                    audio: record.clips[0].clone(),
                    message,
                })
            }
        }
        progress(i + 1, records.len(), seconds_done);
        Ok(())
    })?;
    let index = writer.finish()?;
    Ok(EncodeSummary {
        bytes: index.shards.iter().map(|s| s.bytes).sum(),
        kept,
        encoded_now,
        index,
        elapsed_s: start_time.elapsed().as_secs_f64(),
    })
}

/// The index to continue from: a new one, or an interrupted run's (after checking that it is
/// the same job and removing shard files it does not list).
fn resume_or_start(
    job: &EncodeJob,
    described: &[ShardEncoder],
    description: serde_json::Value,
    manifest_failures: Vec<ShardFailure>,
) -> Result<ShardIndex, EncodeError> {
    let out = &job.out;
    if !out.join(INDEX_FILE).exists() {
        let mut index = ShardIndex::new(described.to_vec(), job.dtype, description);
        index.failures = manifest_failures;
        return Ok(index);
    }
    let index = ShardIndex::read(out)?;
    let same = index.encoders == described && index.dtype == job.dtype && index.job == description;
    if !same {
        return Err(EncodeError::Conflict(
            out.join(INDEX_FILE),
            format!(
                "this folder holds shards of another job (encoders {}, dtype {:?}, job {}); this run would write encoders {}, dtype {:?}, job {}: choose another --out or delete the folder",
                ids(&index.encoders),
                index.dtype,
                index.job,
                ids(described),
                job.dtype,
                description
            ),
        ));
    }
    if !index.complete {
        remove_unlisted_shards(out, &index)?;
        eprintln!(
            "resuming: keeping {} complete shards ({} records), continuing at input record {}",
            index.shards.len(),
            index.records,
            index.consumed + 1
        );
    }
    Ok(index)
}

fn ids(encoders: &[ShardEncoder]) -> String {
    encoders
        .iter()
        .map(|e| format!("{} (width {})", e.id, e.dim))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Shard files (and temporaries) an interrupted writer left beyond its index.
fn remove_unlisted_shards(out: &Path, index: &ShardIndex) -> Result<(), EncodeError> {
    let entries = std::fs::read_dir(out).map_err(|e| pal_models::ModelError::io(out, e))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().to_string();
        let listed = index.shards.iter().any(|s| s.file == name);
        if name.starts_with("shard-") && !listed {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| pal_models::ModelError::io(&path, e))?;
        }
    }
    Ok(())
}
