use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType, D};

use super::{contiguous_slice, lane_max, lane_sum, par_rows, Exp};

/// Mean cross-entropy of `logits` `(rows, vocab)` against `targets` `(rows)` (u32):
/// `mean(logsumexp(logits) - logits[target])`, computed in f32 or wider. On the CPU one fused
/// pass per row forward and backward (`(softmax - onehot) / rows`); elsewhere composed of
/// differentiable candle ops.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    let targets = checked_targets(targets, rows, vocab)?;
    let logits = if logits.dtype() == DType::F64 {
        logits.clone()
    } else {
        logits.to_dtype(DType::F32)?
    };
    if logits.device().is_cpu() {
        let per_row = logits
            .contiguous()?
            .apply_op1(CrossEntropyRows { targets })?;
        return per_row.mean_all();
    }
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let index = Tensor::new(targets.as_slice(), logits.device())?.unsqueeze(1)?;
    let picked = shifted.gather(&index, 1)?;
    (lse - picked)?.mean_all()
}

/// `targets` as ids, checked: one per row (at least one row), each inside the vocabulary.
fn checked_targets(targets: &Tensor, rows: usize, vocab: usize) -> Result<Vec<u32>> {
    if rows == 0 {
        candle_core::bail!("cross_entropy: no rows");
    }
    let targets: Vec<u32> = targets.to_dtype(DType::U32)?.to_vec1()?;
    if targets.len() != rows {
        candle_core::bail!("cross_entropy: {} targets for {rows} rows", targets.len());
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross_entropy: target {bad} outside the vocabulary of {vocab}");
    }
    Ok(targets)
}

/// Per-row cross-entropy `(rows, 1)`; backward `g_row * (softmax(row) - onehot(target))`.
struct CrossEntropyRows {
    targets: Vec<u32>,
}

vectorized! {
    /// `(max, log sum exp(x - max))` of a row.
    fn row_lse[T: WithDType + Exp](row: &[T]) -> (T, T) = row_lse_body
}

vectorized! {
    /// `g * softmax(row)`, into `out`.
    fn softmax_times_row[T: WithDType + Exp](out: &mut [T], row: &[T], g: T)
        = softmax_times_row_body
}

#[inline(always)]
fn softmax_times_row_body<T: WithDType + Exp>(out: &mut [T], row: &[T], g: T) {
    let (max, lse) = row_lse_body(row);
    let shift = max + lse;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v - shift).exp_fast() * g;
    }
}

#[inline(always)]
fn row_lse_body<T: WithDType + Exp>(row: &[T]) -> (T, T) {
    let max = lane_max(row);
    let mut lanes = [T::zero(); 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += (c[i] - max).exp_fast();
        }
    }
    let mut sum = lane_sum(&lanes);
    for &v in rest {
        sum += (v - max).exp_fast();
    }
    (max, T::from_f64(sum.to_f64().ln()))
}

fn losses<T: WithDType + Exp>(x: &[T], vocab: usize, targets: &[u32]) -> Vec<T> {
    let mut out = vec![T::zero(); targets.len()];
    par_rows(&mut out, 1, |r, o| {
        let row = &x[r * vocab..(r + 1) * vocab];
        let (max, lse) = row_lse(row);
        o[0] = max + lse - row[targets[r] as usize];
    });
    out
}

fn gradients<T: WithDType + Exp>(x: &[T], g: &[T], vocab: usize, targets: &[u32]) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    par_rows(&mut out, vocab, |r, o| {
        let row = &x[r * vocab..(r + 1) * vocab];
        softmax_times_row(o, row, g[r]);
        o[targets[r] as usize] -= g[r];
    });
    out
}

impl CustomOp1 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "pal-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let vocab = layout.dims()[1];
        let name = "cross_entropy";
        let out = match storage.dtype() {
            DType::F32 => CpuStorage::F32(losses(
                contiguous_slice::<f32>(storage, layout, name)?,
                vocab,
                &self.targets,
            )),
            DType::F64 => CpuStorage::F64(losses(
                contiguous_slice::<f64>(storage, layout, name)?,
                vocab,
                &self.targets,
            )),
            dt => candle_core::bail!("{name}: unsupported dtype {dt:?} on cpu"),
        };
        Ok((out, Shape::from((self.targets.len(), 1))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let vocab = x.dim(1)?;
        let x = x.contiguous()?;
        let grad = grad.contiguous()?.flatten_all()?;
        let dx = match x.dtype() {
            DType::F32 => Tensor::from_vec(
                gradients(
                    &x.flatten_all()?.to_vec1::<f32>()?,
                    &grad.to_vec1::<f32>()?,
                    vocab,
                    &self.targets,
                ),
                x.shape(),
                x.device(),
            )?,
            _ => Tensor::from_vec(
                gradients(
                    &x.flatten_all()?.to_vec1::<f64>()?,
                    &grad.to_dtype(DType::F64)?.to_vec1::<f64>()?,
                    vocab,
                    &self.targets,
                ),
                x.shape(),
                x.device(),
            )?,
        };
        Ok(Some(dx))
    }
}

/// Mean cross-entropy of the logits `hidden @ weight^T` (`hidden` `(rows, d)`, a frozen output
/// projection `weight` `(vocab, d)`) against `targets` `(rows)`: the same number as
/// [`cross_entropy`] of [`super::frozen_linear`], as one graph node on the CPU. Its backward
/// computes the logits' gradient (`softmax - onehot`) and at once the hidden states' gradient
/// from it, so the `(rows, vocab)` gradient never passes through candle's gradient store (which
/// would zero-fill and add a buffer of that size).
pub fn linear_cross_entropy(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    linear_cross_entropy_with(hidden, weight, None, targets)
}

/// [`linear_cross_entropy`] with the projection's products (logits and the hidden states'
/// gradient) in bf16 when `weight` has a bf16 form (the loss itself stays f32).
pub fn linear_cross_entropy_with(
    hidden: &Tensor,
    weight: &Tensor,
    bf16: Option<&super::bf16::Bf16Weight>,
    targets: &Tensor,
) -> Result<Tensor> {
    let fused = hidden.device().is_cpu()
        && matches!(hidden.dtype(), DType::F32 | DType::F64)
        && hidden.dtype() == weight.dtype()
        && !weight.track_op();
    if !fused {
        return cross_entropy(&super::frozen_linear_with(hidden, weight, bf16)?, targets);
    }
    let (rows, _) = hidden.dims2()?;
    let vocab = weight.dim(0)?;
    let targets = checked_targets(targets, rows, vocab)?;
    let bf16 = bf16.filter(|_| hidden.dtype() == DType::F32);
    let logits = super::frozen_linear_with(&hidden.detach(), weight, bf16)?;
    let per_row = {
        let (storage, layout) = logits.storage_and_layout();
        let name = "cross_entropy";
        match &*storage {
            candle_core::Storage::Cpu(s @ CpuStorage::F32(_)) => Tensor::from_vec(
                losses(contiguous_slice::<f32>(s, layout, name)?, vocab, &targets),
                (rows, 1),
                hidden.device(),
            )?,
            candle_core::Storage::Cpu(s) => Tensor::from_vec(
                losses(contiguous_slice::<f64>(s, layout, name)?, vocab, &targets),
                (rows, 1),
                hidden.device(),
            )?,
            _ => candle_core::bail!("{name}: logits off the CPU"),
        }
    };
    let node = LinearCrossEntropy {
        logits,
        weight: weight.clone(),
        bf16: bf16.cloned(),
        targets,
        per_row: super::Precomputed::new("cross-entropy", per_row),
    };
    hidden.apply_op1(node)?.mean_all()
}

/// The node of [`linear_cross_entropy`]: input the hidden rows, output the per-row losses.
struct LinearCrossEntropy {
    logits: Tensor,
    weight: Tensor,
    bf16: Option<super::bf16::Bf16Weight>,
    targets: Vec<u32>,
    per_row: super::Precomputed,
}

impl CustomOp1 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "pal-linear-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.per_row.cpu()
    }

    fn bwd(&self, _hidden: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let vocab = self.logits.dim(1)?;
        let g = grad.flatten_all()?;
        let d_logits = {
            let (storage, layout) = self.logits.storage_and_layout();
            let name = "cross_entropy";
            match &*storage {
                candle_core::Storage::Cpu(s @ CpuStorage::F32(_)) => Tensor::from_vec(
                    gradients(
                        contiguous_slice::<f32>(s, layout, name)?,
                        &g.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                        vocab,
                        &self.targets,
                    ),
                    self.logits.shape(),
                    self.logits.device(),
                )?,
                candle_core::Storage::Cpu(s) => Tensor::from_vec(
                    gradients(
                        contiguous_slice::<f64>(s, layout, name)?,
                        &g.to_dtype(DType::F64)?.to_vec1::<f64>()?,
                        vocab,
                        &self.targets,
                    ),
                    self.logits.shape(),
                    self.logits.device(),
                )?,
                _ => candle_core::bail!("{name}: logits off the CPU"),
            }
        };
        Ok(Some(super::input_grad(
            &d_logits,
            &self.weight,
            self.bf16.as_ref(),
        )?))
    }
}
