//! The layouts the kernels read: weights repacked at load into tiles of [`TILE`] rows, so that a
//! vector holds one value pair of the same block for every row of a tile; activations quantized
//! to 16 bits in their natural order; and the portable product that defines what the SIMD
//! kernels compute.
//!
//! A tile is [`TILE`] consecutive weight rows (the last tile is padded with zero rows). For each
//! block index `b` of the rows, a tile holds the 16 f16 scales (one per row), then (Q4_1) the 16
//! f16 offsets, then the values:
//! - 4-bit formats: four 64-byte segments; 32-bit lane `i` of segment `s` is row `i`'s value
//!   pairs `4s..4s+4` as nibbles: pair `4s + j` (values `8s + 2j` and `8s + 2j + 1`) at bits
//!   `4j` and `16 + 4j`. So `(lane >> 4j) & 0x000F000F` is the pair as two 16-bit integers;
//! - Q8_0: sixteen 32-byte segments; segment `k` holds values `2k, 2k + 1` of each row, row
//!   after row, so sign-extending it to 16 bits gives the pair in each 32-bit lane.
//!
//! One `vpdpwssd` of such a vector with an activation pair broadcast to every lane adds that
//! pair's products to all sixteen rows at once; sixteen of them make a block, then one multiply
//! by the scales per block and row. Every lane ends with an output: no horizontal sums, and no
//! padding inside rows whatever their length (a multiple of 32). The tile takes exactly the
//! bytes of its blocks in the file.
//!
//! Activations are quantized to 16 bits per value (scale `amax / 32767` per block of 32: about
//! 1.5e-5 of the block's largest value, so products match the f32 path's to about 1e-5, and
//! greedy answers with them), with the block's scale and its sum (scale times the sum of its
//! integers) beside them.

use candle_core::quantized::GgmlDType;

/// Weights per block in every format the kernels take.
pub(super) const BLOCK: usize = 32;
/// Weight rows per tile: one per 32-bit lane of a 512-bit vector.
pub(super) const TILE: usize = 16;

/// The block formats the kernels multiply directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BlockFormat {
    /// f16 scale, 16 bytes of 4-bit values (value `d (q - 8)`).
    Q4_0,
    /// f16 scale, f16 offset, 16 bytes of 4-bit values (value `d q + m`).
    Q4_1,
    /// f16 scale, 32 signed bytes (value `d q`).
    Q8_0,
}

impl BlockFormat {
    /// The format of a GGUF type, if the kernels take it.
    pub(super) fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes per block (in the file and repacked).
    pub(super) fn bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of stored values per block.
    fn value_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 16,
            Self::Q8_0 => 32,
        }
    }

    /// Bytes of scale (and offset) per block.
    fn scale_bytes(self) -> usize {
        self.bytes() - self.value_bytes()
    }

    /// Bytes of one block index of a tile: its [`TILE`] rows' blocks.
    pub(super) fn tile_block_bytes(self) -> usize {
        TILE * self.bytes()
    }
}

/// Value `v` (0..32) of a 4-bit block's stored bytes: values 0..16 in the low nibbles, 16..32 in
/// the high ones (GGML's order).
fn nibble(values: &[u8], v: usize) -> u32 {
    if v < 16 {
        u32::from(values[v] & 0x0F)
    } else {
        u32::from(values[v - 16] >> 4)
    }
}

/// A file matrix of `rows` rows of `cols / BLOCK` blocks, repacked into tiles (see the module
/// docs).
pub(super) fn repack(format: BlockFormat, file: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let blocks = cols / BLOCK;
    let row_bytes = blocks * format.bytes();
    let tiles = rows.div_ceil(TILE);
    let zero = vec![0u8; format.bytes()];
    let mut out = Vec::with_capacity(tiles * blocks * format.tile_block_bytes());
    for t in 0..tiles {
        for b in 0..blocks {
            let block: [&[u8]; TILE] = std::array::from_fn(|i| {
                let row = t * TILE + i;
                if row < rows {
                    &file[row * row_bytes + b * format.bytes()..][..format.bytes()]
                } else {
                    &zero
                }
            });
            for part in 0..format.scale_bytes() / 2 {
                for bytes in block {
                    out.extend_from_slice(&bytes[2 * part..2 * part + 2]);
                }
            }
            let values = block.map(|bytes| &bytes[format.scale_bytes()..]);
            match format {
                BlockFormat::Q8_0 => {
                    for k in 0..BLOCK / 2 {
                        for v in values {
                            out.extend_from_slice(&v[2 * k..2 * k + 2]);
                        }
                    }
                }
                BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                    for s in 0..4 {
                        for v in values {
                            let mut lane = 0u32;
                            for j in 0..4 {
                                let pair = 4 * s + j;
                                lane |= nibble(v, 2 * pair) << (4 * j);
                                lane |= nibble(v, 2 * pair + 1) << (16 + 4 * j);
                            }
                            out.extend_from_slice(&lane.to_le_bytes());
                        }
                    }
                }
            }
        }
    }
    out
}

/// One block index of a tile, decoded (for the portable product and dequantization).
pub(super) struct TileBlock {
    /// Per row: scale and offset (`value = d q + m`).
    pub scale_offset: [(f32, f32); TILE],
    /// Per row: the block's integers (0..15 for 4-bit formats, signed for Q8_0).
    pub ints: [[i32; BLOCK]; TILE],
}

/// Decodes one block index of a tile (`format.tile_block_bytes()` bytes).
pub(super) fn tile_block(format: BlockFormat, bytes: &[u8]) -> TileBlock {
    let f16 = |i: usize| half::f16::from_le_bytes([bytes[i], bytes[i + 1]]).to_f32();
    let mut scale_offset = [(0f32, 0f32); TILE];
    for (i, so) in scale_offset.iter_mut().enumerate() {
        let d = f16(2 * i);
        let m = match format {
            BlockFormat::Q4_1 => f16(2 * TILE + 2 * i),
            BlockFormat::Q4_0 => d * -8.0,
            BlockFormat::Q8_0 => 0.0,
        };
        *so = (d, m);
    }
    let values = &bytes[TILE * format.scale_bytes()..];
    let mut ints = [[0i32; BLOCK]; TILE];
    for (i, row) in ints.iter_mut().enumerate() {
        match format {
            BlockFormat::Q8_0 => {
                for k in 0..BLOCK / 2 {
                    let at = 2 * (k * TILE + i);
                    row[2 * k] = i32::from(values[at] as i8);
                    row[2 * k + 1] = i32::from(values[at + 1] as i8);
                }
            }
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                for s in 0..4 {
                    let at = 4 * (s * TILE + i);
                    let lane = u32::from_le_bytes([
                        values[at],
                        values[at + 1],
                        values[at + 2],
                        values[at + 3],
                    ]);
                    for j in 0..4 {
                        let pair = 4 * s + j;
                        row[2 * pair] = ((lane >> (4 * j)) & 0x0F) as i32;
                        row[2 * pair + 1] = ((lane >> (16 + 4 * j)) & 0x0F) as i32;
                    }
                }
            }
        }
    }
    TileBlock { scale_offset, ints }
}

/// Rows of `x` quantized to 16 bits per value with a scale per block of 32 (`amax / 32767`),
/// in their natural order, with each block's scale and sum.
pub(super) struct QuantizedRows {
    values: Vec<i16>,
    scales: Vec<f32>,
    sums: Vec<f32>,
    cols: usize,
}

/// One quantized row of `x`.
#[derive(Clone, Copy)]
pub(super) struct Row<'a> {
    /// `cols` values.
    pub values: &'a [i16],
    /// One scale per block.
    pub scales: &'a [f32],
    /// Per block: scale times the sum of its values.
    pub sums: &'a [f32],
}

impl QuantizedRows {
    /// Quantizes rows of `cols` values (a multiple of 32), block by block with `quantize` (a
    /// block's values to integers, returning its scale and the integers' sum: [`quantize_block`]
    /// or a SIMD version of it).
    pub(super) fn new(
        x: &[f32],
        cols: usize,
        quantize: impl Fn(&[f32; BLOCK], &mut [i16; BLOCK]) -> (f32, i32),
    ) -> Self {
        let rows = x.len() / cols;
        let blocks = cols / BLOCK;
        let mut values = vec![0i16; rows * cols];
        let mut scales = vec![0f32; rows * blocks];
        let mut sums = vec![0f32; rows * blocks];
        let parts = x.chunks_exact(BLOCK).zip(values.chunks_exact_mut(BLOCK));
        for ((block, ints), (scale, sum)) in parts.zip(scales.iter_mut().zip(sums.iter_mut())) {
            let block: &[f32; BLOCK] = block.try_into().expect("a whole block");
            let ints: &mut [i16; BLOCK] = ints.try_into().expect("a whole block");
            let (d, total) = quantize(block, ints);
            *scale = d;
            *sum = d * total as f32;
        }
        Self {
            values,
            scales,
            sums,
            cols,
        }
    }

    /// Row `i`.
    pub(super) fn row(&self, i: usize) -> Row<'_> {
        let blocks = self.cols / BLOCK;
        Row {
            values: &self.values[i * self.cols..(i + 1) * self.cols],
            scales: &self.scales[i * blocks..(i + 1) * blocks],
            sums: &self.sums[i * blocks..(i + 1) * blocks],
        }
    }
}

/// One block of 32 activations quantized to 16 bits: returns the scale (`amax / 32767`) and the
/// sum of the integers.
pub(super) fn quantize_block(block: &[f32; BLOCK], ints: &mut [i16; BLOCK]) -> (f32, i32) {
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (ties to even) in a form
    // the compiler vectorizes; |v * inv| <= 32767.
    const ROUND: f32 = 12_582_912.0;
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 32767.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut total = 0i32;
    for (q, &v) in ints.iter_mut().zip(block) {
        let rounded = ((v * inv + ROUND) - ROUND) as i32;
        total += rounded;
        *q = rounded as i16;
    }
    (d, total)
}

/// The products of one tile's rows with one quantized row, without SIMD: what the kernels
/// compute, lane by lane and in the same order of float operations.
pub(super) fn tile_portable(format: BlockFormat, tile: &[u8], x: &Row) -> [f32; TILE] {
    let mut acc = [0f32; TILE];
    for (b, bytes) in tile.chunks_exact(format.tile_block_bytes()).enumerate() {
        let block = tile_block(format, bytes);
        let values = &x.values[b * BLOCK..(b + 1) * BLOCK];
        for (i, out) in acc.iter_mut().enumerate() {
            let (d, m) = block.scale_offset[i];
            let dot: i32 = block.ints[i]
                .iter()
                .zip(values)
                .map(|(&q, &p)| q * i32::from(p))
                .sum();
            *out = (dot as f32).mul_add(d * x.scales[b], *out);
            if format != BlockFormat::Q8_0 {
                *out = m.mul_add(x.sums[b], *out);
            }
        }
    }
    acc
}
