//! `x W^T` for a few rows of `x` (decoding: one row per sequence), f32 on the CPU. gemm packs
//! its operands for large products; with one to a dozen rows that packing and its bookkeeping
//! cost more than the product, which should read each weight once and be limited by memory
//! bandwidth. Here each weight row is read once and multiplied with every row of `x` while it is
//! in L1, with AVX2/FMA when the CPU has them (checked at run time) and a portable loop
//! otherwise. The columns are split over candle's thread pool. The same file holds the small
//! products of decoding's attention (`batched_matmul`'s small blocks): scores as dot products
//! and probabilities times values as row updates (on AVX-512 where the CPU has it).

use candle_core::Layout;

use super::avx2_fma;

/// Most rows this kernel takes; larger products go to gemm.
pub(crate) const MAX_ROWS: usize = 16;

/// `a (m x k) · b (k x n)` when `a` is row-major, `b` is the transposed view of a row-major
/// `(n x k)` weight and `m <= MAX_ROWS`; `None` for any other shape or layout.
pub(crate) fn few_rows(a: &[f32], la: &Layout, b: &[f32], lb: &Layout) -> Option<Vec<f32>> {
    let (m, k, n) = (la.dims()[0], la.dims()[1], lb.dims()[1]);
    let (sa, sb) = (la.stride(), lb.stride());
    if m == 0 || m > MAX_ROWS || sa != [k, 1] || sb != [1, k] {
        return None;
    }
    let x = &a[la.start_offset()..la.start_offset() + m * k];
    let w = &b[lb.start_offset()..lb.start_offset() + n * k];
    let simd = avx2_fma();
    let mut out = vec![0f32; m * n];
    let dst = super::SharedMut(out.as_mut_ptr());
    let dst = &dst;
    // Parts of at least 64 columns; as many as threads.
    super::column_parts(n, 64, |columns| {
        // SAFETY: these rows of `w` lie inside it, and these columns of the output are written
        // by this part only.
        unsafe {
            dot_products(
                simd,
                (m, columns.len(), k),
                (x.as_ptr(), k),
                (w.as_ptr().add(columns.start * k), k),
                (dst.0.add(columns.start), n),
            )
        };
    });
    Some(out)
}

/// `out[i * out_row + j] = x_i . w_j` for `m` rows `x_i` and `n` rows `w_j` of length `k`, each
/// given by its first element and row stride, on the calling thread; `simd` from
/// [`avx2_fma`]. Each row of `w` is read once for every four rows of `x`.
///
/// # Safety
/// The rows must lie inside their buffers, and no other thread may write the output meanwhile.
pub(crate) unsafe fn dot_products(
    simd: bool,
    (m, n, k): (usize, usize, usize),
    (x, x_row): (*const f32, usize),
    (w, w_row): (*const f32, usize),
    (out, out_row): (*mut f32, usize),
) {
    let x_at = |i: usize| std::slice::from_raw_parts(x.add(i * x_row), k);
    for j in 0..n {
        let row = std::slice::from_raw_parts(w.add(j * w_row), k);
        let mut i = 0;
        while i + 4 <= m {
            let values = dot4(simd, [0, 1, 2, 3].map(|r| x_at(i + r)), row);
            for (r, value) in values.into_iter().enumerate() {
                *out.add((i + r) * out_row + j) = value;
            }
            i += 4;
        }
        for i in i..m {
            *out.add(i * out_row + j) = dot(simd, x_at(i), row);
        }
    }
}

/// `out_i += sum_t a[i, t] b_t` (added to what `out` holds, in order of `t`: a product split
/// into consecutive runs of `t` gives the same sums) for `m` rows of `a` (element `(i, t)` at `i * a_row + t * a_col`)
/// and `k` rows `b_t` of length `n` (row stride `b_row`): attention's probabilities times its
/// values, on the calling thread; `simd` from [`avx2_fma`]. With AVX2 (AVX-512), each row of `b`
/// is loaded once for every three rows of `a`, 32 (64, then 16) columns at a time.
///
/// # Safety
/// The rows must lie inside their buffers, and no other thread may write the output meanwhile.
pub(crate) unsafe fn row_updates(
    simd: bool,
    (m, n, k): (usize, usize, usize),
    (a, a_row, a_col): (*const f32, usize, usize),
    (b, b_row): (*const f32, usize),
    (out, out_row): (*mut f32, usize),
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        let wide = avx512();
        let mut first = 0;
        while first < m {
            let rows = (m - first).min(3);
            let a = (a.add(first * a_row), a_row, a_col);
            let out = (out.add(first * out_row), out_row);
            match (wide, rows) {
                (true, 1) => row_updates_avx512::<1>((n, k), a, (b, b_row), out),
                (true, 2) => row_updates_avx512::<2>((n, k), a, (b, b_row), out),
                (true, _) => row_updates_avx512::<3>((n, k), a, (b, b_row), out),
                (false, _) => row_updates_avx2(rows, (n, k), a, (b, b_row), out),
            }
            first += rows;
        }
        return;
    }
    let _ = simd;
    row_update_columns(m, (0, n, k), (a, a_row, a_col), (b, b_row), (out, out_row));
}

/// Columns `first..n` of [`row_updates`] for `rows` rows of `a`, without SIMD: the portable
/// product, and the columns the SIMD kernels leave over.
///
/// # Safety
/// As [`row_updates`].
unsafe fn row_update_columns(
    rows: usize,
    (first, n, k): (usize, usize, usize),
    (a, a_row, a_col): (*const f32, usize, usize),
    (b, b_row): (*const f32, usize),
    (out, out_row): (*mut f32, usize),
) {
    for i in 0..rows {
        let row = std::slice::from_raw_parts_mut(out.add(i * out_row + first), n - first);
        for t in 0..k {
            let scale = *a.add(i * a_row + t * a_col);
            let values = std::slice::from_raw_parts(b.add(t * b_row + first), n - first);
            for (o, &v) in row.iter_mut().zip(values) {
                *o += scale * v;
            }
        }
    }
}

/// [`row_updates`] for one to three rows of `a` with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_updates_avx2(
    rows: usize,
    (n, k): (usize, usize),
    (a, a_row, a_col): (*const f32, usize, usize),
    (b, b_row): (*const f32, usize),
    (out, out_row): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    let mut c = 0;
    while c + 32 <= n {
        let mut acc = [[_mm256_setzero_ps(); 4]; 3];
        for (r, sums) in acc.iter_mut().enumerate().take(rows) {
            for (l, sum) in sums.iter_mut().enumerate() {
                *sum = _mm256_loadu_ps(out.add(r * out_row + c + 8 * l));
            }
        }
        for t in 0..k {
            let values = b.add(t * b_row + c);
            let v = [0, 1, 2, 3].map(|l| _mm256_loadu_ps(values.add(8 * l)));
            for (r, sums) in acc.iter_mut().enumerate().take(rows) {
                let scale = _mm256_set1_ps(*a.add(r * a_row + t * a_col));
                for (sum, &vl) in sums.iter_mut().zip(&v) {
                    *sum = _mm256_fmadd_ps(scale, vl, *sum);
                }
            }
        }
        for (r, sums) in acc.iter().enumerate().take(rows) {
            for (l, sum) in sums.iter().enumerate() {
                _mm256_storeu_ps(out.add(r * out_row + c + 8 * l), *sum);
            }
        }
        c += 32;
    }
    row_update_columns(
        rows,
        (c, n, k),
        (a, a_row, a_col),
        (b, b_row),
        (out, out_row),
    );
}

/// [`row_updates`] for `R` (1 to 3) rows of `a` with AVX-512: 64 columns at a time (each row of
/// `b` loaded once for all `R` rows), then 16, then the rest one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_updates_avx512<const R: usize>(
    (n, k): (usize, usize),
    (a, a_row, a_col): (*const f32, usize, usize),
    (b, b_row): (*const f32, usize),
    (out, out_row): (*mut f32, usize),
) {
    let a = (a, a_row, a_col);
    let mut c = 0;
    while c + 64 <= n {
        columns_avx512::<R, 4>(c, k, a, (b, b_row), (out, out_row));
        c += 64;
    }
    while c + 16 <= n {
        columns_avx512::<R, 1>(c, k, a, (b, b_row), (out, out_row));
        c += 16;
    }
    row_update_columns(R, (c, n, k), a, (b, b_row), (out, out_row));
}

/// Columns `c..c + 16 V` of [`row_updates_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn columns_avx512<const R: usize, const V: usize>(
    c: usize,
    k: usize,
    (a, a_row, a_col): (*const f32, usize, usize),
    (b, b_row): (*const f32, usize),
    (out, out_row): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    let mut acc: [[__m512; V]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|l| _mm512_loadu_ps(out.add(r * out_row + c + 16 * l)))
    });
    for t in 0..k {
        let values = b.add(t * b_row + c);
        let v: [__m512; V] = std::array::from_fn(|l| _mm512_loadu_ps(values.add(16 * l)));
        for (r, sums) in acc.iter_mut().enumerate() {
            let scale = _mm512_set1_ps(*a.add(r * a_row + t * a_col));
            for (sum, &vl) in sums.iter_mut().zip(&v) {
                *sum = _mm512_fmadd_ps(scale, vl, *sum);
            }
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        for (l, sum) in sums.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * out_row + c + 16 * l), *sum);
        }
    }
}

/// Whether the CPU has AVX-512 F (checked once per product).
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `sum(a * b)`; `simd` from [`avx2_fma`].
fn dot(simd: bool, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the CPU has AVX2 and FMA (`simd` comes from `avx2_fma`).
        return unsafe { dot_avx2(a, b) };
    }
    let _ = simd;
    dot_portable(a, b)
}

/// `sum(x_r * w)` for four rows `x_r` of the length of `w`; `simd` from [`avx2_fma`].
fn dot4(simd: bool, x: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the CPU has AVX2 and FMA (`simd` comes from `avx2_fma`).
        return unsafe { dot4_avx2(x, w) };
    }
    let _ = simd;
    x.map(|row| dot_portable(row, w))
}

/// Eight independent sums (so that the compiler can vectorize), then their total.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Four accumulators hide the FMA latency.
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (l, sum) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * l));
            let y = _mm256_loadu_ps(pb.add(i + 8 * l));
            *sum = _mm256_fmadd_ps(x, y, *sum);
        }
        i += 32;
    }
    while i + 8 <= n {
        let x = _mm256_loadu_ps(pa.add(i));
        let y = _mm256_loadu_ps(pb.add(i));
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = hsum(sum);
    while i < n {
        total += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    total
}

/// The horizontal sum of eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_avx2(x: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = w.len();
    assert!(x.iter().all(|r| r.len() == n));
    let pw = w.as_ptr();
    let px = x.map(|r| r.as_ptr());
    // Two accumulators per row (eight in all) hide the FMA latency.
    let mut lo = [_mm256_setzero_ps(); 4];
    let mut hi = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 16 <= n {
        let w0 = _mm256_loadu_ps(pw.add(i));
        let w1 = _mm256_loadu_ps(pw.add(i + 8));
        for r in 0..4 {
            lo[r] = _mm256_fmadd_ps(_mm256_loadu_ps(px[r].add(i)), w0, lo[r]);
            hi[r] = _mm256_fmadd_ps(_mm256_loadu_ps(px[r].add(i + 8)), w1, hi[r]);
        }
        i += 16;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut total = hsum(_mm256_add_ps(lo[r], hi[r]));
        for t in i..n {
            total += *px[r].add(t) * *pw.add(t);
        }
        out[r] = total;
    }
    out
}
