//! Data for training and evaluation: JSONL manifests of (audio, conversation) examples, the
//! batched, parallel encoding of their clips (into feature shards with `pal encode`), and
//! length-bucketed, seeded, resumable batching over manifests and shards.

#![warn(missing_docs)]

pub mod batching;
pub mod clip_pairs;
pub mod encode_shards;
pub mod encoding;
pub mod instruct;
pub mod long_form;
pub mod manifest;
pub mod ood;
pub mod shared;
pub mod stream;
pub mod text_questions;
pub mod vocabulary;

pub use batching::{BatchOrder, BatchState};
pub use manifest::{load_manifest, ManifestError, Message, Record};
