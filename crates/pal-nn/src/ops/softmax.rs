use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType, D,
};

use super::{contiguous_slice, lane_dot, lane_max, lane_sum, par_rows, Exp};

/// Softmax over the last dimension with a backward: `dx = y * (g - sum(g * y))`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    scaled_masked_softmax(x, None, 1.0)
}

/// `softmax(scale * x + mask)` over the last dimension, in one pass per row on the CPU, with a
/// backward (`dx = scale * y * (g - sum(g * y))`; the mask is a constant).
///
/// `x` is `(batch, ..., rows, k)`; `mask`, if given, is `(batch or 1, rows, k)`: row `r` of a batch
/// item's slab of `x` gets mask row `r % rows`. Attention passes its scores with the query heads
/// folded into the rows, so one mask row serves every head.
pub fn scaled_masked_softmax(x: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    if let Some(mask) = mask {
        let (mb, rows, k) = mask.dims3()?;
        let b = x.dim(0)?;
        let ok = x.dim(D::Minus1)? == k
            && (mb == b || mb == 1)
            && x.elem_count().is_multiple_of(b * rows * k);
        if !ok {
            candle_core::bail!(
                "softmax: mask {:?} does not fit scores {:?}",
                mask.dims(),
                x.dims()
            );
        }
    }
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        let op = ScaledMaskedSoftmax { scale };
        return match mask {
            Some(mask) => x
                .contiguous()?
                .apply_op2(&mask.to_dtype(x.dtype())?.contiguous()?, op),
            None => x.contiguous()?.apply_op1(op),
        };
    }
    let scaled = (x * scale)?;
    let shifted = match mask {
        Some(mask) => {
            let (mb, rows, k) = mask.dims3()?;
            let b = x.dim(0)?;
            let slab = x.elem_count() / (b * rows * k);
            scaled
                .reshape((b, slab, rows, k))?
                .broadcast_add(&mask.to_dtype(x.dtype())?.reshape((mb, 1, rows, k))?)?
                .reshape(x.shape())?
        }
        None => scaled,
    };
    if shifted.track_op() {
        candle_nn::ops::softmax(&shifted, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(&shifted)
    }
}

/// The input gradient of [`scaled_masked_softmax`] from its output `y` and output gradient `g`:
/// `scale * y * (g - sum(g * y))`, one pass per row on the CPU. Has no backward itself.
pub fn softmax_backward(y: &Tensor, grad: &Tensor, scale: f64) -> Result<Tensor> {
    if y.device().is_cpu() && matches!(y.dtype(), DType::F32 | DType::F64) {
        return y
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward { scale });
    }
    let dot = (grad * y)?.sum_keepdim(D::Minus1)?;
    (y * grad.broadcast_sub(&dot)?)? * scale
}

/// Softmax of a row of already scaled (and masked) scores, in place; a fully masked row (all
/// -inf) becomes zeros rather than NaN. The one softmax loop of the CPU kernels.
pub(crate) fn softmax_in_place<T: WithDType + Exp>(row: &mut [T]) {
    let max = lane_max(row);
    if max.to_f64() == f64::NEG_INFINITY {
        row.iter_mut().for_each(|o| *o = T::zero());
        return;
    }
    for o in row.iter_mut() {
        *o = (*o - max).exp_fast();
    }
    let inv = T::one() / lane_sum(row);
    for o in row.iter_mut() {
        *o *= inv;
    }
}

struct ScaledMaskedSoftmax {
    scale: f64,
}

/// Softmax rows of `scale * x + mask`; `mask` holds `mask_rows` rows per batch item (or none).
fn softmax_rows<T: WithDType + Exp>(
    x: &[T],
    mask: Option<(&[T], usize, usize)>,
    k: usize,
    scale: f64,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let scale = T::from_f64(scale);
    let total_rows = x.len() / k.max(1);
    par_rows(&mut out, k, |r, row| {
        let xr = &x[r * k..(r + 1) * k];
        match mask {
            Some((m, mb, mask_rows)) => {
                // Rows of one batch item, then which mask row.
                let per_item = total_rows / mb.max(1);
                let item = if mb == 1 { 0 } else { r / per_item };
                let mr = item * mask_rows + r % mask_rows;
                let mrow = &m[mr * k..(mr + 1) * k];
                for ((o, &v), &mv) in row.iter_mut().zip(xr).zip(mrow) {
                    *o = v * scale + mv;
                }
            }
            None => {
                for (o, &v) in row.iter_mut().zip(xr) {
                    *o = v * scale;
                }
            }
        }
        softmax_in_place(row);
    });
    out
}

impl ScaledMaskedSoftmax {
    fn run(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        mask: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let k = lx.dims().last().copied().unwrap_or(1).max(1);
        let name = "softmax";
        let mask_dims = |l: &Layout| (l.dims()[0], l.dims()[1]);
        let out = match x.dtype() {
            DType::F32 => {
                let m = match mask {
                    Some((s, l)) => {
                        let (mb, rows) = mask_dims(l);
                        Some((contiguous_slice::<f32>(s, l, name)?, mb, rows))
                    }
                    None => None,
                };
                CpuStorage::F32(softmax_rows(
                    contiguous_slice::<f32>(x, lx, name)?,
                    m,
                    k,
                    self.scale,
                ))
            }
            DType::F64 => {
                let m = match mask {
                    Some((s, l)) => {
                        let (mb, rows) = mask_dims(l);
                        Some((contiguous_slice::<f64>(s, l, name)?, mb, rows))
                    }
                    None => None,
                };
                CpuStorage::F64(softmax_rows(
                    contiguous_slice::<f64>(x, lx, name)?,
                    m,
                    k,
                    self.scale,
                ))
            }
            dt => candle_core::bail!("softmax: unsupported dtype {dt:?} on cpu"),
        };
        Ok((out, lx.shape().clone()))
    }
}

impl CustomOp1 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "pal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(storage, layout, None)
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(softmax_backward(y, grad, self.scale)?))
    }
}

impl CustomOp2 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "pal-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, Some((s2, l2)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(softmax_backward(y, grad, self.scale)?), None))
    }
}

struct SoftmaxBackward {
    scale: f64,
}

fn softmax_backward_rows<T: WithDType>(y: &[T], g: &[T], k: usize, scale: f64) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    let scale = T::from_f64(scale);
    par_rows(&mut out, k, |r, row| {
        let (yr, gr) = (&y[r * k..(r + 1) * k], &g[r * k..(r + 1) * k]);
        let dot = lane_dot(yr, gr);
        for ((o, &a), &b) in row.iter_mut().zip(yr).zip(gr) {
            *o = scale * a * (b - dot);
        }
    });
    out
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "pal-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("softmax_backward: {:?} vs {:?}", l1.dims(), l2.dims());
        }
        let k = l1.dims().last().copied().unwrap_or(1).max(1);
        let name = "softmax_backward";
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(softmax_backward_rows(
                contiguous_slice::<f32>(s1, l1, name)?,
                contiguous_slice::<f32>(s2, l2, name)?,
                k,
                self.scale,
            )),
            DType::F64 => CpuStorage::F64(softmax_backward_rows(
                contiguous_slice::<f64>(s1, l1, name)?,
                contiguous_slice::<f64>(s2, l2, name)?,
                k,
                self.scale,
            )),
            dt => candle_core::bail!("{name}: unsupported dtype {dt:?} on cpu"),
        };
        Ok((out, l1.shape().clone()))
    }
}
