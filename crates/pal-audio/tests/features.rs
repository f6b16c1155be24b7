//! Whisper log-mel and Kaldi fbank against the references (transformers' WhisperFeatureExtractor,
//! torchaudio's kaldi.fbank), on sine, noise, chirp and speech at 8, 16 and 44.1 kHz. Fixtures come
//! from scripts/make_audio_fixtures.py.

use pal_audio::{KaldiFbank, WhisperMel, WindowType};
use safetensors::SafeTensors;

struct Fixtures(Vec<u8>);

impl Fixtures {
    fn load() -> Self {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/features.safetensors"
        );
        Self(std::fs::read(path).unwrap())
    }

    fn get(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture {name}"));
        let data = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (data, t.shape().to_vec())
    }

    fn rate(&self, signal: &str) -> u32 {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(&format!("{signal}/rate")).unwrap();
        i64::from_le_bytes(t.data()[..8].try_into().unwrap()) as u32
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn whisper_log_mel_matches_transformers() {
    let fx = Fixtures::load();
    for signal in ["sine_16k", "noise_16k", "speech_16k"] {
        let (samples, _) = fx.get(&format!("{signal}/samples"));
        for n_mels in [80, 128] {
            let (expected, shape) = fx.get(&format!("{signal}/whisper{n_mels}"));
            let (ours, frames) = WhisperMel::new(n_mels).compute(&samples, true);
            assert_eq!(frames, 3000);
            let keep = shape[1];
            let ours: Vec<f32> = (0..n_mels)
                .flat_map(|m| ours[m * frames..m * frames + keep].to_vec())
                .collect();
            let diff = max_abs_diff(&ours, &expected);
            assert!(diff < 1e-4, "{signal} whisper{n_mels}: max diff {diff}");
        }
    }
}

#[test]
fn kaldi_fbank_matches_torchaudio_at_several_rates() {
    let fx = Fixtures::load();
    for signal in [
        "sine_16k",
        "noise_16k",
        "speech_16k",
        "sine_8k",
        "chirp_44k",
    ] {
        let (samples, _) = fx.get(&format!("{signal}/samples"));
        let rate = fx.rate(signal);
        for (window, name) in [
            (WindowType::Hanning, "hanning"),
            (WindowType::Povey, "povey"),
        ] {
            let (expected, shape) = fx.get(&format!("{signal}/fbank128_{name}"));
            let (ours, frames) = KaldiFbank::new(128, rate, window).compute(&samples);
            assert_eq!(frames, shape[0], "{signal} frames");
            let diff = max_abs_diff(&ours, &expected);
            assert!(diff < 1e-4, "{signal} fbank {name}: max diff {diff}");
        }
    }
}

#[test]
fn whisper_mel_on_real_length_gives_one_frame_per_10ms() {
    let samples = vec![0.1f32; 16000];
    let (feats, frames) = WhisperMel::new(80).compute(&samples, false);
    assert_eq!(frames, 100);
    assert_eq!(feats.len(), 80 * 100);
}
