//! Training-grade ops and layers for pal.
//!
//! candle's fused `RmsNorm`, `softmax_last_dim` and `rope` record no backward, and its `Matmul`
//! backward always computes the weight gradient, even for weights that are frozen. Model code in pal
//! therefore goes through this crate: every op here has a backward (checked by finite differences in
//! `tests/gradients.rs`), and [`ops::frozen_linear`] yields only the input gradient.
//!
//! candle's backward also gives every recorded op a zero-filled gradient buffer plus an add (even
//! a reshape or a copy). The closed-form pieces here ([`attention_backward`],
//! [`ops::rms_norm_input_grad`], [`ops::softmax_backward`]) let model code record a whole frozen
//! block as one op with a written-out backward (see `pal_models::llm::frozen_layer`).

#![warn(missing_docs)]

pub mod attention;
pub mod compute;
pub mod gradcheck;
pub mod linear;
pub mod ops;
pub mod params;
pub mod rng;

pub use attention::{
    attention, attention_apart, attention_backward, attention_packed, attention_split,
    attention_split_backward, attention_with_probs, causal_mask, decode_attention, mask_value,
};
pub use compute::{ComputeDevice, ComputeDtype, Precision};
pub use linear::{Linear, Lora, QuantizedForm};
pub use ops::SequenceKeys;
pub use params::{Init, Params};
