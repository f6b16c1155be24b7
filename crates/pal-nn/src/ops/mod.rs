//! Differentiable ops. Each op has a fused CPU forward written here with a backward expressed in
//! candle tensor ops. On other devices: when no input tracks gradients, candle's fused kernel;
//! otherwise a composition of primitive candle ops (slower, but correct gradients).

mod constant_input_linear;
mod frozen_linear;
mod loss;
mod rms_norm;
mod rope;
mod softmax;

pub use constant_input_linear::constant_input_linear;
pub use frozen_linear::frozen_linear;
pub use loss::cross_entropy;
pub use rms_norm::{layer_norm, rms_norm, rms_norm_input_grad};
pub use rope::rope;
pub use softmax::softmax_last_dim;

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// The contiguous slice of a CPU storage described by `layout`, or an error naming `op`.
pub(crate) fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}
