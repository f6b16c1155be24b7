//! Differentiable ops. Each op has a fused CPU forward written here with a backward expressed in
//! candle tensor ops. On other devices: when no input tracks gradients, candle's fused kernel;
//! otherwise a composition of primitive candle ops (slower, but correct gradients).

/// Defines `fn NAME[generics](args) -> ret = BODY`: calls `BODY(args)`, an `#[inline(always)]`
/// function, from a copy compiled for AVX2 and FMA where the CPU has both, else as it is. The
/// element-wise loops `BODY` inlines (exponentials, the GELU, softmax rows) then run 8 lanes wide,
/// where the default x86-64 target gives them 4 at most; results are bit-identical (Rust never
/// fuses a multiply and an add on its own).
macro_rules! vectorized {
    ($(#[$m:meta])* $vis:vis fn $name:ident [$($gen:tt)*] ($($arg:ident: $ty:ty),* $(,)?)
        $(-> $ret:ty)? = $body:path) => {
        $(#[$m])*
        $vis fn $name<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if $crate::ops::avx2_fma() {
                #[target_feature(enable = "avx2,fma")]
                fn avx2<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                return unsafe { avx2($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

mod batched_matmul;
pub mod bf16;
mod constant_input_linear;
mod decode_attention;
mod few_rows;
mod frozen_linear;
mod gelu;
mod loss;
mod precomputed;
mod quantized;
mod rms_norm;
mod rope;
mod silu_mul;
mod softmax;

pub use batched_matmul::{batched_matmul, matmul};
pub use constant_input_linear::constant_input_linear;
pub use decode_attention::SequenceKeys;
pub(crate) use decode_attention::{decode_attention_cpu, decode_packed, packed_inputs};
pub use frozen_linear::{frozen_linear, frozen_linear_with, input_grad};
pub use gelu::{gelu_erf, gelu_erf_grad};
pub use loss::{cross_entropy, linear_cross_entropy, linear_cross_entropy_with};
pub use precomputed::Precomputed;
pub use quantized::QuantizedWeight;
pub use rms_norm::{layer_norm, rms_norm, rms_norm_input_grad};
pub use rope::{kv_heads_to_rows, kv_rows_to_heads, rope, KvShape};
pub use silu_mul::silu_mul;
pub(crate) use softmax::scaled_masked_softmax_over;
pub use softmax::{scaled_masked_softmax, softmax_backward, softmax_last_dim};

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// Whether the CPU has AVX2 and FMA: the vectorized copies of [`vectorized!`] and the small
/// products' kernels (checked once per product or row, not per element).
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Threads of candle's CPU pool, read once: candle's `get_num_threads` reads the environment
/// and `/proc/cpuinfo` on every call, which costs more than a decoding step's small products.
pub(crate) fn pool_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// The contiguous slice of a CPU storage described by `layout`, or an error naming `op`.
pub(crate) fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// A raw pointer into an output that candle's pool threads share, each writing its own part
/// (rows, columns or batch items; every user says which).
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// SAFETY: users hand each pool part a disjoint region of the output.
unsafe impl<T> Sync for SharedMut<T> {}

/// Runs `f(columns)` over candle's thread pool for consecutive ranges of `0..n`, one per thread
/// and each at least `min_width` wide (fewer parts when `n` is small); empty ranges are skipped.
/// The products that split their output by columns (each weight row read by one thread) use it.
pub(crate) fn column_parts(n: usize, min_width: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let parts = pool_threads().min(n.div_ceil(min_width.max(1))).max(1);
    let width = n.div_ceil(parts);
    candle_core::utils::barrier_pool().execute_chunked(parts, |range| {
        for p in range {
            let first = (p * width).min(n);
            let last = (first + width).min(n);
            if first < last {
                f(first..last);
            }
        }
    });
}

/// Runs `f(row_index, row)` over the rows (of `row_len`; `out.len()` is a multiple of it) of
/// `out`, spread over candle's CPU thread pool when there is enough work to pay for it.
pub(crate) fn par_rows<T: Send>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let row_len = row_len.max(1);
    debug_assert!(out.len().is_multiple_of(row_len), "par_rows: partial row");
    let rows = out.len() / row_len;
    if out.len() < 1 << 13 {
        for (r, row) in out.chunks_mut(row_len).enumerate() {
            f(r, row);
        }
        return;
    }
    // Every chunk of the pool gets a disjoint range of rows (below).
    let base = SharedMut(out.as_mut_ptr());
    let base = &base;
    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
        for r in range {
            // SAFETY: `r < rows`, so the row lies inside `out`, and no other chunk touches it.
            let row = unsafe { std::slice::from_raw_parts_mut(base.0.add(r * row_len), row_len) };
            f(r, row);
        }
    });
}

/// `exp` for the softmax kernels: the standard one for f64 (used by the f64 gradient tests), and
/// for f32 a branch-free version the compiler vectorizes (range reduction to `2^n exp(r)`,
/// `|r| <= ln2/2`, degree-6 polynomial: relative error about 2e-7, one or two ulp), exactly 0
/// below -87 so that masked keys get zero probability.
pub(crate) trait Exp: Copy {
    fn exp_fast(self) -> Self;
}

impl Exp for f64 {
    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }
}

impl Exp for f32 {
    #[inline(always)]
    fn exp_fast(self) -> Self {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
        const ROUND: f32 = 12_582_912.0;
        let x = self.clamp(-87.0, 88.0);
        let n = (x * LOG2E + ROUND) - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        // SAFETY: `x` is clamped to [-87, 88], so `n` is an integer in [-126, 127].
        let n = unsafe { n.to_int_unchecked::<i32>() };
        let scaled = p * f32::from_bits(((n + 127) as u32) << 23);
        if self < -87.0 {
            0.0
        } else {
            scaled
        }
    }
}

/// Lanes of the reductions below: independent accumulators, so the compiler can vectorize a sum
/// it would otherwise have to keep in order.
const LANES: usize = 8;

/// Largest element of a non-empty slice.
#[inline(always)]
pub(crate) fn lane_max<T: WithDType>(x: &[T]) -> T {
    let mut lanes = [x[0]; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let mut m = lanes[0];
    for &v in lanes[1..].iter().chain(rest) {
        if v > m {
            m = v;
        }
    }
    m
}

/// `sum(a * b)`.
#[inline(always)]
pub(crate) fn lane_dot<T: WithDType>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut s = T::zero();
    for l in lanes {
        s += l;
    }
    for (&x, &y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `sum(x)`.
#[inline(always)]
pub(crate) fn lane_sum<T: WithDType>(x: &[T]) -> T {
    let mut lanes = [T::zero(); LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            lanes[i] += c[i];
        }
    }
    let mut s = T::zero();
    for l in lanes.iter().chain(rest) {
        s += *l;
    }
    s
}
