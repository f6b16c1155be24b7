use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, D};

use super::{contiguous_slice, par_rows};

/// Rotary position embedding in the Hugging Face ("rotate half") layout, with a backward.
///
/// `x` is `(batch, heads, seq, head_dim)`; `cos` and `sin` are `(seq, head_dim / 2)`, or
/// `(batch, seq, head_dim / 2)` when positions differ per batch item (padded batches).
/// The backward is the inverse rotation: `rope(g, cos, -sin)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, _h, t, d) = x.dims4()?;
    let expect_last = d / 2;
    for cs in [cos, sin] {
        let ok = match cs.dims() {
            [ct, cd] => *ct == t && *cd == expect_last,
            [cb, ct, cd] => *cb == b && *ct == t && *cd == expect_last,
            _ => false,
        };
        if !ok {
            candle_core::bail!(
                "rope: cos/sin {:?} do not fit input {:?}",
                cs.dims(),
                x.dims()
            );
        }
    }
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?
            .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
    } else if !x.track_op() {
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos.contiguous()?, &sin.contiguous()?)
    } else {
        rope_composite(x, cos, sin)
    }
}

fn rope_composite(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let (cos, sin) = match cos.rank() {
        2 => (
            cos.unsqueeze(0)?.unsqueeze(0)?,
            sin.unsqueeze(0)?.unsqueeze(0)?,
        ),
        _ => (cos.unsqueeze(1)?, sin.unsqueeze(1)?),
    };
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[y1, y2], D::Minus1)
}

struct Rope;

fn rope_cpu<T: WithDType>(
    x: &[T],
    dims: &[usize],
    cos: &[T],
    sin: &[T],
    per_batch: bool,
) -> Vec<T> {
    let (_, h, t, d) = (dims[0], dims[1], dims[2], dims[3]);
    let half = d / 2;
    let mut out = vec![T::zero(); x.len()];
    // One row per (batch, head, position).
    par_rows(&mut out, d, |r, row| {
        let (bi, ti) = (r / (h * t), r % t);
        let cs = if per_batch { bi * t * half } else { 0 } + ti * half;
        let (cos, sin) = (&cos[cs..cs + half], &sin[cs..cs + half]);
        let (x1, x2) = x[r * d..(r + 1) * d].split_at(half);
        let (o1, o2) = row.split_at_mut(half);
        for i in 0..half {
            o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
            o2[i] = x2[i] * cos[i] + x1[i] * sin[i];
        }
    });
    out
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "pal-rope"
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
        let per_batch = l2.dims().len() == 3;
        let dims = l1.dims();
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(rope_cpu(
                contiguous_slice::<f32>(s1, l1, "rope")?,
                dims,
                contiguous_slice::<f32>(s2, l2, "rope")?,
                contiguous_slice::<f32>(s3, l3, "rope")?,
                per_batch,
            )),
            DType::F64 => CpuStorage::F64(rope_cpu(
                contiguous_slice::<f64>(s1, l1, "rope")?,
                dims,
                contiguous_slice::<f64>(s2, l2, "rope")?,
                contiguous_slice::<f64>(s3, l3, "rope")?,
                per_batch,
            )),
            dt => candle_core::bail!("rope: unsupported dtype {dt:?} on cpu"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(rope(grad, cos, &sin.neg()?)?), None, None))
    }
}
