//! The layouts the bf16 kernels read. A tile is 16 rows of 32 bf16 values (1 KiB):
//!
//! - **weights** ([`PackedWeight`]), for `x W^T` with `W` stored `(n, k)`: tile `(j, t)` holds
//!   columns `16 j .. 16 j + 16` of the product and `k` in `32 t .. 32 t + 32`, as 16 rows of
//!   `k` pairs, each row the 16 columns' pairs side by side (`tile[p][c][2]`: the layout AMX's
//!   `tdpbf16ps` and AVX512's `vdpbf16ps` multiply). Tiles of one column block follow each other
//!   along `k`. Columns and `k` are padded with zeros to whole tiles.
//! - **activations** ([`pack_rows`]): tile `(i, t)` holds rows `16 i .. 16 i + 16` and `k` in
//!   `32 t .. 32 t + 32`, one row per tile row. Rows and `k` are padded with zeros.
//!
//! f32 becomes bf16 by rounding to nearest, ties to even (as `vcvtne2ps2bf16` does).

/// Rows of a tile.
pub const TILE_ROWS: usize = 16;
/// bf16 values along `k` in a tile.
pub const TILE_K: usize = 32;
/// bf16 values in a tile.
pub const TILE: usize = TILE_ROWS * TILE_K;

/// `x` as bf16 bits, rounded to nearest even (NaN stays NaN).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 bits as f32.
#[inline(always)]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A frozen weight in bf16 tiles, for `x W^T` (see the module's documentation).
pub struct PackedWeight {
    /// Columns of the product (`W`'s rows).
    pub n: usize,
    /// The shared dimension (`W`'s columns).
    pub k: usize,
    /// Tiles along `k`.
    pub k_tiles: usize,
    /// Column blocks of 16, rounded up to an even count (the kernels take two at a time).
    pub n_blocks: usize,
    /// The tiles, `[n_blocks][k_tiles][TILE]`.
    pub tiles: Vec<u16>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight(bf16, {}x{})", self.n, self.k)
    }
}

impl PackedWeight {
    /// Packs `w`, element `(j, kk)` at `w[j * row_stride + kk * col_stride]`, as the weight of
    /// `x W^T` with `n` columns and `k` shared: `(row_stride, col_stride) = (k, 1)` packs a
    /// `(n, k)` weight, `(1, n)` packs the transpose of a `(k, n)` one (the input gradient's
    /// `g W`, with the same stored `W`).
    pub fn new(w: &[f32], n: usize, k: usize, row_stride: usize, col_stride: usize) -> Self {
        let k_tiles = k.div_ceil(TILE_K).max(1);
        let n_blocks = n.div_ceil(2 * TILE_ROWS).max(1) * 2;
        let mut tiles = vec![0u16; n_blocks * k_tiles * TILE];
        // Each column block's tiles in order, written once; blocks spread over the threads.
        let block_len = k_tiles * TILE;
        let dst = super::super::SharedMut(tiles.as_mut_ptr());
        let dst = &dst;
        super::super::column_parts(n_blocks, 1, |blocks| {
            for block in blocks {
                // SAFETY: each part writes its own column blocks.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(dst.0.add(block * block_len), block_len)
                };
                for t in 0..k_tiles {
                    let tile = &mut out[t * TILE..(t + 1) * TILE];
                    for column in 0..TILE_ROWS {
                        let j = block * TILE_ROWS + column;
                        if j >= n {
                            break;
                        }
                        for within in 0..TILE_K {
                            let kk = t * TILE_K + within;
                            if kk >= k {
                                break;
                            }
                            tile[(within / 2) * TILE_K + column * 2 + within % 2] =
                                to_bf16(w[j * row_stride + kk * col_stride]);
                        }
                    }
                }
            }
        });
        Self {
            n,
            k,
            k_tiles,
            n_blocks,
            tiles,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tiles.len() * 2
    }

    /// Weight element `(j, kk)`, as bf16 widened to f32 (for the portable kernel and tests).
    pub fn get(&self, j: usize, kk: usize) -> f32 {
        let (block, column) = (j / TILE_ROWS, j % TILE_ROWS);
        let (t, within) = (kk / TILE_K, kk % TILE_K);
        from_bf16(
            self.tiles[(block * self.k_tiles + t) * TILE
                + (within / 2) * TILE_K
                + column * 2
                + within % 2],
        )
    }
}

/// Row tiles (pairs of 16-row tiles) that `m` rows take.
pub fn row_tiles(m: usize) -> usize {
    m.div_ceil(2 * TILE_ROWS) * 2
}

/// Packs rows `rows` of `x` (`(m, k)`, row-major) into `out` (`[row_tiles(m)][k_tiles][TILE]`),
/// padding rows past `m` and `k` past its end with zeros.
pub fn pack_rows(
    x: &[f32],
    m: usize,
    k: usize,
    k_tiles: usize,
    rows: std::ops::Range<usize>,
    out: &mut [u16],
) {
    #[cfg(target_arch = "x86_64")]
    if super::cpu::best() >= super::cpu::Bf16Kernel::Avx512 {
        // SAFETY: the CPU has AVX512-BF16 (checked once in `cpu`).
        unsafe { super::x86::pack_rows_avx512(x, m, k, k_tiles, rows, out) };
        return;
    }
    pack_rows_portable(x, m, k, k_tiles, rows, out)
}

/// [`pack_rows`] without vector instructions.
pub fn pack_rows_portable(
    x: &[f32],
    m: usize,
    k: usize,
    k_tiles: usize,
    rows: std::ops::Range<usize>,
    out: &mut [u16],
) {
    for row in rows {
        let (tile_row, r) = (row / TILE_ROWS, row % TILE_ROWS);
        for t in 0..k_tiles {
            let dst = &mut out[(tile_row * k_tiles + t) * TILE + r * TILE_K..][..TILE_K];
            for (c, d) in dst.iter_mut().enumerate() {
                let kk = t * TILE_K + c;
                *d = if row < m && kk < k {
                    to_bf16(x[row * k + kk])
                } else {
                    0
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // Just above halfway rounds up.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn packed_weights_read_back_both_ways() {
        let (n, k) = (37, 70);
        let w: Vec<f32> = (0..n * k).map(|i| (i % 97) as f32 - 48.0).collect();
        let packed = PackedWeight::new(&w, n, k, k, 1);
        let transposed = PackedWeight::new(&w, k, n, 1, k);
        for j in 0..n {
            for kk in 0..k {
                assert_eq!(packed.get(j, kk), w[j * k + kk]);
                assert_eq!(transposed.get(kk, j), w[j * k + kk]);
            }
        }
        assert_eq!(packed.n_blocks, 4);
        assert_eq!(packed.k_tiles, 3);
    }
}
