//! Audio encoders.
//!
//! - [`audio_encoder`]: [`AudioEncoder`], the one interface between audio and the audio-LLM: 16 kHz
//!   mono samples in, `Na x d_enc` tokens out.
//! - [`selection`]: which hidden state is the output; [`windows`]: clips longer than a window.
//! - [`blocks`]: LayerNorm, multi-head attention and GELU MLP shared by encoders and connectors.
//! - [`whisper`]: Whisper (encoder, decoder for transcription); [`ast`]: the AST/EAT ViT family.
//! - [`external`]: an encoder known only by its feature shards (written by another program).
//! - [`cache`]: an on-disk cache of a frozen encoder's outputs.

pub mod ast;
pub mod audio_encoder;
pub mod blocks;
pub mod cache;
pub mod external;
pub mod pooled;
pub mod selection;
pub mod whisper;
pub mod windows;

pub use audio_encoder::{batch_or_each, encode_clip, encode_clips, AudioEncoder};
pub use cache::CachedEncoder;
pub use pooled::PooledEncoder;
pub use selection::LayerSelection;
pub use windows::WindowPolicy;
