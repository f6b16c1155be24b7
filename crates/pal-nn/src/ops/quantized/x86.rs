//! The x86-64 kernels: one repacked weight row against up to eight quantized rows of `x`, a
//! chunk of eight blocks at a time. Each chunk's values are loaded (and, for 4-bit formats,
//! split into nibbles) once and used for every row; per row, eight 4-byte-lane dot products
//! accumulate each block's integer sum in its own lane, then one multiply by the eight scales.
//!
//! `vpdpbusd` (AVX-512 VNNI) and `vpmaddubsw` (AVX2) multiply unsigned by signed bytes. Q8_0's
//! signed weights are made unsigned by adding 128 for VNNI (`-128 d` joins the offset term) and
//! by moving their signs onto the activations for AVX2 (whose 16-bit pair sums would overflow
//! with weights up to 255).

use std::arch::x86_64::*;

use super::layout::{BlockFormat, Row, BLOCK, CHUNK};
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

macro_rules! kernel {
    ($name:ident, $features:literal, $vnni:literal, $dot:expr) => {
        /// One repacked weight row against `R` quantized rows (`Q8`: the format is Q8_0).
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const R: usize, const Q8: bool>(
            format: BlockFormat,
            w: &[u8],
            x: &[Row; GROUP],
        ) -> [f32; GROUP] {
            let blocks = w.len() / format.bytes();
            let low = _mm256_set1_epi8(0x0F);
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mut acc = [_mm256_setzero_ps(); R];
            let mut at = w.as_ptr();
            let (mut first, mut chunk) = (0, 0);
            while first < blocks {
                let count = (blocks - first).min(CHUNK);
                let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), lanes);
                let d = halves(at, count);
                at = at.add(2 * count);
                let m = match format {
                    BlockFormat::Q4_1 => {
                        let m = halves(at, count);
                        at = at.add(2 * count);
                        m
                    }
                    BlockFormat::Q4_0 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
                    BlockFormat::Q8_0 if $vnni => _mm256_mul_ps(d, _mm256_set1_ps(-128.0)),
                    BlockFormat::Q8_0 => _mm256_setzero_ps(),
                };
                // The eight groups of unsigned values (and, Q8_0 on AVX2, the weights' signs).
                let mut q = [_mm256_setzero_si256(); 8];
                let mut signs = [_mm256_setzero_si256(); 8];
                if Q8 {
                    for t in 0..8 {
                        let v = group(at.add(t * 4 * count), count, mask);
                        if $vnni {
                            q[t] = _mm256_xor_si256(v, _mm256_set1_epi8(-128));
                        } else {
                            q[t] = _mm256_sign_epi8(v, v);
                            signs[t] = v;
                        }
                    }
                } else {
                    for u in 0..4 {
                        let v = group(at.add(u * 4 * count), count, mask);
                        q[u] = _mm256_and_si256(v, low);
                        q[u + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    }
                }
                at = at.add(format.value_bytes() * count);
                for r in 0..R {
                    let p = x[r].values.as_ptr().add(chunk * CHUNK * BLOCK);
                    let mut sums = _mm256_setzero_si256();
                    for t in 0..8 {
                        let mut pt = _mm256_loadu_si256(p.add(32 * t) as *const __m256i);
                        if Q8 && !$vnni {
                            pt = _mm256_sign_epi8(pt, signs[t]);
                        }
                        sums = $dot(sums, q[t], pt);
                    }
                    let a = _mm256_loadu_ps(x[r].scales.as_ptr().add(chunk * CHUNK));
                    let s = _mm256_loadu_ps(x[r].sums.as_ptr().add(chunk * CHUNK));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(d, a), acc[r]);
                    acc[r] = _mm256_fmadd_ps(m, s, acc[r]);
                }
                first += count;
                chunk += 1;
            }
            let mut out = [0f32; GROUP];
            for r in 0..R {
                out[r] = hsum(acc[r]);
            }
            out
        }
    };
}

kernel!(dot_avx2, "avx2,fma,f16c", false, |sums, q, p| {
    _mm256_add_epi32(
        sums,
        _mm256_madd_epi16(_mm256_maddubs_epi16(q, p), _mm256_set1_epi16(1)),
    )
});
kernel!(
    dot_vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    true,
    |sums, q, p| _mm256_dpbusd_epi32(sums, q, p)
);
