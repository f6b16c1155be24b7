use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, D,
};

use super::{contiguous_slice, lane_dot, par_rows};

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
        let mut out = vec![T::zero(); x.len()];
        par_rows(&mut out, dim, |r, row| {
            let xr = &x[r * dim..(r + 1) * dim];
            let sq = lane_dot(xr, xr);
            let r = T::from_f64(1.0 / (sq.to_f64() / dim as f64 + self.eps).sqrt());
            for ((o, &v), &w) in row.iter_mut().zip(xr).zip(w) {
                *o = v * r * w;
            }
        });
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
        let dx = rms_norm_input_grad(x, weight, grad, self.eps)?;
        // The gain's gradient only when the gain trains (full fine-tuning).
        let dw = if weight.track_op() {
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
                .sqrt()?
                .recip()?;
            let dim = x.dim(D::Minus1)?;
            Some((grad * x.broadcast_mul(&r)?)?.reshape(((), dim))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// The input gradient of [`rms_norm`] for the output gradient `grad`, in one pass over the rows
/// on the CPU (f32, f64): `dx = r * g*w - x * r^3 * mean(g*w*x)` with `r = 1/rms(x)`. Used by
/// the op's backward and by closed-form layer backwards; it has no backward itself.
pub fn rms_norm_input_grad(x: &Tensor, weight: &Tensor, grad: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op3_no_bwd(
            &weight.contiguous()?,
            &grad.contiguous()?,
            &RmsNormInputGrad { eps },
        );
    }
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let gw = grad.broadcast_mul(weight)?;
    let dot = (&gw * x)?.mean_keepdim(D::Minus1)?;
    gw.broadcast_mul(&r)? - x.broadcast_mul(&(dot * r.powf(3.0)?)?)?
}

struct RmsNormInputGrad {
    eps: f64,
}

impl RmsNormInputGrad {
    fn rows<T: WithDType>(&self, x: &[T], w: &[T], g: &[T]) -> Vec<T> {
        let dim = w.len();
        let mut out = vec![T::zero(); x.len()];
        par_rows(&mut out, dim, |r, row| {
            let (xr, gr) = (&x[r * dim..(r + 1) * dim], &g[r * dim..(r + 1) * dim]);
            let (mut sq, mut dot) = (T::zero(), T::zero());
            for ((&x, &g), &w) in xr.iter().zip(gr).zip(w) {
                sq += x * x;
                dot += g * w * x;
            }
            let inv = 1.0 / (sq.to_f64() / dim as f64 + self.eps).sqrt();
            let r = T::from_f64(inv);
            let c = T::from_f64(dot.to_f64() / dim as f64 * inv * inv * inv);
            for (((o, &x), &g), &w) in row.iter_mut().zip(xr).zip(gr).zip(w) {
                *o = r * g * w - x * c;
            }
        });
        out
    }
}

impl CustomOp3 for RmsNormInputGrad {
    fn name(&self) -> &'static str {
        "pal-rms-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dim = l1.dims().last().copied().unwrap_or(0);
        if l2.dims() != [dim] || l3.dims() != l1.dims() {
            candle_core::bail!(
                "rms_norm_input_grad: weight {:?} and grad {:?} do not match input {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            );
        }
        let name = "rms_norm_input_grad";
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.rows(
                contiguous_slice::<f32>(s1, l1, name)?,
                contiguous_slice::<f32>(s2, l2, name)?,
                contiguous_slice::<f32>(s3, l3, name)?,
            )),
            DType::F64 => CpuStorage::F64(self.rows(
                contiguous_slice::<f64>(s1, l1, name)?,
                contiguous_slice::<f64>(s2, l2, name)?,
                contiguous_slice::<f64>(s3, l3, name)?,
            )),
            dt => candle_core::bail!("{name}: unsupported dtype {dt:?} on cpu"),
        };
        Ok((out, l1.shape().clone()))
    }
}
