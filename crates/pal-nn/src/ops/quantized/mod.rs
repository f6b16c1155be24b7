//! Linear products against frozen weights kept in their GGUF file's block-quantized form, for
//! inference on the CPU. Decoding reads every weight once per token, so its speed is bounded by
//! the bytes it reads: a Q4_1 matrix is a sixth of its f32 form.
//!
//! Q4_0, Q4_1 and Q8_0 (blocks of 32 weights with an f16 scale) run on the kernels here: the
//! weights are repacked at load ([`layout`]: eight blocks side by side, same bytes as the file),
//! each row of `x` is quantized to 16 bits per value with a scale per block of 32 (near-exact:
//! 8 bits, as llama.cpp uses, changed SmolLM2's answers), and each weight row is read once and
//! multiplied with up to eight rows of `x` in integers ([`x86`]: AVX-512 VNNI on 512-bit vectors or AVX2, chosen at
//! run time; a portable loop elsewhere). The other quantized GGUF types (the k-quants, Q5_0, Q5_1) go through candle's
//! quantized matmul.
//!
//! For a Q4_1 block with scale `d`, offset `m` and 4-bit values `q`, against an activation block
//! with scale `a` and 8-bit values `p`: `sum((d q_i + m) a p_i) = d a sum(q_i p_i) + m a sum(p_i)`.
//! Q4_0 is Q4_1 with `m = -8 d`; Q8_0 has signed values and `m = 0`.

mod layout;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Result, Shape, Tensor};

use layout::{BlockFormat, QuantizedRows, Row, BLOCK};

/// Rows of `x` a weight block is multiplied with while it is in registers.
const GROUP: usize = 8;

enum Storage {
    /// Rows of blocks, repacked (see [`layout`]); as many bytes as in the file.
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
            Some(format) if cols % BLOCK == 0 => {
                let file = q.data()?;
                let row_bytes = cols / BLOCK * format.bytes();
                if file.len() != rows * row_bytes {
                    candle_core::bail!("{dtype:?} tensor ({rows}, {cols}): {} bytes", file.len());
                }
                let mut data = Vec::with_capacity(file.len());
                for row in file.chunks_exact(row_bytes) {
                    layout::repack_row(format, row, &mut data);
                }
                Storage::Blocks { format, data }
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

    /// The weight in f32 `(rows, cols)` (tests, and comparisons against the f32 path).
    pub fn dequantize(&self) -> Result<Tensor> {
        match &self.storage {
            Storage::Blocks { format, data } => {
                let mut out = Vec::with_capacity(self.rows * self.cols);
                for row in data.chunks_exact(self.cols / BLOCK * format.bytes()) {
                    for chunk in layout::weight_chunks(*format, row) {
                        for l in 0..chunk.count {
                            let (d, m) = chunk.scale_offset[l];
                            out.extend(chunk.ints[l].iter().map(|&q| d * q as f32 + m));
                        }
                    }
                }
                Tensor::from_vec(out, (self.rows, self.cols), &Device::Cpu)
            }
            Storage::Candle(QMatMul::QTensor(q)) => q.dequantize(&Device::Cpu),
            Storage::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.to_dtype(DType::F32),
        }
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
        let row_bytes = w.cols / BLOCK * format.bytes();
        let quantized = QuantizedRows::new(x, w.cols);
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
        // Parts of at least 32 columns; as many as threads.
        super::column_parts(n, 32, |columns| {
            for j in columns {
                let wrow = &data[j * row_bytes..(j + 1) * row_bytes];
                for (g, (refs, len)) in groups.iter().enumerate() {
                    let values = dot_rows(simd, *format, wrow, refs, *len);
                    for (r, value) in values.iter().take(*len).enumerate() {
                        // SAFETY: row `GROUP g + r < m`, column `j < n`, and column `j` is
                        // written by this part only.
                        unsafe { *dst.0.add((GROUP * g + r) * n + j) = *value };
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
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

/// Dot products of the repacked weight row `w` with the first `n` (1 to [`GROUP`]) rows of
/// `x`.
fn dot_rows(simd: Simd, format: BlockFormat, w: &[u8], x: &[Row; GROUP], n: usize) -> [f32; GROUP] {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! by_rows {
            ($($kernel:ident)::+) => {
                match n {
                    1 => $($kernel)::+::<1>(format, w, x),
                    2 => $($kernel)::+::<2>(format, w, x),
                    3 => $($kernel)::+::<3>(format, w, x),
                    4 => $($kernel)::+::<4>(format, w, x),
                    5 => $($kernel)::+::<5>(format, w, x),
                    6 => $($kernel)::+::<6>(format, w, x),
                    7 => $($kernel)::+::<7>(format, w, x),
                    _ => $($kernel)::+::<8>(format, w, x),
                }
            };
        }
        // SAFETY: the CPU has the instructions each kernel is compiled for (`simd` comes from
        // `simd_level`); `w` is a whole repacked row and every row of `x` holds its chunks.
        match simd {
            Simd::Vnni => return unsafe { by_rows!(x86::dot_vnni) },
            Simd::Avx2 => return unsafe { by_rows!(x86::dot_avx2) },
            Simd::None => {}
        }
    }
    let _ = simd;
    let mut out = [0f32; GROUP];
    for (o, row) in out.iter_mut().zip(x).take(n) {
        *o = layout::dot_portable(format, w, row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD kernels and the portable loop agree (the two SIMD kernels exactly), for each
    /// block format, row count and a row length that is not a multiple of eight blocks; and the repacked weights dequantize to
    /// what candle dequantizes from the file's blocks.
    #[test]
    fn kernels_agree() -> Result<()> {
        let device = Device::Cpu;
        let cols = 11 * BLOCK;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let f32_weight = Tensor::randn(0f32, 1.0, (4, cols), &device)?;
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
            let q = QuantizedRows::new(&x, cols);
            let rows: [Row; GROUP] = std::array::from_fn(|r| q.row(r));
            for row in data.chunks_exact(cols / BLOCK * format.bytes()) {
                for n in 1..=GROUP {
                    let slow = dot_rows(Simd::None, *format, row, &rows, n);
                    let level = simd_level();
                    if level == Simd::Vnni {
                        // Same integer sums and the same float steps: identical results, so
                        // the kernel a CPU picks never changes an answer.
                        let narrow = dot_rows(Simd::Avx2, *format, row, &rows, n);
                        let wide = dot_rows(Simd::Vnni, *format, row, &rows, n);
                        assert_eq!(narrow, wide, "{dtype:?}: AVX2 and AVX-512 kernels");
                    }
                    for simd in [Simd::Avx2, Simd::Vnni] {
                        if level == Simd::None || (simd == Simd::Vnni && level != Simd::Vnni) {
                            continue;
                        }
                        let fast = dot_rows(simd, *format, row, &rows, n);
                        for r in 0..n {
                            assert!(
                                (fast[r] - slow[r]).abs() <= 1e-4 * (1.0 + slow[r].abs()),
                                "{dtype:?} {simd:?} row {r}: {} vs {}",
                                fast[r],
                                slow[r]
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
