//! Feature shards: frozen encoder outputs written once (`pal encode`, or `scripts/write_shards.py`
//! for an encoder written in Python) and read memory-mapped by training and evaluation, so that a
//! dataset's size never decides the memory a run needs. `docs/shards.md` specifies the format;
//! this module is its one reader and writer in pal.
//!
//! A shard set is a folder:
//! - `index.json`: the [`ShardIndex`]: encoders (name, id, width), dtype, record count, and each
//!   shard's file name, record count, byte size and SHA-256.
//! - `shard-NNNNN.safetensors`: a safetensors file with one tensor per encoder, `features.K` of
//!   shape `(tokens of all its records, width K)` with the records' rows one after another, and
//!   in the header's `__metadata__` the key `records`: a JSON array of [`ShardRecord`]s (the
//!   conversation and the token count of each record per encoder).
//!
//! Shards are written to a temporary name and renamed, and the index is replaced the same way
//! after each shard, so an interrupted writer leaves only complete, listed shards.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};
use crate::text::chat_template::Message;

/// The index's `format` value.
pub const FORMAT: &str = "pal-feature-shards";
/// The format version this build reads and writes.
pub const VERSION: u32 = 1;
/// The index file of a shard set.
pub const INDEX_FILE: &str = "index.json";

/// How features are stored on disk (they are always read as f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FeatureDtype {
    /// IEEE half: half the bytes of f32, 11 bits of mantissa.
    #[default]
    F16,
    /// bfloat16: half the bytes, f32's range, 8 bits of mantissa.
    Bf16,
    /// f32: exact.
    F32,
}

impl FeatureDtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            _ => 2,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            Self::F16 => Dtype::F16,
            Self::Bf16 => Dtype::BF16,
            Self::F32 => Dtype::F32,
        }
    }

    /// Little-endian bytes of `values` in this dtype.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        for &v in values {
            match self {
                Self::F16 => out.extend(half::f16::from_f32(v).to_bits().to_le_bytes()),
                Self::Bf16 => out.extend(half::bf16::from_f32(v).to_bits().to_le_bytes()),
                Self::F32 => out.extend(v.to_le_bytes()),
            }
        }
        out
    }

    /// Values of little-endian `bytes` in this dtype, as f32.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Self::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Self::Bf16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Self::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }
    }
}

impl std::str::FromStr for FeatureDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            "f32" => Ok(Self::F32),
            _ => Err(format!("unknown feature dtype '{s}' (f16, bf16, f32)")),
        }
    }
}

/// One encoder whose outputs a shard set holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEncoder {
    /// The model config's encoder name (or the external encoder's name).
    pub name: String,
    /// Identity of the encoder and of every option that changes its output
    /// ([`crate::encoders::AudioEncoder::id`]); a model reads only shards of its own encoders.
    pub id: String,
    /// Width of the tokens.
    pub dim: usize,
    /// The encoder's settings as written by its producer (informational).
    #[serde(default)]
    pub config: serde_json::Value,
}

/// One shard file of a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name inside the set folder.
    pub file: String,
    /// Records in the file.
    pub records: usize,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
}

/// A clip that could not be encoded (skipped with `--skip-bad`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardFailure {
    /// `manifest:line`.
    pub origin: String,
    /// Why.
    pub error: String,
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardIndex {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// The encoders, in the order of the model's encoders (tensor `features.K` is encoder K).
    pub encoders: Vec<ShardEncoder>,
    /// Storage dtype of every features tensor.
    pub dtype: FeatureDtype,
    /// Records in all shards.
    pub records: usize,
    /// Seconds of audio in all shards.
    #[serde(default)]
    pub seconds: f64,
    /// Tokens in all shards, per encoder.
    #[serde(default)]
    pub tokens: Vec<u64>,
    /// The shards, in record order.
    pub shards: Vec<ShardEntry>,
    /// Whether the writer finished. An incomplete set is refused by readers and continued by
    /// `pal encode`.
    #[serde(default = "complete_default")]
    pub complete: bool,
    /// For a writer: input records consumed (written or failed) up to the last listed shard.
    #[serde(default)]
    pub consumed: usize,
    /// For a writer: what produced the set (manifests, shard size); a resumed writer must match.
    #[serde(default)]
    pub job: serde_json::Value,
    /// Clips that could not be encoded.
    #[serde(default)]
    pub failures: Vec<ShardFailure>,
}

fn complete_default() -> bool {
    true
}

/// One record's description, stored in its shard's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRecord {
    /// The clip's file (informational).
    #[serde(default)]
    pub audio: String,
    /// Where the record came from, `manifest:line`.
    #[serde(default)]
    pub origin: String,
    /// Clip duration in seconds.
    #[serde(default)]
    pub seconds: f64,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Token count of this record per encoder.
    pub tokens: Vec<usize>,
}

fn format_err(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::format(path, message)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of a file, streamed (the same check as the fetched assets').
pub fn sha256_file(path: &Path) -> Result<String> {
    pal_assets::sha256_file(path).map_err(|e| ModelError::format(path, e))
}

impl ShardIndex {
    /// An empty, incomplete index for a writer.
    pub fn new(encoders: Vec<ShardEncoder>, dtype: FeatureDtype, job: serde_json::Value) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            encoders,
            dtype,
            records: 0,
            seconds: 0.0,
            tokens: vec![],
            shards: vec![],
            complete: false,
            consumed: 0,
            job,
            failures: vec![],
        }
    }

    /// Reads `dir/index.json`; a missing or malformed index is an error naming it.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format_err(
                &path,
                "no shard index here: is this a shard set written by `pal encode` or scripts/write_shards.py?",
            ),
            _ => ModelError::io(&path, e),
        })?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| format_err(&path, format!("malformed shard index: {e}")))?;
        if index.format != FORMAT {
            return Err(format_err(
                &path,
                format!("format is '{}', expected '{FORMAT}'", index.format),
            ));
        }
        if index.version != VERSION {
            return Err(format_err(
                &path,
                format!(
                    "format version {} is not supported (this build reads {VERSION})",
                    index.version
                ),
            ));
        }
        if index.encoders.is_empty() {
            return Err(format_err(&path, "lists no encoders"));
        }
        let listed: usize = index.shards.iter().map(|s| s.records).sum();
        if listed != index.records {
            return Err(format_err(
                &path,
                format!(
                    "says {} records but its shards hold {listed}",
                    index.records
                ),
            ));
        }
        Ok(index)
    }

    /// Writes `dir/index.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(INDEX_FILE);
        let tmp = dir.join(format!("{INDEX_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("index serialises");
        std::fs::write(&tmp, text).map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ModelError::io(&path, e))
    }
}

/// Writes records into shards of about `target_bytes` each, in order.
pub struct ShardWriter {
    dir: PathBuf,
    index: ShardIndex,
    target_bytes: usize,
    records: Vec<ShardRecord>,
    data: Vec<Vec<u8>>,
    /// Input position after the last pushed record.
    consumed: usize,
    failures: Vec<ShardFailure>,
}

impl ShardWriter {
    /// Starts a writer on `dir` from `index` (new or read back from an interrupted run: its
    /// listed shards are kept and writing continues after them).
    pub fn new(dir: &Path, index: ShardIndex, target_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let encoders = index.encoders.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            consumed: index.consumed,
            index,
            target_bytes: target_bytes.max(1),
            records: vec![],
            data: vec![vec![]; encoders],
            failures: vec![],
        })
    }

    /// The index as written so far.
    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// Adds the record at input position `position` with one `(tokens, dim)` tensor per encoder.
    pub fn push(
        &mut self,
        position: usize,
        mut record: ShardRecord,
        features: &[Tensor],
    ) -> Result<()> {
        if features.len() != self.index.encoders.len() {
            return Err(ModelError::Unsupported(format!(
                "{}: {} feature tensors for {} encoders",
                record.origin,
                features.len(),
                self.index.encoders.len()
            )));
        }
        record.tokens.clear();
        for (k, (t, e)) in features.iter().zip(&self.index.encoders).enumerate() {
            let (n, d) = t.dims2()?;
            if d != e.dim {
                return Err(ModelError::Unsupported(format!(
                    "{}: encoder '{}' gave width {d}, the index says {}",
                    record.origin, e.name, e.dim
                )));
            }
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            self.data[k].extend(self.index.dtype.encode(&values));
            record.tokens.push(n);
        }
        self.records.push(record);
        self.consumed = position + 1;
        if self.data.iter().map(|d| d.len()).sum::<usize>() >= self.target_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Records that input `position` could not be encoded.
    pub fn fail(&mut self, position: usize, failure: ShardFailure) {
        self.failures.push(failure);
        self.consumed = position + 1;
    }

    /// Writes the pending records as one shard (temporary name, then rename) and the index.
    pub fn flush(&mut self) -> Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let file = format!("shard-{:05}.safetensors", self.index.shards.len());
        let path = self.dir.join(&file);
        let bytes = self.shard_bytes(&path)?;
        let tmp = self.dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, &bytes).map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ModelError::io(&path, e))?;
        self.index.shards.push(ShardEntry {
            file,
            records: self.records.len(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
        self.index.records += self.records.len();
        self.index.seconds += self.records.iter().map(|r| r.seconds).sum::<f64>();
        self.index.tokens.resize(self.index.encoders.len(), 0);
        for (k, total) in self.index.tokens.iter_mut().enumerate() {
            *total += self.records.iter().map(|r| r.tokens[k] as u64).sum::<u64>();
        }
        self.index.consumed = self.consumed;
        self.index.failures.append(&mut self.failures);
        self.records.clear();
        for d in &mut self.data {
            d.clear();
        }
        self.index.write(&self.dir)
    }

    fn shard_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        let mut views = vec![];
        for (k, e) in self.index.encoders.iter().enumerate() {
            let rows: usize = self.records.iter().map(|r| r.tokens[k]).sum();
            let view = TensorView::new(
                self.index.dtype.safetensors(),
                vec![rows, e.dim],
                &self.data[k],
            )
            .map_err(|err| format_err(path, err))?;
            views.push((format!("features.{k}"), view));
        }
        // One key only: safetensors writes the metadata map in hash order, and a shard's bytes
        // must be a function of its records (a resumed writer reproduces them exactly).
        let metadata = HashMap::from([(
            "records".to_string(),
            serde_json::to_string(&self.records).expect("records serialise"),
        )]);
        safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| format_err(path, e))
    }

    /// Writes the last shard and marks the set complete.
    pub fn finish(mut self) -> Result<ShardIndex> {
        self.flush()?;
        self.index.failures.append(&mut self.failures);
        self.index.consumed = self.consumed;
        self.index.complete = true;
        self.index.write(&self.dir)?;
        Ok(self.index)
    }
}

/// A complete shard set opened for reading. Each shard's checksum is verified the first time it
/// is opened in this process.
pub struct FeatureShardSet {
    /// The set folder.
    pub dir: PathBuf,
    /// Its index.
    pub index: ShardIndex,
    verified: Mutex<Vec<bool>>,
}

impl FeatureShardSet {
    /// Opens the set at `dir`: the index must be complete and every shard present with the
    /// listed size.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = ShardIndex::read(dir)?;
        let index_path = dir.join(INDEX_FILE);
        if !index.complete {
            return Err(format_err(
                &index_path,
                "this shard set is incomplete (its writer was interrupted): run `pal encode` again with the same arguments to finish it",
            ));
        }
        for s in &index.shards {
            let path = dir.join(&s.file);
            let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format_err(&path, "shard listed in the index is missing")
                }
                _ => ModelError::io(&path, e),
            })?;
            if meta.len() != s.bytes {
                return Err(format_err(
                    &path,
                    format!(
                        "shard is {} bytes, the index says {} (truncated or replaced)",
                        meta.len(),
                        s.bytes
                    ),
                ));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            verified: Mutex::new(vec![false; index.shards.len()]),
            index,
        })
    }

    /// Refuses the set unless it holds exactly `expected` encoders (id and width, in order),
    /// naming both sides.
    pub fn check_encoders(&self, expected: &[(String, usize)]) -> Result<()> {
        let found: Vec<(String, usize)> = self
            .index
            .encoders
            .iter()
            .map(|e| (e.id.clone(), e.dim))
            .collect();
        if found != expected {
            let show = |list: &[(String, usize)]| {
                list.iter()
                    .map(|(id, dim)| format!("{id} (width {dim})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(format_err(
                &self.dir.join(INDEX_FILE),
                format!(
                    "shard set was made by encoder(s) {}, but the model expects {}",
                    show(&found),
                    show(expected)
                ),
            ));
        }
        Ok(())
    }

    /// Opens shard `i` memory-mapped, verifying its checksum on first use.
    pub fn open_shard(&self, i: usize) -> Result<FeatureShard> {
        let entry = &self.index.shards[i];
        let path = self.dir.join(&entry.file);
        let first_use = !self.verified.lock().expect("not poisoned")[i];
        if first_use {
            let sum = sha256_file(&path)?;
            if sum != entry.sha256 {
                return Err(format_err(
                    &path,
                    format!(
                        "checksum mismatch (SHA-256 {sum}, the index says {}): the shard is damaged; restore it or encode again",
                        entry.sha256
                    ),
                ));
            }
            self.verified.lock().expect("not poisoned")[i] = true;
        }
        FeatureShard::open(&path, &self.index, entry.records)
    }
}

/// One shard, memory-mapped.
pub struct FeatureShard {
    path: PathBuf,
    map: memmap2::Mmap,
    records: Vec<ShardRecord>,
    /// Per encoder: byte offset of the tensor's data in the file, width, and each record's
    /// first row.
    tensors: Vec<(usize, usize, Vec<usize>)>,
    dtype: FeatureDtype,
}

impl FeatureShard {
    fn open(path: &Path, index: &ShardIndex, expected_records: usize) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: shards are written once under a temporary name and renamed; nothing writes
        // to a listed shard afterwards, so the mapping does not change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| format_err(path, format!("not a safetensors file: {e}")))?;
        let text = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("records"))
            .ok_or_else(|| format_err(path, "header has no 'records' metadata"))?;
        let records: Vec<ShardRecord> = serde_json::from_str(text)
            .map_err(|e| format_err(path, format!("malformed 'records' metadata: {e}")))?;
        if records.len() != expected_records {
            return Err(format_err(
                path,
                format!(
                    "holds {} records, the index says {expected_records}",
                    records.len()
                ),
            ));
        }
        let data_start = 8 + header_len;
        let mut tensors = vec![];
        for (k, e) in index.encoders.iter().enumerate() {
            let name = format!("features.{k}");
            let info = metadata
                .info(&name)
                .ok_or_else(|| format_err(path, format!("tensor '{name}' is missing")))?;
            let rows: usize = records
                .iter()
                .map(|r| r.tokens.get(k).copied().unwrap_or(0))
                .sum();
            if info.dtype != index.dtype.safetensors() || info.shape != [rows, e.dim] {
                return Err(format_err(
                    path,
                    format!(
                        "tensor '{name}' is {:?} {:?}, the index and records imply {:?} [{rows}, {}]",
                        info.dtype, info.shape, index.dtype, e.dim
                    ),
                ));
            }
            let mut starts = Vec::with_capacity(records.len() + 1);
            let mut row = 0;
            for r in &records {
                starts.push(row);
                row += r.tokens[k];
            }
            starts.push(row);
            tensors.push((data_start + info.data_offsets.0, e.dim, starts));
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            records,
            tensors,
            dtype: index.dtype,
        })
    }

    /// The shard file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records' descriptions, in order.
    pub fn records(&self) -> &[ShardRecord] {
        &self.records
    }

    /// Encoder `k`'s tokens of record `i` as an f32 `(tokens, dim)` tensor. The pages read are
    /// released right away, so reading a whole set never keeps it resident.
    pub fn features(&self, i: usize, k: usize, device: &Device) -> Result<Tensor> {
        let (offset, dim, starts) = &self.tensors[k];
        let (first, last) = (starts[i], starts[i + 1]);
        let size = self.dtype.size();
        let begin = offset + first * dim * size;
        let end = offset + last * dim * size;
        let values = self.dtype.decode(&self.map[begin..end]);
        // Release whole pages of the range (the data stays in the page cache).
        let page = 4096;
        let (a, b) = (begin.div_ceil(page) * page, end / page * page);
        if b > a {
            // SAFETY: the mapping is private and read-only; dropping its pages only makes the
            // next access read them again from the file.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
            };
        }
        Ok(Tensor::from_vec(values, (last - first, *dim), device)?)
    }

    /// Every encoder's tokens of record `i`.
    pub fn example_audio(&self, i: usize, device: &Device) -> Result<Vec<Tensor>> {
        (0..self.tensors.len())
            .map(|k| self.features(i, k, device))
            .collect()
    }
}
