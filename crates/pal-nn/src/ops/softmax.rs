use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, InplaceOp1, InplaceOp2, Layout, Result, Shape, Tensor,
    WithDType, D,
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
    check_mask(x, mask)?;
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

/// [`scaled_masked_softmax`] written over `scores`' own storage, on the CPU in f32 and f64 when
/// no gradient is wanted: no second buffer the scores' size (at Whisper's 1,500 frames, 54 MB per
/// layer to allocate, clear and write). `scores` must be a fresh result nobody else holds (the
/// scores attention has just computed); elsewhere the out-of-place op.
pub(crate) fn scaled_masked_softmax_over(
    scores: Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let fits = scores.device().is_cpu()
        && matches!(scores.dtype(), DType::F32 | DType::F64)
        && scores.is_contiguous()
        && !scores.track_op();
    if !fits {
        return scaled_masked_softmax(&scores, mask, scale);
    }
    check_mask(&scores, mask)?;
    let op = ScaledMaskedSoftmax { scale };
    match mask {
        Some(mask) => scores.inplace_op2(&mask.to_dtype(scores.dtype())?.contiguous()?, &op)?,
        None => scores.inplace_op1(&op)?,
    }
    Ok(scores)
}

/// An error unless `mask` (if any) is `(batch or 1, rows, k)` for scores `x`.
fn check_mask(x: &Tensor, mask: Option<&Tensor>) -> Result<()> {
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
    Ok(())
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

vectorized! {
    /// Softmax of a row of already scaled (and masked) scores, in place; a fully masked row (all
    /// -inf) becomes zeros rather than NaN. The one softmax loop of the CPU kernels.
    pub(crate) fn softmax_in_place[T: WithDType + Exp](row: &mut [T]) = softmax_row
}

vectorized! {
    /// `softmax(scale * row + mask)` of one row, in place.
    fn scaled_softmax_row[T: WithDType + Exp](row: &mut [T], mask: Option<&[T]>, scale: T)
        = scaled_softmax_row_body
}

#[inline(always)]
fn scaled_softmax_row_body<T: WithDType + Exp>(row: &mut [T], mask: Option<&[T]>, scale: T) {
    match mask {
        Some(mask) => {
            for (o, &m) in row.iter_mut().zip(mask) {
                *o = *o * scale + m;
            }
        }
        None => {
            for o in row.iter_mut() {
                *o *= scale;
            }
        }
    }
    softmax_row(row);
}

#[inline(always)]
fn softmax_row<T: WithDType + Exp>(row: &mut [T]) {
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

/// Softmax rows of `scale * x + mask`, over `x` itself; `mask` holds `mask_rows` rows per batch
/// item (or none).
fn softmax_rows<T: WithDType + Exp>(
    x: &mut [T],
    mask: Option<(&[T], usize, usize)>,
    k: usize,
    scale: f64,
) {
    let scale = T::from_f64(scale);
    let total_rows = x.len() / k.max(1);
    par_rows(x, k, |r, row| {
        let mrow = mask.map(|(m, mb, mask_rows)| {
            // Rows of one batch item, then which mask row.
            let per_item = total_rows / mb.max(1);
            let item = if mb == 1 { 0 } else { r / per_item };
            let mr = item * mask_rows + r % mask_rows;
            &m[mr * k..(mr + 1) * k]
        });
        scaled_softmax_row(row, mrow, scale);
    });
}

impl ScaledMaskedSoftmax {
    /// The softmax rows of `x` (`k` wide) written over it, with the mask of `mask`'s storage.
    fn rows<T: WithDType + Exp>(
        &self,
        x: &mut [T],
        k: usize,
        mask: Option<(&CpuStorage, &Layout)>,
    ) -> Result<()> {
        let mask = match mask {
            Some((s, l)) => Some((
                contiguous_slice::<T>(s, l, "softmax")?,
                l.dims()[0],
                l.dims()[1],
            )),
            None => None,
        };
        softmax_rows(x, mask, k, self.scale);
        Ok(())
    }

    /// Out of place: a copy of `x`, then the rows over it.
    fn run(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        mask: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let k = lx.dims().last().copied().unwrap_or(1).max(1);
        let out = match x.dtype() {
            DType::F32 => {
                let mut out = contiguous_slice::<f32>(x, lx, "softmax")?.to_vec();
                self.rows(&mut out, k, mask)?;
                CpuStorage::F32(out)
            }
            DType::F64 => {
                let mut out = contiguous_slice::<f64>(x, lx, "softmax")?.to_vec();
                self.rows(&mut out, k, mask)?;
                CpuStorage::F64(out)
            }
            dt => candle_core::bail!("softmax: unsupported dtype {dt:?} on cpu"),
        };
        Ok((out, lx.shape().clone()))
    }

    /// In place, over `x`'s storage.
    fn run_in_place(
        &self,
        x: &mut CpuStorage,
        lx: &Layout,
        mask: Option<(&CpuStorage, &Layout)>,
    ) -> Result<()> {
        let k = lx.dims().last().copied().unwrap_or(1).max(1);
        let Some((start, end)) = lx.contiguous_offsets() else {
            candle_core::bail!("softmax: input must be contiguous");
        };
        match x {
            CpuStorage::F32(data) => self.rows(&mut data[start..end], k, mask),
            CpuStorage::F64(data) => self.rows(&mut data[start..end], k, mask),
            other => candle_core::bail!("softmax: unsupported dtype {:?} on cpu", other.dtype()),
        }
    }
}

impl InplaceOp1 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "pal-softmax-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        self.run_in_place(storage, layout, None)
    }
}

impl InplaceOp2 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "pal-softmax-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        self.run_in_place(s1, l1, Some((s2, l2)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Over the scores' own storage, the softmax is bit for bit the out-of-place one, with and
    /// without a mask (a batch of 2 with its own mask rows, 3 heads folded into the rows).
    #[test]
    fn softmax_over_scores_equals_out_of_place() -> Result<()> {
        let scores = (Tensor::randn(0f32, 1.0, (2, 3, 5, 1500), &Device::Cpu)? * 8.0)?;
        let mask = Tensor::randn(0f32, 1.0, (2, 5, 1500), &Device::Cpu)?
            .ge(0.0)?
            .where_cond(
                &Tensor::zeros((2, 5, 1500), DType::F32, &Device::Cpu)?,
                &Tensor::full(f32::NEG_INFINITY, (2, 5, 1500), &Device::Cpu)?,
            )?;
        for mask in [None, Some(&mask)] {
            let expected = scaled_masked_softmax(&scores, mask, 0.125)?;
            let over = scaled_masked_softmax_over(scores.copy()?, mask, 0.125)?;
            let diff = (expected - over)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0);
        }
        Ok(())
    }
}
