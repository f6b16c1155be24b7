//! The x86 bf16 kernels: packing activations with `vcvtne2ps2bf16`, AMX tiles
//! (`tdpbf16ps`, written with `asm!`: the intrinsics are not stable), and AVX512-BF16
//! (`vdpbf16ps`). Both multiply the tiles of [`super::pack`] and accumulate in f32. And, for
//! attention over a packed prefix, a row of scores turned into softmax numerators packed as
//! tiles ([`softmax_row_avx512`]).

use std::arch::asm;
use std::arch::x86_64::*;

use super::pack::{TILE, TILE_K, TILE_ROWS};
use super::BlockPart;

/// [`super::pack::pack_rows`] with AVX-512: 32 values at a time, rounded to nearest even.
///
/// # Safety
/// The CPU must have AVX512F, AVX512BW and AVX512-BF16; `out` must hold
/// `[row_tiles(m)][k_tiles][TILE]` and `rows` lie within its row tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn pack_rows_avx512(
    x: &[f32],
    m: usize,
    k: usize,
    k_tiles: usize,
    rows: std::ops::Range<usize>,
    out: &mut [u16],
) {
    assert!(rows.end.div_ceil(TILE_ROWS) * k_tiles * TILE <= out.len() && m * k <= x.len());
    let full = k / TILE_K;
    for row in rows {
        let (tile_row, r) = (row / TILE_ROWS, row % TILE_ROWS);
        let base = out.as_mut_ptr().add(tile_row * k_tiles * TILE + r * TILE_K);
        if row >= m {
            for t in 0..k_tiles {
                _mm512_storeu_si512(base.add(t * TILE) as *mut _, _mm512_setzero_si512());
            }
            continue;
        }
        let src = x.as_ptr().add(row * k);
        for t in 0..full {
            let p = src.add(t * TILE_K);
            let packed = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(p.add(16)), _mm512_loadu_ps(p));
            _mm512_storeu_si512(
                base.add(t * TILE) as *mut _,
                std::mem::transmute::<__m512bh, __m512i>(packed),
            );
        }
        for t in full..k_tiles {
            let dst = std::slice::from_raw_parts_mut(base.add(t * TILE), TILE_K);
            for (c, d) in dst.iter_mut().enumerate() {
                let kk = t * TILE_K + c;
                *d = if kk < k {
                    super::pack::to_bf16(*src.add(kk))
                } else {
                    0
                };
            }
        }
    }
}

/// AMX's tile configuration: palette 1, eight tiles of 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Loads the tile configuration on this thread (each thread that runs tiles must).
///
/// # Safety
/// The CPU must have AMX and the OS must have granted the tile state ([`super::cpu`]).
pub unsafe fn amx_configure() {
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        config.bytes_per_row[t] = 64;
        config.rows[t] = 16;
    }
    asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
}

/// Releases the tiles on this thread (so the OS need not save them).
///
/// # Safety
/// As [`amx_configure`].
pub unsafe fn amx_release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// A 32 x 32 block of the product: rows from the two activation tiles `a` (`k_tiles` tiles
/// each, consecutive), columns from the two weight tiles `b`, over `k_tiles` tiles of `k`;
/// added to the block at `c` (row stride `ldc` floats) when `accumulate`, else written there.
pub struct Block {
    /// The first tile of each 16-row half.
    pub a: [*const u16; 2],
    /// The first tile of each 16-column half.
    pub b: [*const u16; 2],
    /// Tiles along `k`.
    pub k_tiles: usize,
    /// The block's first output.
    pub c: *mut f32,
    /// Floats between output rows.
    pub ldc: usize,
    /// Add to the outputs instead of writing them.
    pub accumulate: bool,
    /// Rows that matter (the others, padding, may be computed or not and hold anything): AMX
    /// computes all 32, AVX512 whole groups of 8, AVX2 groups of 4.
    pub live_rows: usize,
}

/// A [`Block`] with AMX. Tiles 0-3 hold the block, 4-5 the activations, 6-7 the weights.
///
/// # Safety
/// [`amx_configure`] ran on this thread; every tile pointer is valid for `k_tiles` tiles and
/// `c` for 32 rows of 32 floats at stride `ldc`.
#[inline(always)]
pub unsafe fn amx_block(block: &Block) {
    let Block {
        a: [a0, a1],
        b: [b0, b1],
        k_tiles,
        c,
        ldc,
        accumulate,
        ..
    } = *block;
    let ld = ldc * 4;
    if accumulate {
        asm!(
            "tileloadd tmm0, [{c0} + {ld}*1]",
            "tileloadd tmm1, [{c1} + {ld}*1]",
            "tileloadd tmm2, [{c2} + {ld}*1]",
            "tileloadd tmm3, [{c3} + {ld}*1]",
            c0 = in(reg) c, c1 = in(reg) c.add(16), c2 = in(reg) c.add(16 * ldc),
            c3 = in(reg) c.add(16 * ldc + 16), ld = in(reg) ld,
            options(nostack, readonly)
        );
    } else {
        amx_zero();
    }
    amx_products(a0, a1, b0, b1, k_tiles);
    amx_store(c, ldc);
}

/// Zeroes tiles 0-3, a 32 x 32 block.
#[inline(always)]
unsafe fn amx_zero() {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

/// Adds to tiles 0-3 the products of the activation tiles `a0`, `a1` and the weight tiles
/// `b0`, `b1` over `k_tiles` tiles of `k` (tiles 4-7 hold them in turn).
#[inline(always)]
unsafe fn amx_products(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    k_tiles: usize,
) {
    let stride = 64usize;
    for t in 0..k_tiles {
        asm!(
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(t * TILE), a1 = in(reg) a1.add(t * TILE),
            b0 = in(reg) b0.add(t * TILE), b1 = in(reg) b1.add(t * TILE), s = in(reg) stride,
            options(nostack, readonly)
        );
    }
}

/// Stores tiles 0-3, a 32 x 32 block, at `c` (row stride `ldc` floats).
#[inline(always)]
unsafe fn amx_store(c: *mut f32, ldc: usize) {
    let ld = ldc * 4;
    asm!(
        "tilestored [{c0} + {ld}*1], tmm0",
        "tilestored [{c1} + {ld}*1], tmm1",
        "tilestored [{c2} + {ld}*1], tmm2",
        "tilestored [{c3} + {ld}*1], tmm3",
        c0 = in(reg) c, c1 = in(reg) c.add(16), c2 = in(reg) c.add(16 * ldc),
        c3 = in(reg) c.add(16 * ldc + 16), ld = in(reg) ld,
        options(nostack)
    );
}

/// A 32 x 32 block written at `c` (row stride `ldc` floats): the sum of the products of
/// `parts` (each `(a, b, k_tiles)` as a [`Block`]'s), accumulated in the tiles (the block is
/// stored once).
///
/// # Safety
/// As [`amx_block`], for every part.
#[inline(always)]
pub unsafe fn amx_block_sum(parts: &[BlockPart], c: *mut f32, ldc: usize) {
    amx_zero();
    for &([a0, a1], [b0, b1], k_tiles) in parts {
        amx_products(a0, a1, b0, b1, k_tiles);
    }
    amx_store(c, ldc);
}

/// A [`Block`] with AVX512-BF16: for each row, two vectors of 16 columns; each pair of `k`
/// values of the row is broadcast and multiplied with the weight tiles' row of pairs
/// (`vdpbf16ps`), eight rows at a time.
///
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16; pointers as in [`amx_block`].
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn avx512_block(block: &Block) {
    let Block {
        a: [a0, a1],
        b: [b0, b1],
        k_tiles,
        c,
        ldc,
        accumulate,
        live_rows,
    } = *block;
    for half in 0..2 {
        let a = if half == 0 { a0 } else { a1 };
        for group in 0..2 {
            // Rows `8 group .. 8 group + 8` of this activation tile.
            let mut acc = [[_mm512_setzero_ps(); 2]; 8];
            let row0 = half * 16 + group * 8;
            if row0 >= live_rows {
                return;
            }
            if accumulate {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let out = c.add((row0 + r) * ldc);
                    acc[0] = _mm512_loadu_ps(out);
                    acc[1] = _mm512_loadu_ps(out.add(16));
                }
            }
            for t in 0..k_tiles {
                let (ta, tb0, tb1) = (a.add(t * TILE), b0.add(t * TILE), b1.add(t * TILE));
                for p in 0..TILE_K / 2 {
                    let w0: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(tb0.add(p * TILE_K) as *const _));
                    let w1: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(tb1.add(p * TILE_K) as *const _));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let pair = (ta.add((group * 8 + r) * TILE_K + 2 * p) as *const i32)
                            .read_unaligned();
                        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                        acc[0] = _mm512_dpbf16_ps(acc[0], x, w0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], x, w1);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let out = c.add((row0 + r) * ldc);
                _mm512_storeu_ps(out, acc[0]);
                _mm512_storeu_ps(out.add(16), acc[1]);
            }
        }
    }
}

/// `exp(x)` in each lane for `x <= 0` (a score less the row's largest), to about 3e-6
/// relative: `x` clamped at -87 (below, about 1e-38 instead of 0), `2^n e^r` with
/// `|r| <= ln2/2` and a degree-5 polynomial in fused multiply-adds (the numerators are rounded
/// to bf16, whose step is 4e-3, before they weigh the values).
#[inline(always)]
unsafe fn exp_avx512(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 120.0);
    for c in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// The lanes of a 32-column tile's two halves that are real columns, when `real` of them are.
#[inline(always)]
fn real_lanes(real: u8) -> (__mmask16, __mmask16) {
    let bits = if real >= 32 {
        u32::MAX
    } else {
        (1u32 << real) - 1
    };
    (bits as u16, (bits >> 16) as u16)
}

/// One query row of a chunk of attention scores turned into the softmax numerators of `P V`:
/// the largest score of its real columns (`real[t]`: how many of tile `t`'s 32 columns are real
/// keys, the first ones), then `exp(score - largest)` of each real column and 0 for the others,
/// summed in f32 and rounded to bf16 into the row's place in the activation tiles of `P` (`out`:
/// the row in its first tile; tile `t` is `t` tiles on). Returns `(largest, sum)`; a row with
/// no real column gives `(-inf, 0)` and zeros.
///
/// # Safety
/// The CPU must have AVX512F, AVX512BW and AVX512-BF16; `row` holds `32 real.len()` floats and
/// `out` reaches row `TILE_K` values into `real.len()` tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn softmax_row_avx512(row: *const f32, real: &[u8], out: *mut u16) -> (f32, f32) {
    let none = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut largest = none;
    for (t, &n) in real.iter().enumerate() {
        let (lo, hi) = real_lanes(n);
        let p = row.add(t * TILE_K);
        largest = _mm512_max_ps(largest, _mm512_mask_loadu_ps(none, lo, p));
        largest = _mm512_max_ps(largest, _mm512_mask_loadu_ps(none, hi, p.add(16)));
    }
    let largest = _mm512_reduce_max_ps(largest);
    let finite = largest > f32::NEG_INFINITY;
    let shift = _mm512_set1_ps(if finite { largest } else { 0.0 });
    let mut sum = _mm512_setzero_ps();
    for (t, &n) in real.iter().enumerate() {
        let p = row.add(t * TILE_K);
        let mut e_lo = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(p), shift));
        let mut e_hi = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(p.add(16)), shift));
        if n < 32 || !finite {
            let (lo, hi) = if finite { real_lanes(n) } else { (0, 0) };
            e_lo = _mm512_maskz_mov_ps(lo, e_lo);
            e_hi = _mm512_maskz_mov_ps(hi, e_hi);
        }
        sum = _mm512_add_ps(sum, _mm512_add_ps(e_lo, e_hi));
        let packed = _mm512_cvtne2ps_pbh(e_hi, e_lo);
        _mm512_storeu_si512(
            out.add(t * TILE) as *mut _,
            std::mem::transmute::<__m512bh, __m512i>(packed),
        );
    }
    (largest, _mm512_reduce_add_ps(sum))
}
