//! The audio-LLM, read in this order:
//!
//! - [`config`]: the model config file (TOML) and the attachment options it names.
//! - [`connector`]: PLITS connectors and PAL's summary (encoder tokens into the sequence).
//! - [`lal`]: LAL projectors and the audio keys/values they make.
//! - [`batch`]: examples assembled into the LLM's input rows.
//! - [`model`]: [`AudioLlm`], the LLM with its attached encoders (prepare, loss, logits).
//! - [`build`]: a model built from its config, or loaded from a run folder.
//! - [`growing`]: a clip encoded window by window as its audio arrives; [`limits`]: how long a
//!   clip may be, in seconds and memory.

pub mod batch;
pub mod build;
pub mod config;
pub mod connector;
pub mod growing;
pub mod lal;
pub mod limits;
pub mod model;

pub use batch::{Example, Padding, PreparedBatch};
pub use build::{build, build_encoders, load_run, write_untrained_run, BuiltModel};
pub use config::{Attachment, LalConfig, ModelConfig, Route};
pub use growing::GrowingClip;
pub use limits::AudioLimits;
pub use model::{AudioLlm, ClipLal};
