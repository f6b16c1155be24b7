//! The layouts the kernels read: weights repacked at load so that eight blocks sit side by side,
//! activations quantized into the same arrangement, and the portable product that defines what
//! the SIMD kernels compute.
//!
//! A row of blocks is cut into chunks of [`CHUNK`] blocks (the last may hold fewer). A weight
//! chunk of `c` blocks holds the `c` f16 scales, then (Q4_1) the `c` f16 offsets, then the
//! values as 4-byte groups: group `u` holds bytes `4u..4u+4` of each block's stored values, block
//! after block. So a 32-byte load of a full chunk's group gives block `l` in lane `l`, and a
//! dot product of 4-byte lanes (`vpdpbusd`) accumulates each block's sum in its own lane: no
//! horizontal reduction per block. The chunk takes exactly the bytes of its blocks in the file.
//! Activations are quantized to 16 bits per value (scale `amax / 32767` per block of 32: about
//! 1.5e-5 of the block's largest value, so products match the f32 path's to about 1e-5, and
//! greedy answers with them). An activation chunk is always eight blocks: for each group `g`
//! (values `4g..4g+4` of every block) two vectors of sixteen 16-bit values, laid out as the
//! kernels' 8-to-16-bit unpacking lays out the weights (see [`act_offset`]); then its scales and
//! sums, zero past `c`.

use candle_core::quantized::GgmlDType;

/// Weights per block in every format the kernels take.
pub(super) const BLOCK: usize = 32;
/// Blocks per chunk: one per 4-byte lane of a 256-bit vector.
pub(super) const CHUNK: usize = 8;

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
    pub(super) fn value_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 16,
            Self::Q8_0 => 32,
        }
    }

    /// Bytes of scale (and offset) per block.
    fn scale_bytes(self) -> usize {
        self.bytes() - self.value_bytes()
    }
}

/// One row of file blocks repacked into chunks (see the module docs), appended to `out`.
pub(super) fn repack_row(format: BlockFormat, file_row: &[u8], out: &mut Vec<u8>) {
    let blocks: Vec<&[u8]> = file_row.chunks_exact(format.bytes()).collect();
    for chunk in blocks.chunks(CHUNK) {
        for part in 0..format.scale_bytes() / 2 {
            for block in chunk {
                out.extend_from_slice(&block[2 * part..2 * part + 2]);
            }
        }
        for group in 0..format.value_bytes() / 4 {
            for block in chunk {
                let values = &block[format.scale_bytes()..];
                out.extend_from_slice(&values[4 * group..4 * group + 4]);
            }
        }
    }
}

/// One chunk of a repacked weight row, decoded (for the portable product and dequantization).
pub(super) struct WeightChunk {
    /// Blocks in the chunk.
    pub count: usize,
    /// Per block: scale and offset (`value = d q + m`).
    pub scale_offset: [(f32, f32); CHUNK],
    /// Per block: the stored integers (0..15 for 4-bit formats, signed for Q8_0).
    pub ints: [[i32; BLOCK]; CHUNK],
}

/// The decoded chunks of a repacked weight row.
pub(super) fn weight_chunks(format: BlockFormat, row: &[u8]) -> Vec<WeightChunk> {
    let blocks = row.len() / format.bytes();
    let mut chunks = vec![];
    let mut at = 0;
    let mut first = 0;
    while first < blocks {
        let count = (blocks - first).min(CHUNK);
        let f16 = |i: usize| half::f16::from_le_bytes([row[i], row[i + 1]]).to_f32();
        let mut scale_offset = [(0f32, 0f32); CHUNK];
        for (l, so) in scale_offset.iter_mut().take(count).enumerate() {
            let d = f16(at + 2 * l);
            let m = match format {
                BlockFormat::Q4_1 => f16(at + 2 * count + 2 * l),
                BlockFormat::Q4_0 => -8.0 * d,
                BlockFormat::Q8_0 => 0.0,
            };
            *so = (d, m);
        }
        at += format.scale_bytes() * count;
        let mut ints = [[0i32; BLOCK]; CHUNK];
        for group in 0..format.value_bytes() / 4 {
            for (l, block) in ints.iter_mut().take(count).enumerate() {
                for j in 0..4 {
                    let byte = row[at + group * 4 * count + 4 * l + j];
                    let i = 4 * group + j;
                    match format {
                        BlockFormat::Q8_0 => block[i] = i32::from(byte as i8),
                        _ => {
                            block[i] = i32::from(byte & 0x0F);
                            block[i + 16] = i32::from(byte >> 4);
                        }
                    }
                }
            }
        }
        at += format.value_bytes() * count;
        chunks.push(WeightChunk {
            count,
            scale_offset,
            ints,
        });
        first += count;
    }
    chunks
}

/// 16-bit values per activation chunk: eight groups, two vectors of sixteen each.
pub(super) const CHUNK_VALUES: usize = CHUNK * BLOCK;

/// Where the sixteen 16-bit activations of vector `h` (0 or 1) of group `g` start in a chunk:
/// the vectors of groups `2p` and `2p + 1` are stored as low(2p), low(2p + 1), high(2p),
/// high(2p + 1), so that the 512-bit kernel reads the two low (or high) vectors of a pair of
/// groups with one load, just as it unpacks the pair's 64 weight bytes.
pub(super) fn act_vector(g: usize, h: usize) -> usize {
    16 * (4 * (g / 2) + 2 * h + g % 2)
}

/// Where value `4 g + e` (`e` in 0..4) of block `l` of a chunk lies among the chunk's 16-bit
/// activation values. Unpacking a group's 32 bytes (four per block) to 16 bits gives two
/// vectors: the low halves of each 128-bit lane hold blocks 0, 1, 4, 5 (vector 0 of the group)
/// and the high halves blocks 2, 3, 6, 7 (vector 1), each block's four values in two 32-bit
/// lanes; the activations are stored in that order (the vectors as [`act_vector`] places them).
pub(super) fn act_offset(g: usize, l: usize, e: usize) -> usize {
    act_vector(g, (l / 2) % 2) + 4 * (l % 2) + 8 * (l / 4) + e
}

/// Rows of `x` quantized to 16 bits per value with a scale per block of 32 (`amax / 32767`),
/// in chunks (see the module docs): per chunk, [`CHUNK_VALUES`] values, eight scales and eight
/// sums (scale times the sum of the block's values).
pub(super) struct QuantizedRows {
    values: Vec<i16>,
    scales: Vec<f32>,
    sums: Vec<f32>,
    chunks: usize,
}

/// One quantized row of `x`.
#[derive(Clone, Copy)]
pub(super) struct Row<'a> {
    /// `chunks * CHUNK_VALUES` values.
    pub values: &'a [i16],
    /// `chunks * 8` scales.
    pub scales: &'a [f32],
    /// `chunks * 8` sums.
    pub sums: &'a [f32],
}

impl QuantizedRows {
    /// Quantizes rows of `cols` values (a multiple of 32).
    pub(super) fn new(x: &[f32], cols: usize) -> Self {
        let rows = x.len() / cols;
        let blocks = cols / BLOCK;
        let chunks = blocks.div_ceil(CHUNK);
        let mut values = vec![0i16; rows * chunks * CHUNK_VALUES];
        let mut scales = vec![0f32; rows * chunks * CHUNK];
        let mut sums = vec![0f32; rows * chunks * CHUNK];
        // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (ties to even) in a
        // form the compiler vectorizes; |v * inv| <= 32767.
        const ROUND: f32 = 12_582_912.0;
        for (r, row) in x.chunks_exact(cols).enumerate() {
            for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 32767.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let mut ints = [0i32; BLOCK];
                for (q, &v) in ints.iter_mut().zip(block) {
                    *q = ((v * inv + ROUND) - ROUND) as i32;
                }
                let (chunk, lane) = (b / CHUNK, b % CHUNK);
                let base = (r * chunks + chunk) * CHUNK_VALUES;
                for (g, four) in ints.chunks_exact(4).enumerate() {
                    let at = base + act_offset(g, lane, 0);
                    for (v, &q) in values[at..at + 4].iter_mut().zip(four) {
                        *v = q as i16;
                    }
                }
                let at = (r * chunks + chunk) * CHUNK + lane;
                scales[at] = d;
                sums[at] = d * ints.iter().sum::<i32>() as f32;
            }
        }
        Self {
            values,
            scales,
            sums,
            chunks,
        }
    }

    /// Row `i`.
    pub(super) fn row(&self, i: usize) -> Row<'_> {
        let (v, s) = (self.chunks * CHUNK_VALUES, self.chunks * CHUNK);
        Row {
            values: &self.values[i * v..(i + 1) * v],
            scales: &self.scales[i * s..(i + 1) * s],
            sums: &self.sums[i * s..(i + 1) * s],
        }
    }
}

/// The product of one repacked weight row with one quantized row, without SIMD: what the
/// kernels compute.
pub(super) fn dot_portable(format: BlockFormat, w: &[u8], x: &Row) -> f32 {
    let mut total = 0f32;
    for (c, chunk) in weight_chunks(format, w).iter().enumerate() {
        for l in 0..chunk.count {
            let (d, m) = chunk.scale_offset[l];
            let at = c * CHUNK + l;
            let mut dot = 0i32;
            for (i, &q) in chunk.ints[l].iter().enumerate() {
                let p = x.values[c * CHUNK_VALUES + act_offset(i / 4, l, i % 4)];
                dot += q * i32::from(p);
            }
            total += d * x.scales[at] * dot as f32 + m * x.sums[at];
        }
    }
    total
}
