//! Data for training and evaluation: JSONL manifests of (audio, conversation) examples and
//! length-bucketed, seeded, resumable batching.

#![warn(missing_docs)]

pub mod batching;
pub mod instruct;
pub mod manifest;
pub mod shared;

pub use batching::{BatchOrder, BatchState};
pub use manifest::{load_manifest, ManifestError, Message, Record};
