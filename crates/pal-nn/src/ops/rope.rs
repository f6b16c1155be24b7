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

/// Shape of the key/value blocks [`kv_rows_to_heads`] and [`kv_heads_to_rows`] convert.
#[derive(Debug, Clone, Copy)]
pub struct KvShape {
    /// Batch items.
    pub batch: usize,
    /// Rows (positions) per item.
    pub rows: usize,
    /// Key/value heads.
    pub heads: usize,
    /// Head width.
    pub head_dim: usize,
}

/// Keys and values as rows, `(batch * rows, 2 * heads * head_dim)` (`[k | v]` per row, as one
/// matrix product gives them), to heads first and stacked, `(2, batch, heads, rows, head_dim)`,
/// the keys rotated by `rope = (cos, sin)` (as for [`rope`]) when given. One pass on the CPU
/// instead of two transposes, a rotation and a stack. No backward: used inside nodes whose
/// backward is written out, with [`kv_heads_to_rows`] as its transpose.
pub fn kv_rows_to_heads(
    kv: &Tensor,
    shape: KvShape,
    rope: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    convert_kv(kv, shape, rope, true)
}

/// The transpose of [`kv_rows_to_heads`] (for gradients): `(2, batch, heads, rows, head_dim)` to
/// rows `(batch * rows, 2 * heads * head_dim)`, the keys rotated back (`rope(g, cos, -sin)`).
pub fn kv_heads_to_rows(
    kv: &Tensor,
    shape: KvShape,
    rope: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    convert_kv(kv, shape, rope, false)
}

fn convert_kv(
    kv: &Tensor,
    shape: KvShape,
    rope_tables: Option<(&Tensor, &Tensor)>,
    to_heads: bool,
) -> Result<Tensor> {
    let KvShape {
        batch: b,
        rows: n,
        heads: h,
        head_dim: dh,
    } = shape;
    let fused = kv.device().is_cpu() && matches!(kv.dtype(), DType::F32 | DType::F64);
    if !fused {
        // The same conversion from candle ops.
        if to_heads {
            let split = |part: usize| -> Result<Tensor> {
                kv.narrow(1, part * h * dh, h * dh)?
                    .reshape((b, n, h, dh))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let mut k = split(0)?;
            if let Some((cos, sin)) = rope_tables {
                k = rope(&k, cos, sin)?;
            }
            return Tensor::stack(&[&k, &split(1)?], 0);
        }
        let mut k = kv.get(0)?.contiguous()?;
        if let Some((cos, sin)) = rope_tables {
            k = rope(&k, cos, &sin.neg()?)?;
        }
        let rows = |t: Tensor| t.transpose(1, 2)?.contiguous()?.reshape((b * n, h * dh));
        return Tensor::cat(&[&rows(k)?, &rows(kv.get(1)?)?], 1);
    }
    let op = ConvertKv {
        shape,
        rotate: rope_tables.is_some(),
        to_heads,
    };
    let (cos, sin) = match rope_tables {
        Some((c, s)) => (c.contiguous()?, s.contiguous()?),
        None => {
            let dummy = Tensor::zeros(1, kv.dtype(), kv.device())?;
            (dummy.clone(), dummy)
        }
    };
    kv.contiguous()?.apply_op3_no_bwd(&cos, &sin, &op)
}

struct ConvertKv {
    shape: KvShape,
    rotate: bool,
    to_heads: bool,
}

impl ConvertKv {
    fn run<T: WithDType>(&self, x: &[T], cos: &[T], sin: &[T], per_batch: bool) -> Vec<T> {
        let KvShape {
            batch: b,
            rows: n,
            heads: h,
            head_dim: dh,
        } = self.shape;
        let half = dh / 2;
        let width = 2 * h * dh;
        let mut out = vec![T::zero(); x.len()];
        // Rotation of one head row from `src` into `dst`; `sign` -1 rotates back.
        let rotate = |dst: &mut [T], src: &[T], bi: usize, ti: usize, sign: T| {
            let cs = if per_batch { bi * n * half } else { 0 } + ti * half;
            let (c, s) = (&cos[cs..cs + half], &sin[cs..cs + half]);
            let (x1, x2) = src.split_at(half);
            let (o1, o2) = dst.split_at_mut(half);
            for i in 0..half {
                let si = s[i] * sign;
                o1[i] = x1[i] * c[i] - x2[i] * si;
                o2[i] = x2[i] * c[i] + x1[i] * si;
            }
        };
        if self.to_heads {
            // Output rows: (part, batch, head, position).
            par_rows(&mut out, dh, |r, row| {
                let (part, rest) = (r / (b * h * n), r % (b * h * n));
                let (bi, hi, ti) = (rest / (h * n), (rest / n) % h, rest % n);
                let start = (bi * n + ti) * width + part * h * dh + hi * dh;
                let src = &x[start..start + dh];
                if part == 0 && self.rotate {
                    rotate(row, src, bi, ti, T::one());
                } else {
                    row.copy_from_slice(src);
                }
            });
        } else {
            // Output rows: (batch, position), each `[k heads | v heads]`.
            par_rows(&mut out, width, |r, row| {
                let (bi, ti) = (r / n, r % n);
                for part in 0..2 {
                    for hi in 0..h {
                        let start = (((part * b + bi) * h + hi) * n + ti) * dh;
                        let src = &x[start..start + dh];
                        let dst = &mut row[part * h * dh + hi * dh..part * h * dh + (hi + 1) * dh];
                        if part == 0 && self.rotate {
                            rotate(dst, src, bi, ti, T::zero() - T::one());
                        } else {
                            dst.copy_from_slice(src);
                        }
                    }
                }
            });
        }
        out
    }
}

impl CustomOp3 for ConvertKv {
    fn name(&self) -> &'static str {
        "pal-convert-kv"
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
        let KvShape {
            batch: b,
            rows: n,
            heads: h,
            head_dim: dh,
        } = self.shape;
        if l1.shape().elem_count() != 2 * b * n * h * dh {
            candle_core::bail!("convert_kv: {:?} does not hold {:?}", l1.dims(), self.shape);
        }
        let per_batch = l2.dims().len() == 3;
        let out_shape = if self.to_heads {
            Shape::from((2, b, h, n, dh))
        } else {
            Shape::from((b * n, 2 * h * dh))
        };
        let name = "convert_kv";
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.run(
                contiguous_slice::<f32>(s1, l1, name)?,
                contiguous_slice::<f32>(s2, l2, name)?,
                contiguous_slice::<f32>(s3, l3, name)?,
                per_batch,
            )),
            DType::F64 => CpuStorage::F64(self.run(
                contiguous_slice::<f64>(s1, l1, name)?,
                contiguous_slice::<f64>(s2, l2, name)?,
                contiguous_slice::<f64>(s3, l3, name)?,
                per_batch,
            )),
            dt => candle_core::bail!("{name}: unsupported dtype {dt:?} on cpu"),
        };
        Ok((out, out_shape))
    }
}
