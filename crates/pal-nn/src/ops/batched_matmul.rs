use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::{column_parts, SharedMut};

/// `a @ b` over leading batch dimensions, `(..., m, k) x (..., k, n)`, for tensors that need no
/// gradient (inference, and the written-out backwards). Either operand may be a transposed view
/// of its last two dimensions. On the CPU each thread of candle's pool runs whole products, one
/// batch item each; candle's matmul instead splits every small product over the threads, which
/// for attention-sized blocks (a few hundred rows) costs more in synchronisation than it gains.
/// Elsewhere, or when an operand tracks gradients, candle's matmul.
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let cpu_float = a.device().is_cpu() && matches!(a.dtype(), DType::F32 | DType::F64);
    if !cpu_float || a.track_op() || b.track_op() || a.rank() < 3 || a.rank() != b.rank() {
        return a.matmul(b);
    }
    let batch_dims = &a.dims()[..a.rank() - 2];
    if batch_dims != &b.dims()[..b.rank() - 2] {
        return a.matmul(b);
    }
    let (a, b) = (collapsible(a)?, collapsible(b)?);
    a.apply_op2_no_bwd(&b, &BatchedMatmul)
}

/// `t` itself when its batch dimensions collapse into one stride and its last two dimensions are
/// row- or column-major, else a contiguous copy.
fn collapsible(t: &Tensor) -> Result<Tensor> {
    let (dims, stride) = (t.dims(), t.stride());
    let r = dims.len();
    let matrix_ok = stride[r - 1] == 1 || stride[r - 2] == 1;
    let batch_ok = (0..r - 3).all(|i| stride[i] == stride[i + 1] * dims[i + 1]);
    if matrix_ok && batch_ok {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

struct BatchedMatmul;

/// `dst = a b` for one `m x k` by `k x n` block on the calling thread; `a` and `b` are given by
/// (row, column) strides, `dst` is row-major with row stride `dst_row` and holds zeros (the
/// small products' row updates add to it).
///
/// # Safety
/// The pointers and strides must describe blocks inside their buffers, and no other thread may
/// touch this block of `dst` meanwhile.
unsafe fn gemm_block<T: candle_core::WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_row: usize,
    a: *const T,
    (a_row, a_col): (usize, usize),
    b: *const T,
    (b_row, b_col): (usize, usize),
) {
    if m <= SMALL_ROWS && m * n * k <= SMALL_WORK && (b_row == 1 || b_col == 1) {
        small_block(
            (m, n, k),
            dst,
            dst_row,
            a,
            (a_row, a_col),
            b,
            (b_row, b_col),
        );
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_row as isize,
        false,
        a,
        a_col as isize,
        a_row as isize,
        b,
        b_col as isize,
        b_row as isize,
        T::zero(),
        T::one(),
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Products with at most this many rows of `a`, and [`SMALL_WORK`] multiply-adds, skip gemm:
/// attention of one decoded row per sequence is a few thousand multiply-adds per head, less than
/// gemm's dispatch and packing cost.
const SMALL_ROWS: usize = 16;
/// See [`SMALL_ROWS`].
const SMALL_WORK: usize = 1 << 18;

/// [`gemm_block`] for small products, in plain loops that read memory in order: dot products
/// when the columns of `b` are contiguous (`q k^T`), row updates when its rows are (`p v`).
///
/// # Safety
/// As [`gemm_block`]; `b_row == 1` or `b_col == 1`.
unsafe fn small_block<T: candle_core::WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_row: usize,
    a: *const T,
    (a_row, a_col): (usize, usize),
    b: *const T,
    (b_row, b_col): (usize, usize),
) {
    if b_row == 1 && a_col == 1 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (checked above); the caller's contract covers the rows.
        super::few_rows::dot_products(
            super::avx2_fma(),
            (m, n, k),
            (a as *const f32, a_row),
            (b as *const f32, b_col),
            (dst as *mut f32, dst_row),
        );
        return;
    }
    if b_col == 1 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (checked above); the caller's contract covers the rows.
        super::few_rows::row_updates(
            super::avx2_fma(),
            (m, n, k),
            (a as *const f32, a_row, a_col),
            (b as *const f32, b_row),
            (dst as *mut f32, dst_row),
        );
        return;
    }
    let mut a_row_buf = vec![T::zero(); k];
    for i in 0..m {
        for (kk, v) in a_row_buf.iter_mut().enumerate() {
            *v = *a.add(i * a_row + kk * a_col);
        }
        let out = std::slice::from_raw_parts_mut(dst.add(i * dst_row), n);
        if b_row == 1 {
            for (j, o) in out.iter_mut().enumerate() {
                let column = std::slice::from_raw_parts(b.add(j * b_col), k);
                *o = super::lane_dot(&a_row_buf, column);
            }
        } else {
            out.fill(T::zero());
            for (kk, &scale) in a_row_buf.iter().enumerate() {
                let row = std::slice::from_raw_parts(b.add(kk * b_row), n);
                for (o, &v) in out.iter_mut().zip(row) {
                    *o += scale * v;
                }
            }
        }
    }
}

fn run<T: candle_core::WithDType>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    let r = la.dims().len();
    let (m, k, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
    let batches: usize = la.dims()[..r - 2].iter().product();
    let (sa, sb) = (la.stride(), lb.stride());
    let (a_batch, b_batch) = (sa[r - 3], sb[r - 3]);
    let (a_off, b_off) = (la.start_offset(), lb.start_offset());
    let mut out = vec![T::zero(); batches * m * n];
    let dst = SharedMut(out.as_mut_ptr());
    let dst = &dst;
    candle_core::utils::barrier_pool().execute_chunked(batches, |range| {
        for i in range {
            // SAFETY: offsets and strides come from the operands' layouts, which candle checked
            // against their storages; batch item `i` of the output is written by this thread only.
            unsafe {
                gemm_block(
                    (m, n, k),
                    dst.0.add(i * m * n),
                    n,
                    a.as_ptr().add(a_off + i * a_batch),
                    (sa[r - 2], sa[r - 1]),
                    b.as_ptr().add(b_off + i * b_batch),
                    (sb[r - 2], sb[r - 1]),
                )
            }
        }
    });
    out
}

impl CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "pal-batched-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let r = l1.dims().len();
        if l1.dims()[r - 1] != l2.dims()[r - 2] {
            candle_core::bail!(
                "batched_matmul: {:?} x {:?} do not fit",
                l1.dims(),
                l2.dims()
            );
        }
        let mut out_dims = l1.dims().to_vec();
        out_dims[r - 1] = l2.dims()[r - 1];
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(run(a, l1, b, l2)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(run(a, l1, b, l2)),
            _ => candle_core::bail!("batched_matmul: f32 or f64 operands of one dtype"),
        };
        Ok((out, Shape::from(out_dims)))
    }
}

/// `a @ b` for matrices, `(m, k) x (k, n)` (either may be a transposed view), for tensors that
/// need no gradient: on the CPU the result's columns are split over candle's thread pool, each
/// part one single-threaded gemm (no synchronisation inside a product, and the weight is packed
/// once overall). candle's matmul splits every product over rayon's threads instead; on the
/// training shapes ours is up to 1.8x faster (`cargo run --release -p pal-nn --example
/// matmul_shapes`). Elsewhere, or with gradients, candle's matmul.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let cpu_float = a.device().is_cpu() && matches!(a.dtype(), DType::F32 | DType::F64);
    if !cpu_float || a.track_op() || b.track_op() || a.rank() != 2 || b.rank() != 2 {
        return a.matmul(b);
    }
    let (a, b) = (matrix_layout(a)?, matrix_layout(b)?);
    a.apply_op2_no_bwd(&b, &ColumnSplitMatmul)
}

/// `t` when it is row- or column-major, else a contiguous copy.
fn matrix_layout(t: &Tensor) -> Result<Tensor> {
    let s = t.stride();
    if s[0] == 1 || s[1] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

struct ColumnSplitMatmul;

/// The product of [`matmul`] from storages and layouts (also used by `frozen_linear`).
pub(crate) fn matmul_cpu(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (m, k) = (l1.dims()[0], l1.dims()[1]);
    let (k2, n) = (l2.dims()[0], l2.dims()[1]);
    if k != k2 || l1.dims().len() != 2 || l2.dims().len() != 2 {
        candle_core::bail!("matmul: {:?} x {:?} do not fit", l1.dims(), l2.dims());
    }
    let out = match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(
            super::few_rows::few_rows(a, l1, b, l2).unwrap_or_else(|| split_columns(a, l1, b, l2)),
        ),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(split_columns(a, l1, b, l2)),
        _ => candle_core::bail!("matmul: f32 or f64 operands of one dtype"),
    };
    Ok((out, Shape::from((m, n))))
}

fn split_columns<T: candle_core::WithDType>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    let (m, k, n) = (la.dims()[0], la.dims()[1], lb.dims()[1]);
    let (sa, sb) = (la.stride(), lb.stride());
    let mut out = vec![T::zero(); m * n];
    let dst = SharedMut(out.as_mut_ptr());
    let dst = &dst;
    let (a_off, b_off) = (la.start_offset(), lb.start_offset());
    // Parts of at least 16 columns; as many as threads.
    column_parts(n, 16, |columns| {
        // SAFETY: offsets and strides come from the operands' layouts, which candle checked
        // against their storages; these columns of the output are written by this part only.
        unsafe {
            gemm_block(
                (m, columns.len(), k),
                dst.0.add(columns.start),
                n,
                a.as_ptr().add(a_off),
                (sa[0], sa[1]),
                b.as_ptr().add(b_off + columns.start * sb[1]),
                (sb[0], sb[1]),
            )
        }
    });
    out
}

impl CustomOp2 for ColumnSplitMatmul {
    fn name(&self) -> &'static str {
        "pal-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        matmul_cpu(s1, l1, s2, l2)
    }
}
