//! Hostile but well-formed inputs, built in memory, for tests of anything that decodes untrusted
//! audio (the server's limits, fuzzing seeds): hours of audio in a few megabytes, and a header
//! that lies about its channels.

/// A FLAC file of `seconds` of digital silence at `rate` Hz with `channels` channels (16-bit).
/// Every frame is a CONSTANT subframe per channel, so ten hours of 48 kHz stereo take about 7 MB:
/// what a server sees when one small upload decodes to gigabytes of samples.
pub fn silent_flac(seconds: f64, rate: u32, channels: u8) -> Vec<u8> {
    assert!((1..=8).contains(&channels) && rate > 0 && rate < (1 << 20));
    const BLOCK: u64 = 4096;
    let total = (seconds * rate as f64) as u64;
    let mut out = b"fLaC".to_vec();
    // STREAMINFO, the last metadata block (34 bytes).
    out.extend([0x80, 0, 0, 34]);
    out.extend((BLOCK as u16).to_be_bytes());
    out.extend((BLOCK as u16).to_be_bytes());
    out.extend([0u8; 6]); // frame sizes unknown
    let packed: u64 = ((rate as u64) << 44)
        | (((channels - 1) as u64) << 41)
        | (15u64 << 36) // 16 bits per sample
        | (total & 0xF_FFFF_FFFF);
    out.extend(packed.to_be_bytes());
    out.extend([0u8; 16]); // MD5 unknown
    let frames = total.div_ceil(BLOCK);
    for index in 0..frames {
        let size = BLOCK.min(total - index * BLOCK);
        let start = out.len();
        // Sync, fixed block size; block size from the end of the header (16-bit), rate from
        // the end of the header (16-bit Hz / 10 when it fits, else Hz).
        out.extend([0xFF, 0xF8, 0x70 | rate_code(rate).0]);
        out.push(((channels - 1) << 4) | 0x08); // independent channels, 16 bits
        out.extend(utf8_number(index));
        out.extend(((size - 1) as u16).to_be_bytes());
        out.extend(rate_code(rate).1);
        let crc = crc8(&out[start..]);
        out.push(crc);
        for _ in 0..channels {
            out.extend([0x00, 0x00, 0x00]); // CONSTANT subframe, value 0
        }
        let crc = crc16(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    out
}

/// The rate code of a frame header and the bytes it reads from the header's end.
fn rate_code(rate: u32) -> (u8, Vec<u8>) {
    if rate.is_multiple_of(10) && rate / 10 <= 0xFFFF {
        (0x0E, ((rate / 10) as u16).to_be_bytes().to_vec())
    } else if rate <= 0xFFFF {
        (0x0D, (rate as u16).to_be_bytes().to_vec())
    } else {
        panic!("rate {rate} cannot be coded in a frame header")
    }
}

/// FLAC's UTF-8-like coding of a frame number (UTF-8's scheme, extended to 36 bits).
fn utf8_number(n: u64) -> Vec<u8> {
    if n < 0x80 {
        return vec![n as u8];
    }
    // Bytes needed: a lead byte with 7 - count payload bits, then 6 bits per continuation byte.
    let count = (2..=7)
        .find(|&c| n < 1u64 << (5 * c + 1))
        .expect("frame numbers fit in 36 bits");
    let mut bytes = vec![0u8; count];
    let mut v = n;
    for byte in bytes.iter_mut().skip(1).rev() {
        *byte = 0x80 | (v & 0x3F) as u8;
        v >>= 6;
    }
    bytes[0] = ((0xFF00u16 >> count) & 0xFF) as u8 | v as u8;
    bytes
}

fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// `ogg` (an Ogg Vorbis file) whose identification header claims `channels` channels: a header
/// that, if trusted, has the decoder reserve buffers for every channel it claims. The page checksum is
/// recomputed, so the lie is well-formed.
pub fn ogg_claiming_channels(ogg: &[u8], channels: u8) -> Vec<u8> {
    let mut out = ogg.to_vec();
    let ident = out
        .windows(7)
        .position(|w| w == b"\x01vorbis")
        .expect("an Ogg Vorbis file has an identification header");
    out[ident + 11] = channels;
    let page = out[..ident]
        .windows(4)
        .rposition(|w| w == b"OggS")
        .expect("the header sits in a page");
    let segments = out[page + 26] as usize;
    let body: usize = out[page + 27..page + 27 + segments]
        .iter()
        .map(|&s| s as usize)
        .sum();
    let end = page + 27 + segments + body;
    out[page + 22..page + 26].copy_from_slice(&[0; 4]);
    let crc = ogg_crc(&out[page..end]);
    out[page + 22..page + 26].copy_from_slice(&crc.to_le_bytes());
    out
}

fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Writes the hostile files a load test sends from outside the process into `dir`:
/// `ten_hours.flac` (ten hours of 48 kHz stereo silence, about 7 MB), `no_length.flac` (the
/// same with the length left out of its header), `fast_384k.flac` (110 s at 384 kHz) and
/// `lying.ogg` (an Ogg Vorbis tone whose header claims 24 channels, made from `ogg`).
pub fn write_files(dir: &std::path::Path, ogg: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let flac = silent_flac(36_000.0, 48_000, 2);
    std::fs::write(dir.join("ten_hours.flac"), &flac)?;
    // STREAMINFO's total-samples field (36 bits) set to 0: "unknown".
    let mut unknown = flac;
    unknown[18 + 3] &= 0xF0;
    unknown[18 + 4..18 + 8].copy_from_slice(&[0; 4]);
    std::fs::write(dir.join("no_length.flac"), unknown)?;
    std::fs::write(dir.join("fast_384k.flac"), silent_flac(110.0, 384_000, 2))?;
    std::fs::write(dir.join("lying.ogg"), ogg_claiming_channels(ogg, 24))
}

#[cfg(test)]
mod tests {
    use super::utf8_number;

    #[test]
    fn frame_numbers_are_coded_as_flac_does() {
        assert_eq!(utf8_number(0x7F), vec![0x7F]);
        assert_eq!(utf8_number(0x80), vec![0xC2, 0x80]);
        assert_eq!(utf8_number(0x7FF), vec![0xDF, 0xBF]);
        assert_eq!(utf8_number(0x800), vec![0xE0, 0xA0, 0x80]);
        assert_eq!(utf8_number(0xFFFF), vec![0xEF, 0xBF, 0xBF]);
        assert_eq!(utf8_number(0x10000), vec![0xF0, 0x90, 0x80, 0x80]);
        assert_eq!(utf8_number(421_874), vec![0xF1, 0xA6, 0xBF, 0xB2]);
        assert_eq!(utf8_number(0x1F_FFFF), vec![0xF7, 0xBF, 0xBF, 0xBF]);
        assert_eq!(utf8_number(0x20_0000), vec![0xF8, 0x88, 0x80, 0x80, 0x80]);
    }
}
