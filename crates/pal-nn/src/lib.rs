//! Training-grade ops and layers for pal.
//!
//! candle's fused `RmsNorm`, `softmax_last_dim` and `rope` record no backward, and its `Matmul`
//! backward always computes the weight gradient, even for weights that are frozen. Model code in pal
//! therefore goes through this crate: every op here has a backward (checked by finite differences in
//! `tests/gradients.rs`), and [`ops::frozen_linear`] yields only the input gradient.

pub mod attention;
pub mod gradcheck;
pub mod linear;
pub mod ops;
pub mod params;
pub mod rng;

pub use attention::{attention, attention_backward, attention_with_probs, causal_mask, mask_value};
pub use linear::{Linear, Lora};
pub use params::{Init, Params};
