//! Decoding as a stream gives what decoding whole gives: [`Stream16k`]'s chunks joined equal
//! `load_audio` then `to_16k` bit for bit for every format and rate, the resampler fed in
//! pieces of any size equals resampling the whole, and the limits and errors are the same.

use std::path::{Path, PathBuf};

use pal_audio::{load_audio, resample, AudioErrorKind, Stream16k, StreamResampler};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn a_stream_equals_decoding_whole_then_resampling() {
    for name in [
        "tone.wav",
        "tone.flac",
        "tone.ogg",
        "tone.mp3",
        "tone_stereo_44k.wav",
    ] {
        let path = fixture(name);
        let whole = load_audio(&path).unwrap().to_16k(name).unwrap().samples;
        let mut stream = Stream16k::from_path(&path, None).unwrap();
        let mut joined = vec![];
        let mut chunks = 0;
        while let Some(chunk) = stream.next_chunk().unwrap() {
            joined.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert!(chunks > 1, "{name}: one chunk only");
        assert_eq!(joined, whole, "{name}");
    }
}

#[test]
fn the_resampler_fed_in_pieces_equals_resampling_whole() {
    let signal: Vec<f32> = (0..50_003)
        .map(|i| (i as f32 * 0.013).sin() * 0.5 + (i as f32 * 0.0007).cos() * 0.2)
        .collect();
    for (from, len) in [(44_100, 50_003), (48_000, 4096), (8_000, 1000), (22_050, 0)] {
        let input = &signal[..len];
        let whole = resample(input, from, 16_000, "whole").unwrap();
        for piece in [1, 333, 4096, 5000] {
            let mut stream = StreamResampler::new(from, 16_000, "pieces");
            let mut out = vec![];
            for p in input.chunks(piece) {
                out.extend(stream.push(p).unwrap());
            }
            out.extend(stream.finish().unwrap());
            assert_eq!(
                out.len(),
                whole.len(),
                "{from} Hz, {len} samples, pieces of {piece}"
            );
            assert_eq!(out, whole, "{from} Hz, {len} samples, pieces of {piece}");
        }
    }
}

/// At 384 kHz a stream holds 16 kHz samples only; the limit refuses at the same point.
#[test]
fn a_stream_keeps_the_limits() {
    let flac = pal_audio::hostile::silent_flac(36_000.0, 48_000, 2);
    let err = Stream16k::from_bytes(flac.clone(), Some("flac"), "ten-hours.flac", Some(120.0))
        .err()
        .unwrap();
    assert!(
        matches!(err.kind, AudioErrorKind::TooLong { seconds, .. } if seconds >= 36_000.0),
        "{err}"
    );
    // Unknown length in the header: refused once decoding passes the limit.
    let mut unknown = flac;
    unknown[18 + 3] &= 0xF0;
    unknown[18 + 4..18 + 8].copy_from_slice(&[0; 4]);
    let mut stream =
        Stream16k::from_bytes(unknown, Some("flac"), "no-length.flac", Some(120.0)).unwrap();
    assert_eq!(stream.declared_seconds(), None);
    let err = loop {
        match stream.next_chunk() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ten hours passed a 120 s limit"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err.kind, AudioErrorKind::TooLong { seconds, .. } if (120.0..121.0).contains(&seconds)),
        "{err}"
    );
    assert!(err.to_string().starts_with("no-length.flac"), "{err}");
    // A short 384 kHz file streams to its 16 kHz length.
    let flac = pal_audio::hostile::silent_flac(2.0, 384_000, 1);
    let samples = Stream16k::from_bytes(flac, Some("flac"), "fast.flac", None)
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(samples.len(), 32_000);
}

#[test]
fn stream_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let err = Stream16k::from_path(&empty, None).err().unwrap();
    assert!(matches!(err.kind, AudioErrorKind::Empty), "{err}");
    assert!(err.to_string().contains("empty.wav"), "{err}");
    let missing = Stream16k::from_path(&tmp.path().join("missing.flac"), None)
        .err()
        .unwrap();
    assert!(missing.to_string().contains("missing.flac"), "{missing}");
    let flac = std::fs::read(fixture("tone.flac")).unwrap();
    let cut = tmp.path().join("cut.flac");
    std::fs::write(&cut, &flac[..flac.len() / 2]).unwrap();
    let err = Stream16k::from_path(&cut, None)
        .unwrap()
        .read_all()
        .unwrap_err();
    assert!(err.to_string().contains("cut.flac"), "{err}");
}
