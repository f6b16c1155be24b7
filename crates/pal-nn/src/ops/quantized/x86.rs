//! The x86-64 kernels: one repacked weight row against up to eight quantized rows of `x`, a
//! chunk of eight blocks at a time. Each chunk's weights are loaded, split into nibbles (4-bit
//! formats) and widened to 16 bits once, and used for every row; per row, products of 16-bit
//! pairs summed into 32-bit lanes accumulate each block's integer sum in its own lanes, then one
//! multiply by the blocks' scales. With AVX-512 (VNNI and BW) a pair of groups is widened into
//! 512-bit vectors and each row takes eight `vpdpwssd`; with AVX2, sixteen `vpmaddwd` and adds on
//! 256-bit vectors. Decoding a batch is bound by these per-row instructions, since the weight is
//! read once for all rows.

use std::arch::x86_64::*;

use super::layout::{act_vector, BlockFormat, Row, CHUNK, CHUNK_VALUES};
use super::GROUP;

/// The horizontal sum of eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
}

/// `count` (up to 8) f16 at `p` as f32, zeros past them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves(p: *const u8, count: usize) -> __m256 {
    if count == CHUNK {
        return _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
    }
    // Assembled in registers: small stores followed by one wide load would stall on store
    // forwarding.
    let mut bits = [0u64; 2];
    for i in 0..count {
        bits[i / 4] |=
            u64::from(std::ptr::read_unaligned(p.add(2 * i) as *const u16)) << (16 * (i % 4));
    }
    _mm256_cvtph_ps(_mm_set_epi64x(bits[1] as i64, bits[0] as i64))
}

/// A 32-byte group of a chunk of `count` blocks: whole, or its first `count` lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn group(p: *const u8, count: usize, mask: __m256i) -> __m256i {
    if count == CHUNK {
        _mm256_loadu_si256(p as *const __m256i)
    } else {
        _mm256_maskload_epi32(p as *const i32, mask)
    }
}

/// A chunk's scales `d` and offsets `m` (`value = d q + m`), per block lane; advances `at` past
/// them to the chunk's values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales(format: BlockFormat, at: &mut *const u8, count: usize) -> (__m256, __m256) {
    let d = halves(*at, count);
    *at = at.add(2 * count);
    let m = match format {
        BlockFormat::Q4_1 => {
            let m = halves(*at, count);
            *at = at.add(2 * count);
            m
        }
        BlockFormat::Q4_0 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
        BlockFormat::Q8_0 => _mm256_setzero_ps(),
    };
    (d, m)
}

/// Adds one row's chunk to its accumulator: the integer sums of the low and high vectors (two
/// lanes per block: blocks 0, 1, 4, 5 and 2, 3, 6, 7) times the weight and activation scales,
/// plus the offsets times the activation sums.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_chunk(
    acc: __m256,
    sums: [__m256i; 2],
    (d, m): (__m256, __m256),
    x: &Row,
    chunk: usize,
) -> __m256 {
    // Which block each 32-bit lane of the two vectors holds.
    let blocks_of = [
        _mm256_setr_epi32(0, 0, 1, 1, 4, 4, 5, 5),
        _mm256_setr_epi32(2, 2, 3, 3, 6, 6, 7, 7),
    ];
    let a = _mm256_loadu_ps(x.scales.as_ptr().add(chunk * CHUNK));
    let s = _mm256_loadu_ps(x.sums.as_ptr().add(chunk * CHUNK));
    let scale = _mm256_mul_ps(d, a);
    let mut acc = acc;
    for k in 0..2 {
        let per_lane = _mm256_permutevar8x32_ps(scale, blocks_of[k]);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[k]), per_lane, acc);
    }
    _mm256_fmadd_ps(m, s, acc)
}

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

/// One repacked weight row against `R` quantized rows, on 256-bit vectors (AVX2).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_avx2<const R: usize>(
    format: BlockFormat,
    w: &[u8],
    x: &[Row; GROUP],
) -> [f32; GROUP] {
    let blocks = w.len() / format.bytes();
    let low = _mm256_set1_epi8(0x0F);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut acc = [_mm256_setzero_ps(); GROUP];
    let mut at = w.as_ptr();
    let (mut first, mut chunk) = (0, 0);
    while first < blocks {
        let count = (blocks - first).min(CHUNK);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), lanes);
        let dm = scales(format, &mut at, count);
        // Vector 2g + h: half h of group g (values 4g..4g+4 of every block) as 16-bit weights.
        let mut q = [_mm256_setzero_si256(); 16];
        let zero = _mm256_setzero_si256();
        let mut widen = |g: usize, bytes: __m256i, high: __m256i| {
            q[2 * g] = _mm256_unpacklo_epi8(bytes, high);
            q[2 * g + 1] = _mm256_unpackhi_epi8(bytes, high);
        };
        if format == BlockFormat::Q8_0 {
            for g in 0..8 {
                let v = group(at.add(g * 4 * count), count, mask);
                widen(g, v, _mm256_cmpgt_epi8(zero, v));
            }
        } else {
            for u in 0..4 {
                let v = group(at.add(u * 4 * count), count, mask);
                widen(u, _mm256_and_si256(v, low), zero);
                widen(u + 4, _mm256_and_si256(_mm256_srli_epi16(v, 4), low), zero);
            }
        }
        at = at.add(format.value_bytes() * count);
        macro_rules! row {
            ($r:literal) => {
                if $r < R {
                    let p = x[$r].values.as_ptr().add(chunk * CHUNK_VALUES);
                    // Four independent sums (two per half) shorten the dependency chains.
                    let mut sums = [_mm256_setzero_si256(); 4];
                    for (v, qv) in q.iter().enumerate() {
                        let at = act_vector(v / 2, v % 2);
                        let pv = _mm256_loadu_si256(p.add(at) as *const __m256i);
                        sums[v % 4] = _mm256_add_epi32(sums[v % 4], _mm256_madd_epi16(*qv, pv));
                    }
                    let sums = [
                        _mm256_add_epi32(sums[0], sums[2]),
                        _mm256_add_epi32(sums[1], sums[3]),
                    ];
                    acc[$r] = add_chunk(acc[$r], sums, dm, &x[$r], chunk);
                }
            };
        }
        each_row!(row);
        first += count;
        chunk += 1;
    }
    let mut out = [0f32; GROUP];
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
    out
}

/// One repacked weight row against `R` quantized rows, on 512-bit vectors (AVX-512 BW and
/// VNNI): a pair of groups is one vector, so each row takes half the instructions of
/// [`dot_avx2`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dot_vnni<const R: usize>(
    format: BlockFormat,
    w: &[u8],
    x: &[Row; GROUP],
) -> [f32; GROUP] {
    let blocks = w.len() / format.bytes();
    let low = _mm512_set1_epi8(0x0F);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut acc = [_mm256_setzero_ps(); GROUP];
    let mut at = w.as_ptr();
    let (mut first, mut chunk) = (0, 0);
    while first < blocks {
        let count = (blocks - first).min(CHUNK);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), lanes);
        let dm = scales(format, &mut at, count);
        // Stored groups u and u + 1 in one vector.
        let pair = |u: usize| {
            let first = group(at.add(u * 4 * count), count, mask);
            let second = group(at.add((u + 1) * 4 * count), count, mask);
            _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1)
        };
        // Vector 2p + h: half h of groups 2p and 2p + 1, as 16-bit weights; the activations of
        // each lie in one 512-bit vector (see `act_vector`).
        let mut q = [_mm512_setzero_si512(); 8];
        let zero = _mm512_setzero_si512();
        let mut widen = |p: usize, bytes: __m512i, high: __m512i| {
            q[2 * p] = _mm512_unpacklo_epi8(bytes, high);
            q[2 * p + 1] = _mm512_unpackhi_epi8(bytes, high);
        };
        if format == BlockFormat::Q8_0 {
            for p in 0..4 {
                let v = pair(2 * p);
                widen(p, v, _mm512_movm_epi8(_mm512_cmplt_epi8_mask(v, zero)));
            }
        } else {
            // Low nibbles of stored groups u, u + 1 are value groups u, u + 1; high nibbles
            // are value groups u + 4, u + 5.
            for u in [0, 2] {
                let v = pair(u);
                widen(u / 2, _mm512_and_si512(v, low), zero);
                widen(
                    u / 2 + 2,
                    _mm512_and_si512(_mm512_srli_epi16(v, 4), low),
                    zero,
                );
            }
        }
        at = at.add(format.value_bytes() * count);
        macro_rules! row {
            ($r:literal) => {
                if $r < R {
                    let p = x[$r].values.as_ptr().add(chunk * CHUNK_VALUES);
                    // One sum per half (the rows' sums are independent chains).
                    let mut sums = [_mm512_setzero_si512(); 2];
                    for (v, qv) in q.iter().enumerate() {
                        let pv = _mm512_loadu_si512(p.add(32 * v) as *const __m512i);
                        sums[v % 2] = _mm512_dpwssd_epi32(sums[v % 2], *qv, pv);
                    }
                    // Both 256-bit halves of a vector hold the same blocks' lanes; integer sums,
                    // so the result is exactly the 256-bit kernels'.
                    let fold = |v: __m512i| {
                        _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1))
                    };
                    let sums = [fold(sums[0]), fold(sums[1])];
                    acc[$r] = add_chunk(acc[$r], sums, dm, &x[$r], chunk);
                }
            };
        }
        each_row!(row);
        first += count;
        chunk += 1;
    }
    let mut out = [0f32; GROUP];
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
    out
}
