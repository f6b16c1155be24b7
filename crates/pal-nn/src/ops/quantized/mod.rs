//! Linear products against frozen weights kept in their GGUF file's block-quantized form, for
//! inference on the CPU. Decoding reads every weight once per token, so its speed is bounded by
//! the bytes it reads: a Q4_1 matrix is a sixth of its f32 form.
//!
//! Q4_0, Q4_1, Q5_0, Q8_0 (blocks of 32 weights with an f16 scale) and the k-quants Q4_K and
//! Q6_K (super-blocks of 256 with a scale per 32 or 16 weights), the types a Q4_K_M file mixes,
//! run on the kernels here: the weights are read block by block ([`file_blocks`]) and repacked
//! at load ([`layout`]: tiles of sixteen rows, one row per vector lane; the file's bytes for the
//! 32-value types, a k-quant's scales widened to f32 per block of 32), each row of `x` is
//! quantized to 16 bits per value with a scale per block of 32 (near-exact: 8 bits, as llama.cpp
//! uses, changed SmolLM2's answers), and each tile is read once and multiplied with up to eight
//! rows of `x` in integers ([`x86`]: AVX-512 VNNI on 512-bit vectors or AVX2, chosen at run
//! time; a portable loop elsewhere). The other quantized GGUF types (Q5_1, Q2_K, Q3_K, Q5_K,
//! Q8_K) go through candle's quantized matmul.
//!
//! For a block with scale `d`, offset `m` and integer values `q`, against an activation block
//! with scale `a` and 16-bit values `p`: `sum((d q_i + m) a p_i) = d a sum(q_i p_i) + m a sum(p_i)`.
//! Q4_0 is `m = -8 d`, Q5_0 `m = -16 d`; Q8_0 and Q6_K have signed values and `m = 0`.

mod file_blocks;
mod layout;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Result, Shape, Tensor};

use layout::{BlockFormat, QuantizedRows, Row, BLOCK, TILE};

/// Rows of `x` a weight block is multiplied with while it is in registers.
const GROUP: usize = 8;

enum Storage {
    /// Tiles of rows, repacked (see [`layout`]); as many bytes as in the file, plus the zero
    /// rows that pad the last tile.
    Blocks { format: BlockFormat, data: Vec<u8> },
    /// Any other quantized type, through candle.
    Candle(QMatMul),
}

/// A frozen `(rows, cols)` weight (`rows` outputs, as a linear layer's weight is stored) in a
/// block-quantized form.
pub struct QuantizedWeight {
    rows: usize,
    cols: usize,
    dtype: GgmlDType,
    storage: Storage,
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantizedWeight({:?}, {}x{})",
            self.dtype, self.rows, self.cols
        )
    }
}

impl QuantizedWeight {
    /// The weight of a quantized tensor `(rows, cols)` read from a file; `None` when its type is
    /// not a quantized one (f32, f16, bf16) or its shape is not a matrix.
    pub fn from_qtensor(q: QTensor) -> Result<Option<Self>> {
        let dtype = q.dtype();
        if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) || q.rank() != 2 {
            return Ok(None);
        }
        let (rows, cols) = q.shape().dims2()?;
        let storage = match BlockFormat::of(dtype) {
            Some(format) if Self::reads_rows_of(dtype, cols) => {
                let (values, bytes) = format.file_block();
                let file = q.data()?;
                if file.len() != rows * cols / values * bytes {
                    candle_core::bail!("{dtype:?} tensor ({rows}, {cols}): {} bytes", file.len());
                }
                Storage::Blocks {
                    format,
                    data: layout::repack(format, &file, rows, cols),
                }
            }
            _ => Storage::Candle(QMatMul::from_qtensor(q)?),
        };
        Ok(Some(Self {
            rows,
            cols,
            dtype,
            storage,
        }))
    }

    /// Quantizes an f32 matrix `(rows, cols)` to `dtype` (candle's quantizer): for tests and for
    /// weights that exist only in f32.
    pub fn quantize(w: &Tensor, dtype: GgmlDType) -> Result<Self> {
        let q = QTensor::quantize(&w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?, dtype)?;
        Self::from_qtensor(q)?
            .ok_or_else(|| candle_core::Error::Msg(format!("{dtype:?} is not a quantized type")))
    }

    /// The same weight with its rows reordered: row `i` of the result is row `order[i]` here.
    /// (GGUF stores Llama's q/k projections with their rotary halves interleaved.)
    pub fn permute_rows(q: QTensor, order: &[usize]) -> Result<QTensor> {
        let (rows, _) = q.shape().dims2()?;
        if order.len() != rows {
            candle_core::bail!("row order of {} for {rows} rows", order.len());
        }
        let data = q.data()?;
        let row_bytes = data.len() / rows;
        let mut out = Vec::with_capacity(data.len());
        for &r in order {
            out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
        }
        let storage = QStorage::from_data(Cow::Owned(out), &Device::Cpu, q.dtype())?;
        QTensor::new(storage, q.shape().clone())
    }

    /// `(rows, cols)`: outputs, inputs.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The file's type (`Q4_1`, `Q8_0`, `Q4K`, ...).
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Whether products of any number of rows are at least as fast here as in f32: true on pal's
    /// own kernels with AVX-512 VNNI, whose integer products of 16-bit pairs outrun f32
    /// multiply-adds on prefills too; false with AVX2 only (there `vpmaddwd` and an add per
    /// product lose to f32 GEMM on a prefill: docs/bench/zen3/), for candle's kernels and for the
    /// portable loop, which are for decoding.
    pub fn fast_at_any_rows(&self) -> bool {
        matches!(self.storage, Storage::Blocks { .. }) && simd_level() == Simd::Vnni
    }

    /// The weight in f32 `(rows, cols)` (tests, and comparisons against the f32 path).
    pub fn dequantize(&self) -> Result<Tensor> {
        match &self.storage {
            Storage::Blocks { format, data } => {
                let mut out = vec![0f32; self.rows * self.cols];
                let blocks = self.cols / BLOCK;
                let tile_block_bytes = format.tile_block_bytes();
                for (t, tile) in data.chunks_exact(blocks * tile_block_bytes).enumerate() {
                    for (b, bytes) in tile.chunks_exact(tile_block_bytes).enumerate() {
                        let block = layout::tile_block(*format, bytes);
                        for i in 0..TILE.min(self.rows - t * TILE) {
                            let at = (t * TILE + i) * self.cols + b * BLOCK;
                            block.values(i, &mut out[at..at + BLOCK]);
                        }
                    }
                }
                Tensor::from_vec(out, (self.rows, self.cols), &Device::Cpu)
            }
            Storage::Candle(QMatMul::QTensor(q)) => q.dequantize(&Device::Cpu),
            Storage::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.to_dtype(DType::F32),
        }
    }

    /// Whether [`Self::rows`] reads rows without dequantizing the whole matrix (pal's tiles).
    pub fn reads_rows(&self) -> bool {
        matches!(self.storage, Storage::Blocks { .. })
    }

    /// Whether a matrix of `dtype` with `cols` columns would be held in pal's tiles, so that
    /// [`Self::reads_rows`] (before it is read).
    pub fn reads_rows_of(dtype: GgmlDType, cols: usize) -> bool {
        BlockFormat::of(dtype).is_some_and(|f| cols.is_multiple_of(f.file_block().0))
    }

    /// Rows `ids` of the weight in f32, `(ids.len(), cols)`: an embedding lookup, with the values
    /// [`Self::dequantize`] gives. Only the tiles' blocks of those rows are read where
    /// [`Self::reads_rows`]; otherwise the whole matrix is dequantized first.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        let Storage::Blocks { format, data } = &self.storage else {
            let all = self.dequantize()?;
            let ids = Tensor::new(ids, &Device::Cpu)?;
            return all.index_select(&ids, 0);
        };
        let blocks = self.cols / BLOCK;
        let tile_block_bytes = format.tile_block_bytes();
        let mut out = vec![0f32; ids.len() * self.cols];
        for (row, &id) in out.chunks_exact_mut(self.cols).zip(ids) {
            let id = id as usize;
            if id >= self.rows {
                candle_core::bail!("row {id} of a {}x{} weight", self.rows, self.cols);
            }
            let (t, lane) = (id / TILE, id % TILE);
            let tile = &data[t * blocks * tile_block_bytes..(t + 1) * blocks * tile_block_bytes];
            for (b, bytes) in tile.chunks_exact(tile_block_bytes).enumerate() {
                layout::tile_block(*format, bytes).values(lane, &mut row[b * BLOCK..][..BLOCK]);
            }
        }
        Tensor::from_vec(out, (ids.len(), self.cols), &Device::Cpu)
    }

    /// `x W^T` for `x` `(..., cols)` in f32 on the CPU: `(..., rows)`. No gradient.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        if dims.last() != Some(&self.cols) {
            candle_core::bail!(
                "quantized linear: input {:?}, weight {}x{}",
                dims,
                self.rows,
                self.cols
            );
        }
        let rows = x.elem_count() / self.cols.max(1);
        let x2 = x.reshape((rows, self.cols))?.to_dtype(DType::F32)?;
        let y = match &self.storage {
            Storage::Blocks { .. } => x2.apply_op1_no_bwd(&BlockMatmul(self))?,
            Storage::Candle(q) => q.forward(&x2)?,
        };
        *dims.last_mut().expect("checked above") = self.rows;
        y.reshape(dims)?.to_dtype(x.dtype())
    }
}

/// The block product as a candle op (CPU, f32, contiguous `(m, cols)` input).
struct BlockMatmul<'a>(&'a QuantizedWeight);

impl CustomOp1 for BlockMatmul<'_> {
    fn name(&self) -> &'static str {
        "pal-quantized-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = self.0;
        let Storage::Blocks { format, data } = &w.storage else {
            candle_core::bail!("quantized matmul: not a block format");
        };
        let x: &[f32] = super::contiguous_slice(storage, layout, "quantized matmul")?;
        let m = x.len() / w.cols;
        let tile_bytes = w.cols / BLOCK * format.tile_block_bytes();
        let quantized = quantize_rows(x, w.cols);
        // Groups of up to GROUP rows (the last padded by repeating its last row), with their
        // real row counts.
        let groups: Vec<([Row; GROUP], usize)> = (0..m)
            .step_by(GROUP)
            .map(|first| {
                let len = (m - first).min(GROUP);
                let refs = std::array::from_fn(|r| quantized.row(first + r.min(len - 1)));
                (refs, len)
            })
            .collect();
        let n = w.rows;
        let mut out = vec![0f32; m * n];
        let dst = super::SharedMut(out.as_mut_ptr());
        let dst = &dst;
        let simd = simd_level();
        // Parts of whole tiles; as many as threads.
        super::column_parts(n.div_ceil(TILE), 1, |tiles| {
            for t in tiles {
                let tile = &data[t * tile_bytes..(t + 1) * tile_bytes];
                let first = t * TILE;
                let width = (n - first).min(TILE);
                for (g, (refs, len)) in groups.iter().enumerate() {
                    let values = tile_rows(simd, *format, tile, refs, *len);
                    for (r, lanes) in values.iter().take(*len).enumerate() {
                        // SAFETY: row `GROUP g + r < m` and columns `first..first + width` lie
                        // inside `out`; those columns are written by this part only.
                        let row = unsafe {
                            std::slice::from_raw_parts_mut(
                                dst.0.add((GROUP * g + r) * n + first),
                                width,
                            )
                        };
                        row.copy_from_slice(&lanes[..width]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// Rows of `x` quantized to 16 bits (see [`layout`]), with AVX-512 where the CPU has it (the
/// same values as the portable loop).
fn quantize_rows(x: &[f32], cols: usize) -> QuantizedRows {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512 BW (checked above), which implies F.
        return QuantizedRows::new(x, cols, |block, ints| unsafe {
            x86::quantize_block_avx512(block, ints)
        });
    }
    QuantizedRows::new(x, cols, layout::quantize_block)
}

/// The instructions the CPU offers the kernels (checked once per product).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    /// No AVX2: the portable loop.
    None,
    /// AVX2, FMA, F16C: `vpmaddwd`.
    Avx2,
    /// And AVX-512 F, BW and VNNI: `vpdpwssd` on 512-bit vectors.
    Vnni,
}

fn simd_level() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma") && has!("f16c")) {
            return Simd::None;
        }
        if has!("avx512vnni") && has!("avx512bw") && has!("avx512f") {
            return Simd::Vnni;
        }
        Simd::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    Simd::None
}

/// The products of one tile (see [`layout`]) with the first `n` (1 to [`GROUP`]) rows of `x`:
/// row `r`, lane `i` is weight row `i` of the tile times row `r` of `x`.
fn tile_rows(
    simd: Simd,
    format: BlockFormat,
    tile: &[u8],
    x: &[Row; GROUP],
    n: usize,
) -> [[f32; TILE]; GROUP] {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! by_rows {
            ($($kernel:ident)::+, $f:expr) => {
                match n {
                    1 => $($kernel)::+::<1, $f>(tile, x),
                    2 => $($kernel)::+::<2, $f>(tile, x),
                    3 => $($kernel)::+::<3, $f>(tile, x),
                    4 => $($kernel)::+::<4, $f>(tile, x),
                    5 => $($kernel)::+::<5, $f>(tile, x),
                    6 => $($kernel)::+::<6, $f>(tile, x),
                    7 => $($kernel)::+::<7, $f>(tile, x),
                    _ => $($kernel)::+::<8, $f>(tile, x),
                }
            };
        }
        // Each format's kernel compiled on its own (its constant choices folded away).
        macro_rules! by_format {
            ($($kernel:ident)::+) => {
                match format {
                    BlockFormat::Q4_0 => by_rows!($($kernel)::+, { BlockFormat::Q4_0.id() }),
                    BlockFormat::Q4_1 => by_rows!($($kernel)::+, { BlockFormat::Q4_1.id() }),
                    BlockFormat::Q5_0 => by_rows!($($kernel)::+, { BlockFormat::Q5_0.id() }),
                    BlockFormat::Q8_0 => by_rows!($($kernel)::+, { BlockFormat::Q8_0.id() }),
                    BlockFormat::Q4K => by_rows!($($kernel)::+, { BlockFormat::Q4K.id() }),
                    BlockFormat::Q6K => by_rows!($($kernel)::+, { BlockFormat::Q6K.id() }),
                }
            };
        }
        // SAFETY: the CPU has the instructions each kernel is compiled for (`simd` comes from
        // `simd_level`); `tile` is a whole tile and every row of `x` holds its blocks.
        match simd {
            Simd::Vnni => return unsafe { by_format!(x86::tile_vnni) },
            Simd::Avx2 => return unsafe { by_format!(x86::tile_avx2) },
            Simd::None => {}
        }
    }
    let _ = simd;
    let mut out = [[0f32; TILE]; GROUP];
    for (o, row) in out.iter_mut().zip(x).take(n) {
        *o = layout::tile_portable(format, tile, row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD kernels and the portable loop give identical results, for each block format,
    /// row count and a tile padded with zero rows; and the repacked weights dequantize to what
    /// candle dequantizes from the file's blocks.
    #[test]
    fn kernels_agree() -> Result<()> {
        let device = Device::Cpu;
        let rows = TILE + 5;
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let format = BlockFormat::of(dtype).expect("a kernel type");
            let (values, _) = format.file_block();
            let cols = if values == BLOCK {
                11 * BLOCK
            } else {
                3 * values
            };
            let f32_weight = Tensor::randn(0f32, 1.0, (rows, cols), &device)?;
            let file = QTensor::quantize(&f32_weight, dtype)?;
            let expected = file.dequantize(&device)?;
            let w = QuantizedWeight::from_qtensor(file)?.expect("a quantized type");
            let diff = (w.dequantize()? - expected)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{dtype:?} dequantized");
            let Storage::Blocks { format, data } = &w.storage else {
                panic!("{dtype:?} is a block format");
            };
            let x: Vec<f32> = Tensor::randn(0f32, 1.0, (GROUP, cols), &device)?
                .flatten_all()?
                .to_vec1()?;
            let q = quantize_rows(&x, cols);
            let x_rows: [Row; GROUP] = std::array::from_fn(|r| q.row(r));
            let level = simd_level();
            let tile_bytes = cols / BLOCK * format.tile_block_bytes();
            assert_eq!(data.len(), rows.div_ceil(TILE) * tile_bytes);
            for tile in data.chunks_exact(tile_bytes) {
                for n in 1..=GROUP {
                    let portable = tile_rows(Simd::None, *format, tile, &x_rows, n);
                    for simd in [Simd::Avx2, Simd::Vnni] {
                        if level == Simd::None || (simd == Simd::Vnni && level != Simd::Vnni) {
                            continue;
                        }
                        let fast = tile_rows(simd, *format, tile, &x_rows, n);
                        assert_eq!(fast[..n], portable[..n], "{dtype:?} {simd:?}, {n} rows");
                    }
                }
            }
        }
        Ok(())
    }

    /// The AVX-512 activation quantizer gives the portable loop's integers, scale and sum,
    /// block by block (zeros, tiny and large magnitudes included).
    #[test]
    fn quantizers_agree() -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bw") {
            let x: Vec<f32> = Tensor::randn(0f32, 1.0, 64 * BLOCK, &Device::Cpu)?.to_vec1()?;
            for (b, block) in x.chunks_exact(BLOCK).enumerate() {
                let scale = [0.0, 1e-30, 1e-3, 1.0, 3e4][b % 5];
                let block: [f32; BLOCK] = std::array::from_fn(|i| block[i] * scale);
                let (mut portable, mut wide) = ([0i16; BLOCK], [0i16; BLOCK]);
                let expected = layout::quantize_block(&block, &mut portable);
                // SAFETY: checked above.
                let got = unsafe { x86::quantize_block_avx512(&block, &mut wide) };
                assert_eq!((got, wide), (expected, portable), "block {b}");
            }
        }
        Ok(())
    }
}
