//! Training for pal, readable top to bottom in [`trainer`]: a curriculum of stages, AdamW with
//! warmup and cosine decay, gradient accumulation and clipping, crash-safe checkpoints that resume
//! exactly, a progress bar, a metrics log and a loss plot.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod curriculum;
pub mod distributed;
pub mod metrics;
pub mod optim;
pub mod stage_data;
pub mod trainer;

use std::path::PathBuf;

pub use trainer::{train, train_ranks, TrainOptions, TrainSummary};

/// A training error; names the file (and line or field) it is about.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a file failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A config or curriculum problem.
    #[error("{0}: {1}")]
    Config(PathBuf, String),
    /// A damaged checkpoint file.
    #[error("checkpoint file {0} is damaged or unreadable: {1}")]
    Checkpoint(PathBuf, String),
    /// An example that cannot be used (named `manifest:line`).
    #[error("{0}: {1}")]
    Example(String, String),
    /// A manifest problem.
    #[error(transparent)]
    Manifest(#[from] pal_data::ManifestError),
    /// A model problem.
    #[error(transparent)]
    Model(#[from] pal_models::ModelError),
    /// An audio problem.
    #[error(transparent)]
    Audio(#[from] pal_audio::AudioError),
    /// A tensor computation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Starting or running a multi-process job failed (launcher, MPI, NCCL).
    #[error("distributed training: {0}")]
    Distributed(String),
    /// The run was stopped (its step hook asked to) after a checkpoint: resume it.
    #[error("stopped at step {step}; the checkpoint in {} resumes it", .run.display())]
    Stopped {
        /// The last step done.
        step: u64,
        /// The run folder.
        run: PathBuf,
    },
}
