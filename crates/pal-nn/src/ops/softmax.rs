use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType, D};

use super::contiguous_slice;

/// Softmax over the last dimension with a backward: `dx = y * (g - sum(g * y))`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(SoftmaxLastDim)
    } else if !x.track_op() {
        candle_nn::ops::softmax_last_dim(x)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

struct SoftmaxLastDim;

fn softmax_rows<T: WithDType>(x: &[T], dim: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let max = row
            .iter()
            .map(|v| v.to_f64())
            .fold(f64::NEG_INFINITY, f64::max);
        let start = out.len();
        let mut sum = 0.0;
        for v in row {
            let e = if max == f64::NEG_INFINITY {
                0.0
            } else {
                (v.to_f64() - max).exp()
            };
            sum += e;
            out.push(T::from_f64(e));
        }
        // A fully masked row (all -inf) yields zeros rather than NaN.
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        for v in &mut out[start..] {
            *v = T::from_f64(v.to_f64() * inv);
        }
    }
    out
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "pal-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dim = layout.dims().last().copied().unwrap_or(1).max(1);
        let out = match storage.dtype() {
            DType::F32 => CpuStorage::F32(softmax_rows(
                contiguous_slice::<f32>(storage, layout, "softmax")?,
                dim,
            )),
            DType::F64 => CpuStorage::F64(softmax_rows(
                contiguous_slice::<f64>(storage, layout, "softmax")?,
                dim,
            )),
            dt => candle_core::bail!("softmax: unsupported dtype {dt:?} on cpu"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * grad.broadcast_sub(&dot)?)?))
    }
}
