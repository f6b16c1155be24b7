use candle_core::{DType, Result, Tensor, D};

/// Mean cross-entropy of `logits` `(rows, vocab)` against `targets` `(rows)` (u32), composed of
/// differentiable ops: `logsumexp(logits) - logits[target]`, computed in f32 or wider.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (rows, _) = logits.dims2()?;
    if rows == 0 {
        candle_core::bail!("cross_entropy: no rows");
    }
    let logits = if logits.dtype() == DType::F64 {
        logits.clone()
    } else {
        logits.to_dtype(DType::F32)?
    };
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    (lse - picked)?.mean_all()
}
