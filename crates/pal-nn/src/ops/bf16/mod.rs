//! Products against frozen weights held in bf16, accumulated in f32: the backbone's products
//! when a model computes in bf16 on the CPU (`--dtype bf16`, or `auto` on a CPU that has a bf16
//! kernel). Activations stay f32 (norms, softmax, the adapter and the loss never see bf16);
//! each product rounds its input to bf16 as it packs it, multiplies on the fastest kernel the
//! CPU has ([`cpu`]: AMX tiles, or AVX512-BF16) and returns f32.
//!
//! A frozen `(out, in)` weight is packed twice ([`Bf16Weight`]): for the forward `x W^T` and
//! for the input gradient `g W`. Every product of such a weight runs in bf16, whatever its rows
//! (a tile pads them to 32): a product's precision never depends on the batch it is in, so a
//! data-parallel run trains what one process does.

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod cpu;
pub mod pack;
pub mod prefix;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::Arc;

pub use cpu::Bf16Kernel;
pub use pack::PackedWeight;

use super::{column_parts, SharedMut};
use pack::{row_tiles, TILE, TILE_ROWS};

/// Tiles along `k` a block multiplies before it moves on (its weight tiles stay in the cache).
const K_BLOCK: usize = 32;
/// Column pairs (32 columns each) a thread takes at a time.
const N_BLOCK: usize = 8;
/// Row pairs (32 rows each) multiplied with one column pair before the next.
const M_BLOCK: usize = 4;

/// A frozen `(out, in)` weight in bf16, packed for both products it takes part in.
#[derive(Clone, Debug)]
pub struct Bf16Weight {
    /// For `x W^T` (`n = out`, `k = in`).
    pub forward: Arc<PackedWeight>,
    /// For `g W` (`n = in`, `k = out`).
    pub backward: Arc<PackedWeight>,
}

impl Bf16Weight {
    /// Packs a row-major `(out, in)` weight.
    pub fn new(w: &[f32], out: usize, input: usize) -> Self {
        Self {
            forward: Arc::new(PackedWeight::new(w, out, input, input, 1)),
            backward: Arc::new(PackedWeight::new(w, input, out, 1, input)),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.forward.bytes() + self.backward.bytes()
    }
}

/// `x W^T` for `x` `(m, k)` row-major, on the chosen kernel ([`cpu::chosen`]); `(m, n)`.
pub fn product(x: &[f32], m: usize, w: &PackedWeight) -> Vec<f32> {
    product_on(cpu::chosen(), x, m, w)
}

/// [`product`] on `kernel` (which must be [`Bf16Kernel::available`]; the portable one always
/// is).
pub fn product_on(kernel: Bf16Kernel, x: &[f32], m: usize, w: &PackedWeight) -> Vec<f32> {
    assert!(
        kernel.available(),
        "the {} kernel is not available",
        kernel.name()
    );
    assert_eq!(x.len(), m * w.k, "bf16 product: x is not (m, k)");
    let (n, k_tiles) = (w.n, w.k_tiles);
    if m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    let rows = row_tiles(m) * TILE_ROWS;
    let mut a = vec![0u16; row_tiles(m) * k_tiles * TILE];
    {
        let dst = SharedMut(a.as_mut_ptr());
        let (dst, len) = (&dst, a.len());
        // Pairs of row tiles (32 rows) per pool part.
        column_parts(rows / 32, 1, |pairs| {
            // SAFETY: each part packs its own rows' tiles only.
            let out = unsafe { std::slice::from_raw_parts_mut(dst.0, len) };
            pack::pack_rows(x, m, w.k, k_tiles, pairs.start * 32..pairs.end * 32, out);
        });
    }
    if kernel == Bf16Kernel::Portable {
        return portable(&a, m, w);
    }
    // Every output is written once by the blocks (edge blocks through a small scratch), so the
    // output needs no zeroing.
    let mut out: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(m * n);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { out.set_len(m * n) };
    {
        let dst = SharedMut(out.as_mut_ptr() as *mut f32);
        let dst = &dst;
        let a = &a;
        let shape = Shape { m, n, rows };
        column_parts(w.n_blocks / 2, 1, |pairs| {
            // SAFETY: the kernel is available (asserted); each part writes its own columns.
            unsafe { blocks(kernel, a, shape, w, pairs, dst.0) };
        });
    }
    // SAFETY: every element was written (each column pair covers all rows).
    unsafe { std::mem::transmute::<Vec<std::mem::MaybeUninit<f32>>, Vec<f32>>(out) }
}

/// The product's rows and columns, and its rows rounded up to whole row pairs.
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    n: usize,
    rows: usize,
}

/// The blocks of column pairs `pairs` of the product, on an x86 kernel, written into `c`
/// (`m x n`). The columns go `N_BLOCK` pairs at a time and the rows `M_BLOCK` pairs at a time:
/// each such block of the output is summed over every `k` in a buffer of its own (rows a few
/// hundred floats apart: tiles stored at the output's own stride, a multiple of 4 KiB for most
/// widths, would all fall on the same cache sets), then its part inside the output is copied out.
///
/// # Safety
/// `kernel` is available and not the portable one; `c` holds `m * n` floats; `a` is packed
/// for `rows`.
unsafe fn blocks(
    kernel: Bf16Kernel,
    a: &[u16],
    shape: Shape,
    w: &PackedWeight,
    pairs: std::ops::Range<usize>,
    c: *mut f32,
) {
    let Shape { m, n, rows } = shape;
    let k_tiles = w.k_tiles;
    let kernel = Blocks::start(kernel);
    let row_pairs = rows / 32;
    let mut buffer: Vec<f32> = vec![0.0; M_BLOCK * 32 * N_BLOCK * 32];
    let mut first = pairs.start;
    while first < pairs.end {
        let last = (first + N_BLOCK).min(pairs.end);
        let ldc = (last - first) * 32;
        let mut m0 = 0;
        while m0 < row_pairs {
            let m1 = (m0 + M_BLOCK).min(row_pairs);
            let mut k0 = 0;
            while k0 < k_tiles {
                let kt = K_BLOCK.min(k_tiles - k0);
                for pair in first..last {
                    let b = [
                        w.tiles.as_ptr().add((2 * pair * k_tiles + k0) * TILE),
                        w.tiles.as_ptr().add(((2 * pair + 1) * k_tiles + k0) * TILE),
                    ];
                    for row_pair in m0..m1 {
                        kernel.run(
                            [
                                a.as_ptr().add((2 * row_pair * k_tiles + k0) * TILE),
                                a.as_ptr().add(((2 * row_pair + 1) * k_tiles + k0) * TILE),
                            ],
                            b,
                            kt,
                            buffer
                                .as_mut_ptr()
                                .add((row_pair - m0) * 32 * ldc + (pair - first) * 32),
                            ldc,
                            k0 > 0,
                            m.saturating_sub(row_pair * 32),
                        );
                    }
                }
                k0 += kt;
            }
            let cols = n.min(last * 32) - first * 32;
            for r in 0..(m1 - m0) * 32 {
                let row = m0 * 32 + r;
                if row < m {
                    std::ptr::copy_nonoverlapping(
                        buffer.as_ptr().add(r * ldc),
                        c.add(row * n + first * 32),
                        cols,
                    );
                }
            }
            m0 = m1;
        }
        first = last;
    }
}

/// One product of a block sum: the first tiles of the two activation halves, of the two weight
/// halves, and the tiles along `k`.
pub(crate) type BlockPart = ([*const u16; 2], [*const u16; 2], usize);

/// The block kernel of one pool part: [`x86::Block`]s on the kernel chosen, AMX tiles configured
/// for the thread while it lives.
pub(crate) struct Blocks {
    kernel: Bf16Kernel,
}

impl Blocks {
    /// # Safety
    /// `kernel` is available on this CPU.
    pub(crate) unsafe fn start(kernel: Bf16Kernel) -> Self {
        #[cfg(target_arch = "x86_64")]
        if kernel == Bf16Kernel::Amx {
            x86::amx_configure();
        }
        Self { kernel }
    }

    /// A 32 x 32 block of which the first `live_rows` rows matter: see [`x86::Block`].
    ///
    /// # Safety
    /// As [`x86::amx_block`].
    #[allow(unused_variables, clippy::too_many_arguments)]
    pub(crate) unsafe fn run(
        &self,
        a: [*const u16; 2],
        b: [*const u16; 2],
        k_tiles: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        live_rows: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            let block = x86::Block {
                a,
                b,
                k_tiles,
                c,
                ldc,
                accumulate,
                live_rows,
            };
            match self.kernel {
                Bf16Kernel::Amx => x86::amx_block(&block),
                Bf16Kernel::Avx512 => x86::avx512_block(&block),
                _ => avx2::avx2_block(&block),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("only the portable bf16 kernel exists off x86-64")
    }

    /// A 32 x 32 block written at `c` (its first `live_rows` rows matter): the sum of the
    /// products of `parts` (`(a, b, k_tiles)` each, as [`Self::run`]'s).
    ///
    /// # Safety
    /// As [`Self::run`], for every part.
    pub(crate) unsafe fn run_sum(
        &self,
        parts: &[BlockPart],
        c: *mut f32,
        ldc: usize,
        live_rows: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.kernel == Bf16Kernel::Amx {
            return x86::amx_block_sum(parts, c, ldc);
        }
        for (i, &(a, b, k_tiles)) in parts.iter().enumerate() {
            self.run(a, b, k_tiles, c, ldc, i > 0, live_rows);
        }
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.kernel == Bf16Kernel::Amx {
            // SAFETY: configured in `start` on this thread.
            unsafe { x86::amx_release() };
        }
    }
}

/// The product widened to f32, one sum per output in `k` order (the reference).
fn portable(a: &[u16], m: usize, w: &PackedWeight) -> Vec<f32> {
    let k_tiles = w.k_tiles;
    let mut out = vec![0f32; m * w.n];
    for (i, row) in out.chunks_mut(w.n).enumerate() {
        let (tile_row, r) = (i / TILE_ROWS, i % TILE_ROWS);
        for (j, o) in row.iter_mut().enumerate() {
            let mut sum = 0f32;
            for kk in 0..w.k {
                let (t, within) = (kk / pack::TILE_K, kk % pack::TILE_K);
                let x =
                    pack::from_bf16(a[(tile_row * k_tiles + t) * TILE + r * pack::TILE_K + within]);
                sum += x * w.get(j, kk);
            }
            *o = sum;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel the CPU has gives the portable kernel's products (the same bf16 inputs,
    /// summed in another order: within 1e-5 of the sum of magnitudes), at shapes that fill
    /// and do not fill whole tiles, and with `k` longer than a block.
    #[test]
    fn every_kernel_agrees_with_the_portable_one() {
        for (m, k, n) in [
            (1, 5, 3),
            (32, 32, 32),
            (45, 70, 37),
            (64, 1100, 96),
            (33, 64, 160),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 13 % 89) as f32 - 44.0) / 44.0)
                .collect();
            let packed = PackedWeight::new(&w, n, k, k, 1);
            let reference = product_on(Bf16Kernel::Portable, &x, m, &packed);
            for kernel in Bf16Kernel::ALL.into_iter().filter(|k| k.available()) {
                let got = product_on(kernel, &x, m, &packed);
                assert_eq!(got.len(), m * n);
                for (g, r) in got.iter().zip(&reference) {
                    assert!(
                        (g - r).abs() <= 1e-5 * k as f32,
                        "{} {m}x{k}x{n}: {g} vs {r}",
                        kernel.name()
                    );
                }
            }
            // And the portable one is the bf16 inputs' exact product, near the f32 one.
            for i in 0..m {
                for j in 0..n {
                    let f32_sum: f32 = (0..k).map(|kk| x[i * k + kk] * w[j * k + kk]).sum();
                    let scale: f32 = (0..k).map(|kk| (x[i * k + kk] * w[j * k + kk]).abs()).sum();
                    assert!((reference[i * n + j] - f32_sum).abs() <= 8e-3 * scale.max(1e-6));
                }
            }
        }
    }

    /// The input gradient's packing multiplies with the same stored weight.
    #[test]
    fn the_backward_packing_is_the_transpose() {
        let (out, input, m) = (40, 72, 33);
        let w: Vec<f32> = (0..out * input)
            .map(|i| ((i * 7 % 31) as f32 - 15.0) / 8.0)
            .collect();
        let g: Vec<f32> = (0..m * out)
            .map(|i| ((i * 11 % 23) as f32 - 11.0) / 8.0)
            .collect();
        let weights = Bf16Weight::new(&w, out, input);
        let dx = product(&g, m, &weights.backward);
        for i in 0..m {
            for j in 0..input {
                let exact: f32 = (0..out).map(|o| g[i * out + o] * w[o * input + j]).sum();
                assert!((dx[i * input + j] - exact).abs() < 1e-3, "{i},{j}");
            }
        }
    }
}
