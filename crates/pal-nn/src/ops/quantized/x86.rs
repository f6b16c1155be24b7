//! The x86-64 kernels: one tile of [`TILE`] weight rows against up to eight quantized rows of
//! `x`. For each block index, the tile's values are widened to 16-bit pairs once (sixteen
//! vectors, one pair per row in each 32-bit lane) and used for every row of `x`: per row, sixteen
//! products of a weight vector with an activation pair broadcast to all lanes (`vpdpwssd` on
//! 512-bit vectors; `vpmaddwd` and an add on 256-bit ones, a half tile at a time, with AVX2),
//! then one conversion and two multiply-adds by the block's scales. Each lane ends as one output,
//! and both kernels do the same float operations per lane as [`tile_portable`], so all three
//! give identical results.
//!
//! [`tile_portable`]: super::layout::tile_portable

use std::arch::x86_64::*;

use super::layout::{BlockFormat, Offset, Row, Values, BLOCK, TILE};
use super::GROUP;

/// The product of rows `0..R` written out row by row (`R` is a constant), so that the
/// accumulators stay in registers.
macro_rules! each_row {
    ($row:ident) => {
        $row!(0);
        $row!(1);
        $row!(2);
        $row!(3);
        $row!(4);
        $row!(5);
        $row!(6);
        $row!(7);
    };
}

/// The sixteen pair products of one row and block, written out (a loop here kept the weight
/// vectors on the stack): `$sums[c] = $product($sums[c], $w[k], at)`, where `at` points to pair
/// `k` of the row's block (two 16-bit activations), for `$product` to broadcast to every lane.
/// Pairs of the block's first half (values 0..16) go to chains 0 and 1, of its second half to
/// chains 2 and 3 (Q6_K scales each half on its own); the order interleaves the four chains.
macro_rules! pair_products {
    ($product:expr, $sums:ident, $w:ident, $pairs:ident) => {
        pair_products!(@each $product, $sums, $w, $pairs;
            0 8 1 9 2 10 3 11 4 12 5 13 6 14 7 15)
    };
    (@each $product:expr, $sums:ident, $w:ident, $pairs:ident; $($k:literal)*) => {
        $( $sums[$k % 2 + 2 * ($k / 8)] =
            $product($sums[$k % 2 + 2 * ($k / 8)], $w[$k], $pairs.add($k)); )*
    };
}

/// `acc + vpdpwssd(w, pair broadcast to every lane)` as one instruction. Written in assembly:
/// for a generic x86-64 target LLVM splits `_mm512_dpwssd_epi32` on a chain of sums into
/// `vpmaddwd` and `vpaddd`, twice the instructions of the product this kernel is bound by.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd_broadcast(acc: __m512i, w: __m512i, pair: *const i32) -> __m512i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {w}, dword ptr [{pair}]{{1to16}}",
        acc = inout(zmm_reg) acc,
        w = in(zmm_reg) w,
        pair = in(reg) pair,
        options(pure, readonly, nostack, preserves_flags),
    );
    acc
}

/// Asks for the weights [`PREFETCH_BLOCKS`] block indices ahead of `at` (possibly in the next
/// tile, which the same thread reads next; past the buffer's end a prefetch is a no-op): with
/// few rows per tile, the products outrun the hardware prefetcher's reads from memory.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn prefetch_ahead(at: *const u8, block_bytes: usize) {
    let ahead = at.wrapping_add(PREFETCH_BLOCKS * block_bytes);
    let mut line = 0;
    while line < block_bytes {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
        line += 64;
    }
}

/// Block indices between a weight read and its prefetch.
const PREFETCH_BLOCKS: usize = 16;

/// Independent integer sums per row and block: one chain of sixteen dependent products would
/// wait on the instruction's latency (four chains measured fastest at 1 to 8 rows).
const CHAINS: usize = 4;

/// One tile against `R` quantized rows, on 512-bit vectors (AVX-512 F, BW and VNNI): row `r` of
/// the result holds the tile's sixteen outputs for row `r` of `x`. The format is a constant
/// (`F`, [`BlockFormat::id`]), so that its choices cost nothing inside the loops.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_vnni<const R: usize, const F: u8>(
    tile: &[u8],
    x: &[Row; GROUP],
) -> [[f32; TILE]; GROUP] {
    let format = BlockFormat::from_id(F);
    let block_bytes = format.tile_block_bytes();
    let pair_mask = _mm512_set1_epi32(0x000F_000F);
    let high_mask = _mm512_set1_epi32(0x0010_0010);
    let scales = |at: *const u8| {
        if format.f32_scales() {
            _mm512_loadu_ps(at as *const f32)
        } else {
            _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i))
        }
    };
    let scale_bytes = if format.f32_scales() {
        4 * TILE
    } else {
        2 * TILE
    };
    let mut acc = [_mm512_setzero_ps(); GROUP];
    for b in 0..tile.len() / block_bytes {
        let mut at = tile.as_ptr().add(b * block_bytes);
        prefetch_ahead(at, block_bytes);
        let d = scales(at);
        at = at.add(scale_bytes);
        let d_high = if format.split_scales() {
            let s = scales(at);
            at = at.add(scale_bytes);
            s
        } else {
            d
        };
        let m = match format.offset() {
            Offset::Stored => {
                let s = scales(at);
                at = at.add(scale_bytes);
                s
            }
            Offset::OfScale(k) => _mm512_mul_ps(d, _mm512_set1_ps(k)),
            Offset::None => _mm512_setzero_ps(),
        };
        // Vector k: value pair k of the block (values 2k, 2k + 1) for every row of the tile.
        let mut w = [_mm512_setzero_si512(); BLOCK / 2];
        if format.values() == Values::Bytes {
            for (k, wk) in w.iter_mut().enumerate() {
                *wk = _mm512_cvtepi8_epi16(_mm256_loadu_si256(at.add(32 * k) as *const __m256i));
            }
        } else {
            for s in 0..4 {
                let v = _mm512_loadu_si512(at.add(64 * s) as *const __m512i);
                w[4 * s] = _mm512_and_si512(v, pair_mask);
                w[4 * s + 1] = _mm512_and_si512(_mm512_srli_epi32::<4>(v), pair_mask);
                w[4 * s + 2] = _mm512_and_si512(_mm512_srli_epi32::<8>(v), pair_mask);
                w[4 * s + 3] = _mm512_and_si512(_mm512_srli_epi32::<12>(v), pair_mask);
            }
            if format.values() == Values::NibblesHigh {
                // Pair p's fifth bits are bits p and 16 + p of the plane: moved to bits 4, 20.
                let plane = _mm512_loadu_si512(at.add(256) as *const __m512i);
                for s in 0..4 {
                    let h = _mm512_srl_epi32(plane, _mm_cvtsi32_si128(4 * s as i32));
                    let fifth = [
                        _mm512_slli_epi32::<4>(h),
                        _mm512_slli_epi32::<3>(h),
                        _mm512_slli_epi32::<2>(h),
                        _mm512_slli_epi32::<1>(h),
                    ];
                    for (j, bits) in fifth.into_iter().enumerate() {
                        let high = _mm512_and_si512(bits, high_mask);
                        w[4 * s + j] = _mm512_or_si512(w[4 * s + j], high);
                    }
                }
            }
        }
        macro_rules! row {
            ($r:literal) => {
                if $r < R {
                    let pairs = x[$r].values.as_ptr().add(b * BLOCK) as *const i32;
                    let mut sums = [_mm512_setzero_si512(); CHAINS];
                    pair_products!(dpwssd_broadcast, sums, w, pairs);
                    let low = _mm512_add_epi32(sums[0], sums[1]);
                    let high = _mm512_add_epi32(sums[2], sums[3]);
                    let xs = _mm512_set1_ps(x[$r].scales[b]);
                    if format.split_scales() {
                        let (dl, dh) = (_mm512_mul_ps(d, xs), _mm512_mul_ps(d_high, xs));
                        acc[$r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(low), dl, acc[$r]);
                        acc[$r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(high), dh, acc[$r]);
                    } else {
                        let sum = _mm512_add_epi32(low, high);
                        let scale = _mm512_mul_ps(d, xs);
                        acc[$r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[$r]);
                    }
                    if format.offset() != Offset::None {
                        acc[$r] = _mm512_fmadd_ps(m, _mm512_set1_ps(x[$r].sums[b]), acc[$r]);
                    }
                }
            };
        }
        each_row!(row);
    }
    let mut out = [[0f32; TILE]; GROUP];
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
    out
}

/// One tile against `R` quantized rows, on 256-bit vectors (AVX2): each half of the tile in
/// turn, with `vpmaddwd` and an add for each product.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<const R: usize, const F: u8>(
    tile: &[u8],
    x: &[Row; GROUP],
) -> [[f32; TILE]; GROUP] {
    let format = BlockFormat::from_id(F);
    const HALF: usize = TILE / 2;
    let block_bytes = format.tile_block_bytes();
    let pair_mask = _mm256_set1_epi32(0x000F_000F);
    let high_mask = _mm256_set1_epi32(0x0010_0010);
    let size = if format.f32_scales() { 4 } else { 2 };
    let scale_bytes = size * TILE;
    let mut out = [[0f32; TILE]; GROUP];
    for h in 0..2 {
        // This half's eight scales of the sixteen at `at`.
        let scales = |at: *const u8| {
            let at = at.add(size * HALF * h);
            if format.f32_scales() {
                _mm256_loadu_ps(at as *const f32)
            } else {
                _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i))
            }
        };
        let mut acc = [_mm256_setzero_ps(); GROUP];
        for b in 0..tile.len() / block_bytes {
            let mut at = tile.as_ptr().add(b * block_bytes);
            if h == 0 {
                prefetch_ahead(at, block_bytes);
            }
            let d = scales(at);
            at = at.add(scale_bytes);
            let d_high = if format.split_scales() {
                let s = scales(at);
                at = at.add(scale_bytes);
                s
            } else {
                d
            };
            let m = match format.offset() {
                Offset::Stored => {
                    let s = scales(at);
                    at = at.add(scale_bytes);
                    s
                }
                Offset::OfScale(k) => _mm256_mul_ps(d, _mm256_set1_ps(k)),
                Offset::None => _mm256_setzero_ps(),
            };
            let mut w = [_mm256_setzero_si256(); BLOCK / 2];
            if format.values() == Values::Bytes {
                for (k, wk) in w.iter_mut().enumerate() {
                    let bytes = _mm_loadu_si128(at.add(32 * k + 16 * h) as *const __m128i);
                    *wk = _mm256_cvtepi8_epi16(bytes);
                }
            } else {
                for s in 0..4 {
                    let v = _mm256_loadu_si256(at.add(64 * s + 32 * h) as *const __m256i);
                    w[4 * s] = _mm256_and_si256(v, pair_mask);
                    w[4 * s + 1] = _mm256_and_si256(_mm256_srli_epi32::<4>(v), pair_mask);
                    w[4 * s + 2] = _mm256_and_si256(_mm256_srli_epi32::<8>(v), pair_mask);
                    w[4 * s + 3] = _mm256_and_si256(_mm256_srli_epi32::<12>(v), pair_mask);
                }
                if format.values() == Values::NibblesHigh {
                    let plane = _mm256_loadu_si256(at.add(256 + 32 * h) as *const __m256i);
                    for s in 0..4 {
                        let hs = _mm256_srl_epi32(plane, _mm_cvtsi32_si128(4 * s as i32));
                        let fifth = [
                            _mm256_slli_epi32::<4>(hs),
                            _mm256_slli_epi32::<3>(hs),
                            _mm256_slli_epi32::<2>(hs),
                            _mm256_slli_epi32::<1>(hs),
                        ];
                        for (j, bits) in fifth.into_iter().enumerate() {
                            let high = _mm256_and_si256(bits, high_mask);
                            w[4 * s + j] = _mm256_or_si256(w[4 * s + j], high);
                        }
                    }
                }
            }
            macro_rules! row {
                ($r:literal) => {
                    if $r < R {
                        let pairs = x[$r].values.as_ptr().add(b * BLOCK) as *const i32;
                        let mut sums = [_mm256_setzero_si256(); CHAINS];
                        let product = |sum, w, at: *const i32| {
                            let pair = _mm256_set1_epi32(std::ptr::read_unaligned(at));
                            _mm256_add_epi32(sum, _mm256_madd_epi16(w, pair))
                        };
                        pair_products!(product, sums, w, pairs);
                        let low = _mm256_add_epi32(sums[0], sums[1]);
                        let high = _mm256_add_epi32(sums[2], sums[3]);
                        let xs = _mm256_set1_ps(x[$r].scales[b]);
                        if format.split_scales() {
                            let (dl, dh) = (_mm256_mul_ps(d, xs), _mm256_mul_ps(d_high, xs));
                            acc[$r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(low), dl, acc[$r]);
                            acc[$r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high), dh, acc[$r]);
                        } else {
                            let sum = _mm256_add_epi32(low, high);
                            let scale = _mm256_mul_ps(d, xs);
                            acc[$r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc[$r]);
                        }
                        if format.offset() != Offset::None {
                            acc[$r] = _mm256_fmadd_ps(m, _mm256_set1_ps(x[$r].sums[b]), acc[$r]);
                        }
                    }
                };
            }
            each_row!(row);
        }
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr().add(HALF * h), acc[r]);
        }
    }
    out
}

/// One block of 32 activations quantized to 16 bits (see [`QuantizedRows`]) with AVX-512:
/// returns the scale and the sum of the integers. The same values as the portable loop: the
/// conversion rounds to nearest, ties to even, and every `|v / d|` is at most 32767.
///
/// [`QuantizedRows`]: super::layout::QuantizedRows
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_block_avx512(
    block: &[f32; BLOCK],
    ints: &mut [i16; BLOCK],
) -> (f32, i32) {
    let low = _mm512_loadu_ps(block.as_ptr());
    let high = _mm512_loadu_ps(block.as_ptr().add(16));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
    let d = amax / 32767.0;
    let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let low = _mm512_cvtps_epi32(_mm512_mul_ps(low, inv));
    let high = _mm512_cvtps_epi32(_mm512_mul_ps(high, inv));
    let total = _mm512_reduce_add_epi32(_mm512_add_epi32(low, high));
    _mm256_storeu_si256(
        ints.as_mut_ptr() as *mut __m256i,
        _mm512_cvtepi32_epi16(low),
    );
    _mm256_storeu_si256(
        ints.as_mut_ptr().add(16) as *mut __m256i,
        _mm512_cvtepi32_epi16(high),
    );
    (d, total)
}
