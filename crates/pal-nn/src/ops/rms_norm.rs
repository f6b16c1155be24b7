use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType, D};

use super::contiguous_slice;

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`, with a backward for both
/// `x` and `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let tracking = x.track_op() || weight.track_op();
    let fused_dtype = matches!(x.dtype(), DType::F32 | DType::F64);
    if x.device().is_cpu() && fused_dtype && x.dtype() == weight.dtype() {
        x.contiguous()?.apply_op2(weight, RmsNorm { eps })
    } else if !tracking {
        candle_nn::ops::rms_norm(x, weight, eps as f32)
    } else {
        rms_norm_composite(x, weight, eps)
    }
}

fn rms_norm_composite(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&r)?.to_dtype(dtype)?.broadcast_mul(weight)
}

/// LayerNorm over the last dimension, composed of primitive ops (differentiable everywhere).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let tracking = x.track_op() || weight.track_op() || bias.track_op();
    if !tracking && x.dtype() != DType::F64 {
        return candle_nn::ops::layer_norm(x, weight, bias, eps as f32);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

struct RmsNorm {
    eps: f64,
}

impl RmsNorm {
    fn forward<T: WithDType>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let dim = w.len();
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(dim) {
            let mean_sq = row.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>() / dim as f64;
            let r = 1.0 / (mean_sq + self.eps).sqrt();
            out.extend(
                row.iter()
                    .zip(w)
                    .map(|(v, w)| T::from_f64(v.to_f64() * r * w.to_f64())),
            );
        }
        out
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "pal-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dim = l1.dims().last().copied().unwrap_or(0);
        if l2.dims() != [dim] {
            candle_core::bail!(
                "rms_norm: weight {:?} does not match input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.forward(
                contiguous_slice::<f32>(s1, l1, "rms_norm")?,
                contiguous_slice::<f32>(s2, l2, "rms_norm")?,
            )),
            DType::F64 => CpuStorage::F64(self.forward(
                contiguous_slice::<f64>(s1, l1, "rms_norm")?,
                contiguous_slice::<f64>(s2, l2, "rms_norm")?,
            )),
            dt => candle_core::bail!("rms_norm: unsupported dtype {dt:?} on cpu"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // y_j = w_j x_j r with r = (mean(x^2) + eps)^-1/2 and dr/dx_j = -r^3 x_j / d, so
        // dx_j = (g w)_j r - x_j r^3 mean(g w x),  dw_j = sum over rows of g_j x_j r.
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let gw = grad.broadcast_mul(weight)?;
        let dot = (&gw * x)?.mean_keepdim(D::Minus1)?;
        let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(dot * r.powf(3.0)?)?)?)?;
        let dim = x.dim(D::Minus1)?;
        let dw = (grad * x.broadcast_mul(&r)?)?.reshape(((), dim))?.sum(0)?;
        Ok((Some(dx), Some(dw)))
    }
}
