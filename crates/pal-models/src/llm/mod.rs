//! The Llama-family decoder LLM, read in this order:
//!
//! - [`config`]: shapes and options ([`LlamaConfig`]), from `config.json` or GGUF metadata.
//! - [`rope`]: RoPE tables; [`cache`]: the KV cache with its fixed LAL prefix.
//! - [`layer`]: one decoder layer and its forward, written once.
//! - [`frozen_layer`], [`checkpointed_layer`], [`lal_prefix`]: autograd nodes with a written-out
//!   (or recomputing) backward, for frozen-backbone training.
//! - [`decoder`]: the model ([`Llama`]); [`lora`]: LoRA and full fine-tuning.
//! - [`load`]: a model and its tokenizer from a folder or a `.gguf` file; [`weight_form`]: the
//!   frozen weights held quantized (as in the GGUF file) for decoding.

pub mod cache;
pub mod checkpointed_layer;
pub mod config;
pub mod decoder;
pub mod frozen_layer;
pub mod lal_prefix;
pub mod layer;
pub mod load;
pub mod lora;
pub mod rope;
pub mod weight_form;

pub use cache::{KeyValuePrefix, KvCache, LayerCache};
pub use config::{Activation, LlamaConfig, RopeScaling, SlidingWindow};
pub use decoder::{LayerRopes, Llama};
pub use layer::DecoderLayer;
pub use load::{load_llm, load_llm_held};
pub use weight_form::{WeightForm, WeightsInUse};
