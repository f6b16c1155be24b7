//! Fuzzes the audio entry point: any bytes, as any supported container, through decoding,
//! resampling to 16 kHz and both feature extractors. Errors are fine; panics, hangs and
//! out-of-memory are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pal_audio::{decode_bytes, KaldiFbank, WhisperMel, WindowType};

fuzz_target!(|data: &[u8]| {
    let (hint, bytes) = match data.split_first() {
        Some((h, rest)) => (["wav", "flac", "ogg", "mp3"][*h as usize % 4], rest),
        None => return,
    };
    let Ok(audio) = decode_bytes(bytes.to_vec(), Some(hint), "fuzz") else { return };
    // Bound the work per input: the features of at most 30 s.
    if audio.duration() > 30.0 {
        return;
    }
    let Ok(audio) = audio.to_16k("fuzz") else { return };
    let (mel, frames) = WhisperMel::new(80).compute(&audio.samples, false);
    assert_eq!(mel.len(), 80 * frames);
    assert!(mel.iter().all(|v| v.is_finite()));
    let (fbank, frames) = KaldiFbank::new(128, 16_000, WindowType::Povey).compute(&audio.samples);
    assert_eq!(fbank.len(), 128 * frames);
    assert!(fbank.iter().all(|v| v.is_finite()));
});
