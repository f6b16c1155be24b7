//! The AVX2 bf16 kernel: the tiles of [`super::pack`] multiplied on CPUs without a bf16 product
//! instruction (AMD Zen 1-3, Intel Haswell to Ice Lake). A bf16 value is the top half of an f32,
//! so a weight tile's row of `k` pairs widens to two f32 vectors per 8 columns with one shift
//! (the even `k`) and one mask (the odd `k`), and the block is summed with f32 fused
//! multiply-adds. Arithmetic costs what f32's does; the bytes read are half: what attention over
//! a long LAL prefix is bound by. Only the rows a block says are live are computed (a decoding
//! step's three query rows, not the 32 a tile pair holds).

use std::arch::x86_64::*;

use super::pack::{TILE, TILE_K, TILE_ROWS};
use super::x86::Block;

/// Rows summed at once: their accumulators (two vectors of 8 columns each), the weight row's
/// four widened vectors and two broadcasts fit the 16 registers.
const ROWS: usize = 4;
/// Tiles along `k` whose activations are widened at once (a buffer of 16 KiB).
const K_CHUNK: usize = 32;

/// A [`Block`] with AVX2 and FMA: rows `0 .. live_rows` only (the others are left as they are).
///
/// # Safety
/// The CPU must have AVX2 and FMA; pointers as in [`super::x86::amx_block`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_block(block: &Block) {
    let live = block.live_rows.min(2 * TILE_ROWS);
    let mut row0 = 0;
    while row0 < live {
        match live - row0 {
            1 => rows_block::<1>(block, row0),
            2 => rows_block::<2>(block, row0),
            3 => rows_block::<3>(block, row0),
            _ => rows_block::<ROWS>(block, row0),
        }
        row0 += ROWS;
    }
}

/// Rows `row0 .. row0 + R` of a [`Block`] (all in one 16-row half when `R` divides 16 and
/// `row0` is a multiple of `ROWS`, as [`avx2_block`] calls it).
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_block<const R: usize>(block: &Block, row0: usize) {
    let Block {
        a: [a0, a1],
        b,
        k_tiles,
        c,
        ldc,
        accumulate,
        ..
    } = *block;
    let (a, within) = if row0 < TILE_ROWS {
        (a0, row0)
    } else {
        (a1, row0 - TILE_ROWS)
    };
    let odd = _mm256_set1_epi32(0xffff_0000u32 as i32);
    // Only the elements written are read: no need to zero 16 KiB per block.
    let mut buffer = std::mem::MaybeUninit::<[f32; ROWS * K_CHUNK * TILE_K]>::uninit();
    let wide = buffer.as_mut_ptr() as *mut f32;
    // With `k` in one chunk, the second half reuses the first's widened rows.
    let one_chunk = k_tiles <= K_CHUNK;
    for (half, b) in b.into_iter().enumerate() {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                let out = c.add((row0 + r) * ldc + half * 16);
                *acc = [_mm256_loadu_ps(out), _mm256_loadu_ps(out.add(8))];
            }
        }
        let mut t0 = 0;
        while t0 < k_tiles {
            let kt = K_CHUNK.min(k_tiles - t0);
            let width = kt * TILE_K;
            // The rows' activations of these tiles, widened to f32 (row r at r * width).
            if !(one_chunk && half == 1) {
                for r in 0..R {
                    for t in 0..kt {
                        let src = a.add((t0 + t) * TILE + (within + r) * TILE_K);
                        let dst = wide.add(r * width + t * TILE_K);
                        for j in 0..TILE_K {
                            *dst.add(j) = f32::from_bits((*src.add(j) as u32) << 16);
                        }
                    }
                }
            }
            for t in 0..kt {
                let tile = b.add((t0 + t) * TILE);
                for p in 0..TILE_K / 2 {
                    // Row p of the tile: 16 columns' pairs (k = 2p, 2p + 1), 8 columns a vector.
                    let w = tile.add(p * TILE_K) as *const __m256i;
                    let (w0, w1) = (_mm256_loadu_si256(w), _mm256_loadu_si256(w.add(1)));
                    let even = [
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w0)),
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w1)),
                    ];
                    let odd = [
                        _mm256_castsi256_ps(_mm256_and_si256(w0, odd)),
                        _mm256_castsi256_ps(_mm256_and_si256(w1, odd)),
                    ];
                    let at = t * TILE_K + 2 * p;
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = wide.add(r * width + at);
                        let (xe, xo) = (_mm256_broadcast_ss(&*x), _mm256_broadcast_ss(&*x.add(1)));
                        for v in 0..2 {
                            acc[v] = _mm256_fmadd_ps(xe, even[v], acc[v]);
                            acc[v] = _mm256_fmadd_ps(xo, odd[v], acc[v]);
                        }
                    }
                }
            }
            t0 += kt;
        }
        for (r, acc) in acc.iter().enumerate() {
            let out = c.add((row0 + r) * ldc + half * 16);
            _mm256_storeu_ps(out, acc[0]);
            _mm256_storeu_ps(out.add(8), acc[1]);
        }
    }
}

/// `exp(x)` in each lane for `x <= 0`, as [`super::x86`]'s AVX-512 one: `x` clamped at -87,
/// `2^n e^r` with `|r| <= ln2/2`, a degree-5 polynomial, `2^n` built in the exponent bits.
#[inline(always)]
unsafe fn exp_avx2(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 120.0);
    for c in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
}

/// Lanes `8 v .. 8 v + 8` of a 32-column tile that are real columns, when the first `real` are.
#[inline(always)]
unsafe fn real_lanes(real: u8, v: usize) -> __m256 {
    let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let count = _mm256_set1_epi32(real as i32 - 8 * v as i32);
    _mm256_castsi256_ps(_mm256_cmpgt_epi32(count, index))
}

/// Eight non-negative f32 rounded to bf16 (nearest, ties to even), as 32-bit lanes.
#[inline(always)]
unsafe fn round_bf16(x: __m256) -> __m256i {
    let bits = _mm256_castps_si256(x);
    let tie = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
    let rounded = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), tie));
    _mm256_srli_epi32::<16>(rounded)
}

/// [`super::x86::softmax_row_avx512`] with AVX2: one query row of a chunk's scores as softmax
/// numerators packed for `P V`; returns `(largest, sum)`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `row` holds `32 real.len()` floats and `out` reaches row
/// `TILE_K` values into `real.len()` tiles.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax_row_avx2(row: *const f32, real: &[u8], out: *mut u16) -> (f32, f32) {
    let none = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut largest = none;
    for (t, &n) in real.iter().enumerate() {
        for v in 0..4 {
            let x = _mm256_loadu_ps(row.add(t * TILE_K + 8 * v));
            largest = _mm256_max_ps(largest, _mm256_blendv_ps(none, x, real_lanes(n, v)));
        }
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), largest);
    let largest = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let finite = largest > f32::NEG_INFINITY;
    let shift = _mm256_set1_ps(if finite { largest } else { 0.0 });
    let mut sum = _mm256_setzero_ps();
    for (t, &n) in real.iter().enumerate() {
        let mut rounded = [_mm256_setzero_si256(); 4];
        for (v, rounded) in rounded.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(row.add(t * TILE_K + 8 * v));
            let mut e = exp_avx2(_mm256_sub_ps(x, shift));
            if n < 32 || !finite {
                let keep = if finite {
                    real_lanes(n, v)
                } else {
                    _mm256_setzero_ps()
                };
                e = _mm256_and_ps(e, keep);
            }
            sum = _mm256_add_ps(sum, e);
            *rounded = round_bf16(e);
        }
        // packus interleaves 128-bit lanes: put the four quarters back in order.
        for h in 0..2 {
            let packed = _mm256_packus_epi32(rounded[2 * h], rounded[2 * h + 1]);
            let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
            _mm256_storeu_si256(out.add(t * TILE + 16 * h) as *mut __m256i, ordered);
        }
    }
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    (largest, lanes.iter().sum())
}
