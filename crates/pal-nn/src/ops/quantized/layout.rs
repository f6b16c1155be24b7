//! The layouts the kernels read: weights repacked at load into tiles of [`TILE`] rows, so that a
//! vector holds one value pair of the same block for every row of a tile; activations quantized
//! to 16 bits in their natural order; and the portable product that defines what the SIMD
//! kernels compute.
//!
//! A tile is [`TILE`] consecutive weight rows (the last tile is padded with zero rows). For each
//! block index `b` of the rows (blocks of 32 values, [`file_blocks`] reads them from the file),
//! a tile holds the 16 scales (one per row: f16 as in the file, f32 for the k-quants), then
//! (Q6_K) the 16 scales of the blocks' second halves, then (Q4_1, Q4_K) the 16 offsets, then the
//! values:
//! - 4-bit values: four 64-byte segments; 32-bit lane `i` of segment `s` is row `i`'s value
//!   pairs `4s..4s+4` as nibbles: pair `4s + j` (values `8s + 2j` and `8s + 2j + 1`) at bits
//!   `4j` and `16 + 4j`. So `(lane >> 4j) & 0x000F000F` is the pair as two 16-bit integers;
//!   Q5_0 adds a 64-byte plane of fifth bits, lane `i` bits `p` and `16 + p` for pair `p`;
//! - byte values (Q8_0, Q6_K less 32): sixteen 32-byte segments; segment `k` holds values
//!   `2k, 2k + 1` of each row, row after row, so sign-extending it to 16 bits gives the pair in
//!   each 32-bit lane.
//!
//! One `vpdpwssd` of such a vector with an activation pair broadcast to every lane adds that
//! pair's products to all sixteen rows at once; sixteen of them make a block, then one multiply
//! by the scales per block and row. Every lane ends with an output: no horizontal sums, and no
//! padding inside rows whatever their length (a multiple of 32). A tile of a 32-value type takes
//! exactly the bytes of its blocks in the file.
//!
//! Activations are quantized to 16 bits per value (scale `amax / 32767` per block of 32: about
//! 1.5e-5 of the block's largest value, so products match the f32 path's to about 1e-5, and
//! greedy answers with them), with the block's scale and its sum (scale times the sum of its
//! integers) beside them.
//!
//! [`file_blocks`]: super::file_blocks

pub(super) use super::file_blocks::BlockFormat;
pub(super) use super::file_blocks::BLOCK;
use super::file_blocks::{self, Block32};

/// Weight rows per tile: one per 32-bit lane of a 512-bit vector.
pub(super) const TILE: usize = 16;

/// How a format stores its values (per row and block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Values {
    /// 16 bytes of 4-bit values, in four 64-byte segments per tile (see the module docs).
    Nibbles,
    /// As `Nibbles`, then a 64-byte plane of fifth bits: lane `i` bit `p` is the high bit of
    /// row `i`'s value `2p`, bit `16 + p` that of value `2p + 1`.
    NibblesHigh,
    /// 32 signed bytes, in sixteen 32-byte segments per tile.
    Bytes,
}

/// Where a format's offset comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Offset {
    /// No offset.
    None,
    /// The scale times a constant.
    OfScale(f32),
    /// Stored after the scales, as the scales are.
    Stored,
}

impl BlockFormat {
    /// The format as a number, for kernels compiled per format (a const generic).
    pub(super) const fn id(self) -> u8 {
        self as u8
    }

    /// The format of [`Self::id`].
    #[inline(always)]
    pub(super) fn from_id(id: u8) -> Self {
        [
            Self::Q4_0,
            Self::Q4_1,
            Self::Q5_0,
            Self::Q8_0,
            Self::Q4K,
            Self::Q6K,
        ][id as usize]
    }

    /// Whether scales (and a stored offset) are f32 rather than the file's f16: a k-quant's are
    /// an f16 times a small integer.
    pub(super) fn f32_scales(self) -> bool {
        matches!(self, Self::Q4K | Self::Q6K)
    }

    /// Whether each 16-value half of a block has its own scale (Q6_K).
    pub(super) fn split_scales(self) -> bool {
        self == Self::Q6K
    }

    pub(super) fn values(self) -> Values {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q4K => Values::Nibbles,
            Self::Q5_0 => Values::NibblesHigh,
            Self::Q8_0 | Self::Q6K => Values::Bytes,
        }
    }

    pub(super) fn offset(self) -> Offset {
        match self {
            Self::Q4_0 => Offset::OfScale(-8.0),
            Self::Q5_0 => Offset::OfScale(-16.0),
            Self::Q4_1 | Self::Q4K => Offset::Stored,
            Self::Q8_0 | Self::Q6K => Offset::None,
        }
    }

    /// Bytes of one stored scale or offset.
    fn scale_size(self) -> usize {
        if self.f32_scales() {
            4
        } else {
            2
        }
    }

    /// Bytes of scales and offsets per row and block.
    fn scale_bytes(self) -> usize {
        let count =
            1 + usize::from(self.split_scales()) + usize::from(self.offset() == Offset::Stored);
        count * self.scale_size()
    }

    /// Bytes of values per row and block.
    fn value_bytes(self) -> usize {
        match self.values() {
            Values::Nibbles => 16,
            Values::NibblesHigh => 20,
            Values::Bytes => 32,
        }
    }

    /// Bytes of one block index of a tile: its [`TILE`] rows' blocks.
    pub(super) fn tile_block_bytes(self) -> usize {
        TILE * (self.scale_bytes() + self.value_bytes())
    }
}

/// Reads a scale or offset of a format stored at `at`.
fn scale_at(format: BlockFormat, bytes: &[u8], at: usize) -> f32 {
    if format.f32_scales() {
        f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    } else {
        half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
    }
}

/// Appends a scale or offset in a format's width (an f16 one came from an f16: exact).
fn push_scale(format: BlockFormat, value: f32, out: &mut Vec<u8>) {
    if format.f32_scales() {
        out.extend_from_slice(&value.to_le_bytes());
    } else {
        out.extend_from_slice(&half::f16::from_f32(value).to_le_bytes());
    }
}

/// A file matrix of `dtype` with `rows` rows of `cols` values, repacked into tiles (see the
/// module docs).
pub(super) fn repack(format: BlockFormat, file: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let blocks = cols / BLOCK;
    let row_bytes = file.len() / rows.max(1);
    let zero = Block32 {
        scales: [0.0; 2],
        offset: 0.0,
        ints: [0; BLOCK],
    };
    let tiles = rows.div_ceil(TILE);
    let mut out = Vec::with_capacity(tiles * blocks * format.tile_block_bytes());
    let mut tile: Vec<Vec<Block32>> = (0..TILE).map(|_| Vec::with_capacity(blocks)).collect();
    for t in 0..tiles {
        for (i, decoded) in tile.iter_mut().enumerate() {
            decoded.clear();
            match t * TILE + i {
                row if row < rows => {
                    let bytes = &file[row * row_bytes..(row + 1) * row_bytes];
                    file_blocks::read_row(format, bytes, decoded);
                }
                _ => decoded.resize(blocks, zero),
            }
        }
        let block_indices = (0..blocks).map(|b| std::array::from_fn(|i| &tile[i][b]));
        for block in block_indices {
            let block: [&Block32; TILE] = block;
            for r in block {
                push_scale(format, r.scales[0], &mut out);
            }
            if format.split_scales() {
                for r in block {
                    push_scale(format, r.scales[1], &mut out);
                }
            }
            if format.offset() == Offset::Stored {
                for r in block {
                    push_scale(format, r.offset, &mut out);
                }
            }
            let ints = block.map(|r| r.ints);
            match format.values() {
                Values::Bytes => {
                    for k in 0..BLOCK / 2 {
                        for v in ints {
                            out.extend_from_slice(&[v[2 * k] as u8, v[2 * k + 1] as u8]);
                        }
                    }
                }
                Values::Nibbles | Values::NibblesHigh => {
                    let nibble = |v: i8| (v as u32) & 0x0F;
                    for s in 0..4 {
                        for v in ints {
                            let mut lane = 0u32;
                            for j in 0..4 {
                                let pair = 4 * s + j;
                                lane |= nibble(v[2 * pair]) << (4 * j);
                                lane |= nibble(v[2 * pair + 1]) << (16 + 4 * j);
                            }
                            out.extend_from_slice(&lane.to_le_bytes());
                        }
                    }
                    if format.values() == Values::NibblesHigh {
                        for v in ints {
                            let mut lane = 0u32;
                            for pair in 0..BLOCK / 2 {
                                lane |= ((v[2 * pair] as u32 >> 4) & 1) << pair;
                                lane |= ((v[2 * pair + 1] as u32 >> 4) & 1) << (16 + pair);
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
    /// Per row: the scale of each 16-value half.
    pub scales: [[f32; 2]; TILE],
    /// Per row: the offset (`value = d q + m`).
    pub offsets: [f32; TILE],
    /// Per row: the block's integers (0..15 for 4-bit formats, 0..31 for Q5_0, signed for the
    /// byte formats).
    pub ints: [[i32; BLOCK]; TILE],
}

impl TileBlock {
    /// Row `i`'s 32 values in f32 (`scale * int + offset`), into `out`.
    pub fn values(&self, i: usize, out: &mut [f32]) {
        for (v, (o, &q)) in out.iter_mut().zip(&self.ints[i]).enumerate() {
            *o = self.scales[i][v / (BLOCK / 2)] * q as f32 + self.offsets[i];
        }
    }
}

/// Decodes one block index of a tile (`format.tile_block_bytes()` bytes).
pub(super) fn tile_block(format: BlockFormat, bytes: &[u8]) -> TileBlock {
    let size = format.scale_size();
    let mut scales = [[0f32; 2]; TILE];
    let mut offsets = [0f32; TILE];
    let mut at = 0;
    for s in scales.iter_mut() {
        *s = [scale_at(format, bytes, at); 2];
        at += size;
    }
    if format.split_scales() {
        for s in scales.iter_mut() {
            s[1] = scale_at(format, bytes, at);
            at += size;
        }
    }
    for (i, m) in offsets.iter_mut().enumerate() {
        *m = match format.offset() {
            Offset::None => 0.0,
            Offset::OfScale(k) => scales[i][0] * k,
            Offset::Stored => {
                at += size;
                scale_at(format, bytes, at - size)
            }
        };
    }
    let values = &bytes[at..];
    let mut ints = [[0i32; BLOCK]; TILE];
    for (i, row) in ints.iter_mut().enumerate() {
        match format.values() {
            Values::Bytes => {
                for k in 0..BLOCK / 2 {
                    let at = 2 * (k * TILE + i);
                    row[2 * k] = i32::from(values[at] as i8);
                    row[2 * k + 1] = i32::from(values[at + 1] as i8);
                }
            }
            Values::Nibbles | Values::NibblesHigh => {
                let lane = |at: usize| {
                    u32::from_le_bytes([values[at], values[at + 1], values[at + 2], values[at + 3]])
                };
                let high = match format.values() {
                    Values::NibblesHigh => lane(4 * (4 * TILE + i)),
                    _ => 0,
                };
                for s in 0..4 {
                    let bits = lane(4 * (s * TILE + i));
                    for j in 0..4 {
                        let pair = 4 * s + j;
                        let fifth = |shift: usize| ((high >> (shift + pair)) & 1) << 4;
                        row[2 * pair] = (((bits >> (4 * j)) & 0x0F) | fifth(0)) as i32;
                        row[2 * pair + 1] = (((bits >> (16 + 4 * j)) & 0x0F) | fifth(16)) as i32;
                    }
                }
            }
        }
    }
    TileBlock {
        scales,
        offsets,
        ints,
    }
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
    let dot = |ints: &[i32], values: &[i16]| -> i32 {
        ints.iter()
            .zip(values)
            .map(|(&q, &p)| q * i32::from(p))
            .sum()
    };
    for (b, bytes) in tile.chunks_exact(format.tile_block_bytes()).enumerate() {
        let block = tile_block(format, bytes);
        let values = &x.values[b * BLOCK..(b + 1) * BLOCK];
        for (i, out) in acc.iter_mut().enumerate() {
            let [d, d_high] = block.scales[i];
            let ints = &block.ints[i];
            if format.split_scales() {
                let low = dot(&ints[..BLOCK / 2], &values[..BLOCK / 2]);
                let high = dot(&ints[BLOCK / 2..], &values[BLOCK / 2..]);
                *out = (low as f32).mul_add(d * x.scales[b], *out);
                *out = (high as f32).mul_add(d_high * x.scales[b], *out);
            } else {
                *out = (dot(ints, values) as f32).mul_add(d * x.scales[b], *out);
            }
            if format.offset() != Offset::None {
                *out = block.offsets[i].mul_add(x.sums[b], *out);
            }
        }
    }
    acc
}
