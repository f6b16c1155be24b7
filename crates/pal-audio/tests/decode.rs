//! Decoding every supported format, resampling, and a clear error (naming the file) for every
//! kind of bad input.

use std::path::{Path, PathBuf};

use pal_audio::{decode_bytes, load_audio, resample, AudioErrorKind};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Dominant frequency estimated from zero crossings.
fn zero_crossing_hz(samples: &[f32], rate: u32) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] <= 0.0) != (w[1] <= 0.0))
        .count();
    crossings as f64 / 2.0 / (samples.len() as f64 / rate as f64)
}

/// A WAV file: `format` 1 = PCM, 3 = IEEE float; `data` already encoded.
fn wav(
    format: u16,
    channels: u16,
    rate: u32,
    bits: u16,
    declared_data: u32,
    data: &[u8],
) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut v = Vec::new();
    v.extend(b"RIFF");
    v.extend((36 + declared_data).to_le_bytes());
    v.extend(b"WAVEfmt ");
    v.extend(16u32.to_le_bytes());
    v.extend(format.to_le_bytes());
    v.extend(channels.to_le_bytes());
    v.extend(rate.to_le_bytes());
    v.extend((rate * block as u32).to_le_bytes());
    v.extend(block.to_le_bytes());
    v.extend(bits.to_le_bytes());
    v.extend(b"data");
    v.extend(declared_data.to_le_bytes());
    v.extend(data);
    v
}

fn pcm16(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|s| ((s * 32767.0) as i16).to_le_bytes())
        .collect()
}

#[test]
fn every_supported_format_decodes_to_the_same_tone() {
    for name in [
        "tone.wav",
        "tone.flac",
        "tone.ogg",
        "tone.mp3",
        "tone_stereo_44k.wav",
    ] {
        let audio = load_audio(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        // MP3 and Vorbis keep encoder delay, padding or block rounding (< 0.1 s of silence);
        // the lossless formats are exact.
        let lossy = name.ends_with("mp3") || name.ends_with("ogg");
        let tolerance = if lossy { 0.1 } else { 0.001 };
        assert!(
            (audio.duration() - 0.5).abs() <= tolerance,
            "{name}: {} s",
            audio.duration()
        );
        let audio = audio.to_16k(name).unwrap();
        assert_eq!(audio.sample_rate, 16_000);
        // Measured over the middle of the clip (lossy codecs add near-silent edges).
        let n = audio.samples.len();
        let hz = zero_crossing_hz(&audio.samples[n / 4..3 * n / 4], 16_000);
        assert!((hz - 440.0).abs() < 8.0, "{name}: {hz} Hz");
        let peak = audio.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 0.05, "{name}: peak {peak}");
    }
}

#[test]
fn stereo_is_mixed_down_by_averaging() {
    // Left = +x, right = -x/2: the mono mix is x/4.
    let frames: Vec<f32> = (0..800).map(|i| (i as f32 * 0.05).sin() * 0.8).collect();
    let interleaved: Vec<f32> = frames.iter().flat_map(|&x| [x, -x / 2.0]).collect();
    let bytes = wav(
        1,
        2,
        16_000,
        16,
        (interleaved.len() * 2) as u32,
        &pcm16(&interleaved),
    );
    let audio = decode_bytes(bytes, Some("wav"), "stereo").unwrap();
    assert_eq!(audio.samples.len(), 800);
    for (m, x) in audio.samples.iter().zip(&frames) {
        assert!((m - x / 4.0).abs() < 1e-3);
    }
}

#[test]
fn resampling_keeps_length_pitch_and_level() {
    let rate = 8_000;
    let x: Vec<f32> = (0..rate)
        .map(|i| (2.0 * std::f32::consts::PI * 300.0 * i as f32 / rate as f32).sin() * 0.5)
        .collect();
    let y = resample(&x, rate as u32, 16_000, "sine").unwrap();
    assert_eq!(y.len(), 16_000);
    // Away from the edges, the output is the same sine sampled twice as often, shifted by at
    // most one output sample.
    let err_at = |shift: i32| {
        (1000..15000)
            .map(|i| {
                (y[i]
                    - (2.0 * std::f32::consts::PI * 300.0 * (i as i32 + shift) as f32 / 16_000.0)
                        .sin()
                        * 0.5)
                    .abs()
            })
            .fold(0f32, f32::max)
    };
    let best = (-1..=1).map(err_at).fold(f32::MAX, f32::min);
    assert!(best < 0.03, "max error {best}");
    let back = resample(&y, 16_000, 44_100, "sine").unwrap();
    assert_eq!(back.len(), 44_100);
    // Short clips, and lengths that are exact multiples of the resampler's block.
    for len in [1usize, 100, 3661, 4096, 8192] {
        let input: Vec<f32> = (0..len).map(|i| x[i % x.len()]).collect();
        let y = resample(&input, 8_000, 16_000, "short").unwrap();
        assert_eq!(y.len(), 2 * len, "length {len}");
    }
}

fn error_kind(bytes: Vec<u8>, origin: &str) -> (AudioErrorKind, String) {
    let err = decode_bytes(bytes, Some("wav"), origin).expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.starts_with(origin),
        "error does not name the input: {msg}"
    );
    (err.kind, msg)
}

#[test]
fn empty_file_is_refused_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("empty.wav");
    std::fs::write(&path, b"").unwrap();
    let err = load_audio(&path).unwrap_err();
    assert!(matches!(err.kind, AudioErrorKind::Empty));
    assert!(err.to_string().contains("empty.wav"));
    let missing = load_audio(&tmp.path().join("missing.flac")).unwrap_err();
    assert!(
        matches!(missing.kind, AudioErrorKind::Io(_))
            && missing.to_string().contains("missing.flac")
    );
}

#[test]
fn zero_length_audio_is_refused() {
    let (kind, _) = error_kind(wav(1, 1, 16_000, 16, 0, &[]), "zero.wav");
    assert!(matches!(kind, AudioErrorKind::ZeroLength), "{kind:?}");
}

#[test]
fn truncated_file_is_refused() {
    let data = pcm16(&vec![0.1; 16_000]);
    let (kind, msg) = error_kind(
        wav(1, 1, 16_000, 16, data.len() as u32, &data[..10_000]),
        "cut.wav",
    );
    assert!(
        matches!(
            kind,
            AudioErrorKind::Truncated {
                declared: 16_000,
                found: 5_000
            }
        ),
        "{msg}"
    );
    // A compressed file cut in half: still an error, not a silent half clip.
    let flac = std::fs::read(fixture("tone.flac")).unwrap();
    let err = decode_bytes(flac[..flac.len() / 2].to_vec(), Some("flac"), "cut.flac")
        .expect_err("must fail");
    assert!(err.to_string().starts_with("cut.flac"), "{err}");
}

#[test]
fn garbage_is_refused_as_unsupported_or_corrupt() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (kind, _) = error_kind(garbage, "noise.wav");
    assert!(
        matches!(
            kind,
            AudioErrorKind::UnsupportedFormat(_) | AudioErrorKind::Corrupt(_)
        ),
        "{kind:?}"
    );
    // A valid FLAC header with damaged frames.
    let mut flac = std::fs::read(fixture("tone.flac")).unwrap();
    let mid = flac.len() / 2;
    for b in &mut flac[mid - 200..mid + 200] {
        *b ^= 0x5a;
    }
    let err = decode_bytes(flac, Some("flac"), "damaged.flac")
        .map(|a| a.samples.len())
        .expect_err("damaged FLAC must fail");
    assert!(err.to_string().starts_with("damaged.flac"), "{err}");
}

#[test]
fn unsupported_codec_is_named() {
    // WAV with format tag 0x0002 (MS ADPCM is supported) -> use 0x0050 (MPEG layer 2 in WAV).
    let (kind, msg) = error_kind(wav(0x0050, 1, 16_000, 16, 64, &[0u8; 64]), "mpeg.wav");
    assert!(
        matches!(
            kind,
            AudioErrorKind::UnsupportedCodec(_) | AudioErrorKind::UnsupportedFormat(_)
        ),
        "{msg}"
    );
}

#[test]
fn non_finite_samples_are_refused() {
    let samples = [0.0f32, 0.5, f32::NAN, 0.1];
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let (kind, msg) = error_kind(wav(3, 1, 16_000, 32, data.len() as u32, &data), "nan.wav");
    assert!(matches!(kind, AudioErrorKind::NonFinite(2)), "{msg}");
}

#[test]
fn absurd_sample_rates_are_refused() {
    let data = pcm16(&[0.1; 100]);
    for rate in [1u32, 999, 400_000, u32::MAX / 4] {
        let (kind, msg) = error_kind(wav(1, 1, rate, 16, data.len() as u32, &data), "rate.wav");
        assert!(
            matches!(kind, AudioErrorKind::SampleRate(r) if r == rate),
            "{rate}: {msg}"
        );
    }
}

/// The in-memory FLAC writer makes files symphonia decodes to exactly the silence asked for.
#[test]
fn silent_flac_decodes_to_the_silence_it_declares() {
    let audio = decode_bytes(
        pal_audio::hostile::silent_flac(2.5, 48_000, 2),
        Some("flac"),
        "silence.flac",
    )
    .unwrap();
    assert_eq!(audio.sample_rate, 48_000);
    assert_eq!(audio.samples.len(), 120_000);
    assert!(audio.samples.iter().all(|&s| s == 0.0));
}

/// Ten hours of 48 kHz stereo silence are about 7 MB of FLAC; with a limit, decoding refuses it
/// (from the header, or at the limit when the header does not say) instead of producing 6.9
/// GB of samples.
#[test]
fn a_limit_refuses_long_audio_without_decoding_it_all() {
    let flac = pal_audio::hostile::silent_flac(36_000.0, 48_000, 2);
    assert!(flac.len() < 10 << 20, "{} bytes", flac.len());
    let err =
        pal_audio::decode_bytes_limited(flac.clone(), Some("flac"), "ten-hours.flac", Some(120.0))
            .unwrap_err();
    assert!(
        matches!(err.kind, AudioErrorKind::TooLong { seconds, limit } if seconds >= 36_000.0 && limit == 120.0),
        "{err}"
    );
    assert!(err.to_string().starts_with("ten-hours.flac"), "{err}");
    // The same file with the length left out of its header (0 = unknown): refused at the limit.
    let mut unknown = flac;
    unknown[18 + 3] &= 0xF0;
    unknown[18 + 4..18 + 8].copy_from_slice(&[0; 4]);
    let err = pal_audio::decode_bytes_limited(unknown, Some("flac"), "no-length.flac", Some(120.0))
        .unwrap_err();
    assert!(
        matches!(err.kind, AudioErrorKind::TooLong { seconds, .. } if (120.0..121.0).contains(&seconds)),
        "{err}"
    );
}

/// Headers that claim more channels than any recording has are refused before a decoder sizes
/// its buffers by them: an Ogg Vorbis identification header claiming 24 channels, and a WAV
/// header claiming 64.
#[test]
fn headers_that_lie_about_their_channels_are_refused() {
    let ogg = std::fs::read(fixture("tone.ogg")).unwrap();
    let lying = pal_audio::hostile::ogg_claiming_channels(&ogg, 24);
    let err = decode_bytes(lying, Some("ogg"), "lying.ogg").unwrap_err();
    assert!(
        matches!(
            err.kind,
            AudioErrorKind::Corrupt(_) | AudioErrorKind::UnsupportedCodec(_)
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("lying.ogg"), "{err}");
    // The same file with its true header decodes.
    let honest = pal_audio::hostile::ogg_claiming_channels(&ogg, 1);
    decode_bytes(honest, Some("ogg"), "honest.ogg").unwrap();

    let data = vec![0u8; 64 * 2 * 100];
    let err = decode_bytes(
        wav(1, 64, 16_000, 16, data.len() as u32, &data),
        Some("wav"),
        "many.wav",
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("many.wav"), "{err}");
}
