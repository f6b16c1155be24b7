//! The GGUF block types the kernels take, read from a file row into blocks of 32 values: each
//! value is `scale * int + offset`, with one scale per 16-value half (equal halves except in
//! Q6_K, whose scales are per 16 values). Every scale and offset is exactly what GGML computes
//! from the stored fields (an f16 times a 6- or 8-bit integer is exact in f32), so a weight
//! dequantizes to the same f32 values as GGML's own dequantization.
//!
//! - Q4_0: f16 `d`, 16 bytes of nibbles: value `d (q - 8)`.
//! - Q4_1: f16 `d`, f16 `m`, 16 bytes of nibbles: `d q + m`.
//! - Q5_0: f16 `d`, 32 high bits, 16 bytes of nibbles: `d (q - 16)`, `q` 5 bits.
//! - Q8_0: f16 `d`, 32 signed bytes: `d q`.
//! - Q4_K: super-blocks of 256: f16 `d`, f16 `dmin`, twelve bytes packing a 6-bit scale and
//!   6-bit minimum per 32 values, 128 bytes of nibbles: `d sc q - dmin mn`.
//! - Q6_K: super-blocks of 256: 128 bytes of low nibbles, 64 of 2-bit high parts, sixteen
//!   signed 8-bit scales (one per 16 values), f16 `d`: `d sc (q - 32)`, `q` 6 bits.
//!
//! In a block of 32 of the 4-bit types, values 0..16 are the low nibbles of the 16 bytes and
//! 16..32 the high ones; in Q4_K the low nibbles of 32 bytes are one block and their high
//! nibbles the next.

use candle_core::quantized::GgmlDType;

/// Values per block of the kernels' layout.
pub(super) const BLOCK: usize = 32;

/// One block of 32 values: value `i` is `scales[i / 16] * ints[i] + offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Block32 {
    pub scales: [f32; 2],
    pub offset: f32,
    pub ints: [i8; BLOCK],
}

/// The block formats the kernels multiply directly: the file's type, repacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BlockFormat {
    /// f16 scale, 4-bit values (value `d (q - 8)`).
    Q4_0,
    /// f16 scale, f16 offset, 4-bit values (value `d q + m`).
    Q4_1,
    /// f16 scale, 5-bit values as 4-bit ones and a plane of high bits (value `d (q - 16)`).
    Q5_0,
    /// f16 scale, signed bytes (value `d q`).
    Q8_0,
    /// Q4_K, one block of 32 at a time: f32 scale, f32 offset, 4-bit values (`d q + m`).
    Q4K,
    /// Q6_K, one block of 32 at a time: an f32 scale per 16 values, signed bytes (`d q`).
    Q6K,
}

impl BlockFormat {
    /// The format of a GGUF type, if the kernels take it.
    pub(super) fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// Values and bytes of one of the file's blocks of this format.
    pub(super) fn file_block(self) -> (usize, usize) {
        match self {
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The blocks of 32 of one file row of `format` (whole file blocks, as
/// [`BlockFormat::file_block`] sizes them), appended to `out`.
pub(super) fn read_row(format: BlockFormat, row: &[u8], out: &mut Vec<Block32>) {
    let (_, bytes) = format.file_block();
    for block in row.chunks_exact(bytes) {
        match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q5_0 => {
                out.push(small_4bit(format, block))
            }
            BlockFormat::Q8_0 => {
                let d = f16_at(block, 0);
                out.push(Block32 {
                    scales: [d, d],
                    offset: 0.0,
                    ints: std::array::from_fn(|i| block[2 + i] as i8),
                });
            }
            BlockFormat::Q4K => q4k(block, out),
            BlockFormat::Q6K => q6k(block, out),
        }
    }
}

/// A Q4_0, Q4_1 or Q5_0 block.
fn small_4bit(format: BlockFormat, block: &[u8]) -> Block32 {
    let d = f16_at(block, 0);
    let (offset, high, nibbles) = match format {
        BlockFormat::Q4_0 => (d * -8.0, 0, &block[2..18]),
        BlockFormat::Q4_1 => (f16_at(block, 2), 0, &block[4..20]),
        _ => {
            let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            (d * -16.0, high, &block[6..22])
        }
    };
    let ints = std::array::from_fn(|i| {
        let nibble = if i < 16 {
            nibbles[i] & 0x0F
        } else {
            nibbles[i - 16] >> 4
        };
        (nibble | (((high >> i) & 1) as u8) << 4) as i8
    });
    Block32 {
        scales: [d, d],
        offset,
        ints,
    }
}

/// Scale and minimum of block `j` (0..8) of a Q4_K super-block from its twelve packed bytes:
/// blocks 0..4 in the low six bits of bytes `j` and `j + 4`; blocks 4..8 in a nibble of byte
/// `j + 4` with two high bits from the top of bytes `j - 4` and `j`.
fn q4k_scale_min(packed: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    }
}

fn q4k(block: &[u8], out: &mut Vec<Block32>) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let packed = &block[4..16];
    let qs = &block[16..144];
    for j in 0..8 {
        let (sc, mn) = q4k_scale_min(packed, j);
        let scale = d * f32::from(sc);
        let bytes = &qs[32 * (j / 2)..32 * (j / 2 + 1)];
        let shift = 4 * (j % 2);
        out.push(Block32 {
            scales: [scale, scale],
            offset: -(dmin * f32::from(mn)),
            ints: std::array::from_fn(|i| ((bytes[i] >> shift) & 0x0F) as i8),
        });
    }
}

/// Value `v` (0..256) of a Q6_K super-block is in half `v / 128`, quarter `(v % 128) / 32`:
/// its low nibble is byte `l` (quarters 0, 2) or `l + 32` (1, 3) of the half's 64 low bytes,
/// low nibble for quarters 0, 1 and high for 2, 3 (`l = v % 32`); its two high bits are bits
/// `2 quarter` of byte `l` of the half's 32 high bytes.
fn q6k(block: &[u8], out: &mut Vec<Block32>) {
    let (low, high, scales) = (&block[..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    for b in 0..8 {
        let (half, quarter) = (b / 4, b % 4);
        let low = &low[64 * half + 32 * (quarter % 2)..][..32];
        let high = &high[32 * half..][..32];
        let ints = std::array::from_fn(|l| {
            let nibble = (low[l] >> (4 * (quarter / 2))) & 0x0F;
            let top = (high[l] >> (2 * quarter)) & 3;
            ((nibble | top << 4) as i8) - 32
        });
        out.push(Block32 {
            scales: [
                d * f32::from(scales[2 * b] as i8),
                d * f32::from(scales[2 * b + 1] as i8),
            ],
            offset: 0.0,
            ints,
        });
    }
}
