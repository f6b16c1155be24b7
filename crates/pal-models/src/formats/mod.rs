//! File formats. Weights are read as they are on disk and renamed to Hugging Face names at this
//! boundary, so that model code only ever sees one naming; config files are TOML.
//!
//! - [`weights`]: [`weights::Weights`], tensors by Hugging Face name, from safetensors (single or
//!   sharded) or from the readers below.
//! - [`gguf`]: llama.cpp's GGUF (metadata, tensors dequantized and renamed).
//! - [`ct2`]: CTranslate2's `model.bin` (Whisper, renamed and split).
//! - [`feature_shards`]: frozen encoder outputs in shards (`pal encode`), read memory-mapped.
//! - [`config_toml`]: TOML config files, with errors that name the key and its table.

pub mod config_toml;
pub mod ct2;
pub mod feature_shards;
pub mod gguf;
pub mod weights;
