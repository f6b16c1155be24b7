//! The curriculum file (TOML): named stages run in order, each with its data, length, learning
//! rate, batch and trainable set.
//!
//! ```toml
//! model = "model.toml"        # model config, relative to this file
//! output = "runs/fsdd-lal"    # run folder: checkpoints, metrics, plot, final adapter
//! seed = 0                    # batch order
//! checkpoint_every = 50       # optimizer steps
//!
//! [[stages]]
//! name = "projectors"
//! manifests = [{ path = "data/fsdd/train.jsonl", weight = 1.0 }]   # read into memory
//! shards = [{ path = "features/train" }]     # and/or streamed from `pal encode` shard sets
//! shuffle_buffer = 10000      # records shuffled together when streaming
//! epochs = 1                  # or: steps = 300
//! lr = 1e-3
//! batch_size = 8
//! grad_accum = 1
//! warmup_steps = 20
//! min_lr_ratio = 0.1
//! weight_decay = 0.0
//! max_grad_norm = 1.0
//! trainable = "adapter"      # or "full", or { lora = { rank = 8, alpha = 16.0, targets = ["q_proj", "v_proj"] } }
//! activation_checkpointing = false
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The whole curriculum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curriculum {
    /// Model config file.
    pub model: PathBuf,
    /// Run folder.
    pub output: PathBuf,
    /// Seed of the batch order.
    #[serde(default)]
    pub seed: u64,
    /// Checkpoint every this many optimizer steps (and at the end of each stage).
    #[serde(default = "fifty")]
    pub checkpoint_every: u64,
    /// Stages in order.
    pub stages: Vec<Stage>,
}

fn fifty() -> u64 {
    50
}

/// A manifest or a feature shard set, and how often its examples appear per epoch relative to
/// the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMix {
    /// JSONL manifest, or shard set folder (`pal encode`), relative to the curriculum file.
    pub path: PathBuf,
    /// Repetitions per epoch (2.0 = every example twice; 0.5 = a seeded half: of the examples
    /// for a manifest, of the shards for a shard set).
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// What a stage trains. In TOML: `"adapter"`, `"full"`, or
/// `{ lora = { rank = 8, alpha = 16.0, targets = ["q_proj", "v_proj"] } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Trainable {
    /// Projectors and connectors only (LLM and encoders frozen).
    Adapter,
    /// The adapter plus LoRA on the given LLM linear layers.
    Lora {
        /// Rank of the update.
        rank: usize,
        /// Scale numerator (`scale = alpha / rank`).
        #[serde(default = "sixteen")]
        alpha: f64,
        /// Linear layers (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`).
        #[serde(default = "qv")]
        targets: Vec<String>,
    },
    /// The adapter and every LLM weight (FFN weights excepted when the model config sets
    /// `frozen_ffn`).
    Full,
}

fn sixteen() -> f64 {
    16.0
}
fn qv() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

impl Trainable {
    /// Whether the parameter `name` is trained under this setting (LLM parameters are named
    /// `llm.*`, LoRA ones end in `.lora_a` / `.lora_b`).
    pub fn trains(&self, name: &str) -> bool {
        match self {
            Self::Adapter => !name.starts_with("llm."),
            Self::Lora { .. } => {
                !name.starts_with("llm.") || name.ends_with(".lora_a") || name.ends_with(".lora_b")
            }
            Self::Full => true,
        }
    }
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Name (in logs and checkpoints).
    pub name: String,
    /// Training data read into memory (clips encoded at the start of the stage, cached).
    #[serde(default)]
    pub manifests: Vec<DataMix>,
    /// Training data streamed from feature shard sets (`pal encode`): memory does not grow
    /// with their size.
    #[serde(default)]
    pub shards: Vec<DataMix>,
    /// Records shuffled together when streaming (whole shards are added to a group until it
    /// holds this many); with all data in one group the order is the in-memory order.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Length in optimizer steps...
    #[serde(default)]
    pub steps: Option<u64>,
    /// ...or in epochs over the mixed data.
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Peak learning rate.
    pub lr: f64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    /// Linear warmup steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr` (cosine decay).
    #[serde(default = "tenth")]
    pub min_lr_ratio: f64,
    /// AdamW weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[serde(default = "one")]
    pub max_grad_norm: f64,
    /// What is trained.
    #[serde(default = "adapter")]
    pub trainable: Trainable,
    /// Recompute each LLM layer in backward instead of keeping its activations (adapter-only
    /// stages): less memory, about one more forward pass of time.
    #[serde(default)]
    pub activation_checkpointing: bool,
}

fn default_shuffle_buffer() -> usize {
    10_000
}
fn one_usize() -> usize {
    1
}
fn tenth() -> f64 {
    0.1
}
fn adapter() -> Trainable {
    Trainable::Adapter
}

impl Curriculum {
    /// Reads a curriculum file; errors name the file and field.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| TrainError::Io(path.to_path_buf(), e))?;
        let c: Curriculum = pal_models::formats::config_toml::parse(&text)
            .map_err(|e| TrainError::Config(path.to_path_buf(), e))?;
        if c.stages.is_empty() {
            return Err(TrainError::Config(
                path.to_path_buf(),
                "no [[stages]]".into(),
            ));
        }
        for s in &c.stages {
            if s.steps.is_some() == s.epochs.is_some() {
                return Err(TrainError::Config(
                    path.to_path_buf(),
                    format!("stage '{}': give exactly one of steps or epochs", s.name),
                ));
            }
            if s.activation_checkpointing && s.trainable != Trainable::Adapter {
                return Err(TrainError::Config(
                    path.to_path_buf(),
                    format!(
                        "stage '{}': activation_checkpointing needs trainable = \"adapter\"",
                        s.name
                    ),
                ));
            }
            if s.batch_size == 0
                || s.grad_accum == 0
                || (s.manifests.is_empty() && s.shards.is_empty())
            {
                return Err(TrainError::Config(
                    path.to_path_buf(),
                    format!(
                        "stage '{}': batch_size and grad_accum must be positive, and manifests or shards given",
                        s.name
                    ),
                ));
            }
        }
        Ok(c)
    }
}
