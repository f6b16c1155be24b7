//! Whisper and AST encoders against transformers (tiny random models from
//! scripts/make_encoder_fixtures.py), the CTranslate2 loader, layer selection, long-clip policy and
//! the encoder-output cache.

mod common;

use common::{fixture, max_diff};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use pal_models::encoders::ast::Ast;
use pal_models::encoders::whisper::Whisper;
use pal_models::encoders::{AudioEncoder, CachedEncoder, LayerSelection, WindowPolicy};

fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu).unwrap()
}

/// The deterministic mel input of the Whisper fixture: 0.5 sin(0.37 c + 0.011 t (1 + c / 80)).
fn fixture_mel() -> Tensor {
    let mut v = Vec::with_capacity(80 * 3000);
    for c in 0..80 {
        for t in 0..3000 {
            let (c, t) = (c as f64, t as f64);
            v.push((0.5 * (0.37 * c + 0.011 * t * (1.0 + c / 80.0)).sin()) as f32);
        }
    }
    Tensor::from_vec(v, (1, 80, 3000), &Device::Cpu).unwrap()
}

#[test]
fn whisper_encoder_and_decoder_match_transformers() {
    let model =
        Whisper::from_folder(&fixture("tiny-whisper"), true, DType::F32, &Device::Cpu).unwrap();
    let g = golden("tiny-whisper");
    let mel = fixture_mel();
    let out = model.encoder.forward(&mel, LayerSelection::Last).unwrap();
    let d = max_diff(&out, &g["encoder_out"]);
    assert!(d < 1e-4, "encoder output differs by {d}");
    let hidden_1 = model
        .encoder
        .forward(&mel, LayerSelection::Index(1))
        .unwrap();
    let d = max_diff(&hidden_1, &g["hidden_1"]);
    assert!(d < 1e-4, "hidden state 1 differs by {d}");
    // Real length: 200 frames -> 100 tokens, positions sliced.
    let short = model
        .encoder
        .forward(&mel.narrow(2, 0, 200).unwrap(), LayerSelection::Last)
        .unwrap();
    let d = max_diff(&short, &g["short_out"]);
    assert!(d < 1e-4, "real-length output differs by {d}");

    let decoder = model.decoder().unwrap();
    let tokens = g["tokens"].to_dtype(DType::U32).unwrap();
    let mut cache = decoder.new_cache();
    let logits = decoder.forward(&tokens, &out, &mut cache).unwrap();
    let d = max_diff(&logits, &g["logits"]);
    assert!(d < 1e-4, "decoder logits differ by {d}");
    // Token-by-token decoding through the cache gives the same logits.
    let mut cache = decoder.new_cache();
    let steps: Vec<Tensor> = (0..tokens.dims()[1])
        .map(|i| {
            decoder
                .forward(&tokens.narrow(1, i, 1).unwrap(), &out, &mut cache)
                .unwrap()
        })
        .collect();
    let d = max_diff(&Tensor::cat(&steps, 1).unwrap(), &g["logits"]);
    assert!(d < 1e-4, "cached decoding differs by {d}");
}

#[test]
fn ctranslate2_whisper_holds_the_same_weights_as_the_hf_folder() {
    let hf =
        pal_models::Weights::from_hf_folder(&fixture("tiny-whisper"), DType::F32, &Device::Cpu)
            .unwrap();
    let bin = fixture("tiny-whisper-ct2").join("model.bin");
    let loaded = pal_models::formats::ct2::load_whisper(&bin, DType::F32, &Device::Cpu).unwrap();
    let config =
        pal_models::encoders::whisper::WhisperConfig::from_json(loaded.config_json, &bin).unwrap();
    let ct2 = loaded.weights;
    assert_eq!(config.d_model, 64);
    assert_eq!((config.encoder_layers, config.decoder_layers), (2, 2));
    assert_eq!(
        (config.encoder_attention_heads, config.vocab_size),
        (4, 128)
    );
    let names = ct2.names();
    assert!(names.len() > 50);
    for name in names {
        let c = ct2.get(&name, ct2_dims(&ct2, &name).as_slice()).unwrap();
        let h = hf
            .get(&name, c.dims())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // model.bin stores float16: compare against the HF weight rounded the same way.
        let h16 = h
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(max_diff(&c, &h16), 0.0, "{name}");
    }
    // And the model built from it runs: same encoder output as HF within f16 rounding.
    let model =
        Whisper::from_folder(&fixture("tiny-whisper-ct2"), true, DType::F32, &Device::Cpu).unwrap();
    let out = model
        .encoder
        .forward(&fixture_mel(), LayerSelection::Last)
        .unwrap();
    let d = max_diff(&out, &golden("tiny-whisper")["encoder_out"]);
    assert!(d < 0.05, "ct2 encoder output differs by {d}");
}

fn ct2_dims(w: &pal_models::Weights, name: &str) -> Vec<usize> {
    // Weights::get checks shapes; probe the stored shape by asking with an impossible one.
    match w.get(name, &[0]) {
        Err(pal_models::ModelError::ShapeMismatch { found, .. }) => found,
        other => panic!("{name}: {:?}", other.map(|t| t.dims().to_vec())),
    }
}

#[test]
fn truncated_ct2_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tiny-whisper-ct2").join("model.bin")).unwrap();
    std::fs::write(tmp.path().join("model.bin"), &bytes[..bytes.len() / 2]).unwrap();
    let err = Whisper::from_folder(tmp.path(), false, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.bin") && err.contains("truncated") && err.contains("tensor '"),
        "{err}"
    );
}

#[test]
fn ast_matches_transformers() {
    let model = Ast::from_folder(&fixture("tiny-ast"), DType::F32, &Device::Cpu).unwrap();
    let g = golden("tiny-ast");
    let out = model.forward(&g["fbank"], LayerSelection::Last).unwrap();
    let d = max_diff(&out, &g["last_hidden_state"]);
    assert!(d < 1e-4, "AST output differs by {d}");
    let h1 = model
        .forward(&g["fbank"], LayerSelection::Index(1))
        .unwrap();
    let d = max_diff(&h1, &g["hidden_1"]);
    assert!(d < 1e-4, "AST hidden state 1 differs by {d}");
    // Mean of states 1..=1 is state 1; mean over 0..=2 averages three states.
    let m = model
        .forward(&g["fbank"], LayerSelection::Mean(1, 1))
        .unwrap();
    assert_eq!(max_diff(&m, &h1), 0.0);
    let all = model
        .forward(&g["fbank"], LayerSelection::Mean(0, 2))
        .unwrap();
    assert_eq!(all.dims(), h1.dims());
    assert!(model
        .forward(&g["fbank"], LayerSelection::Index(3))
        .is_err());
}

#[test]
fn long_clips_are_windowed_up_to_a_limit_then_refused() {
    let model =
        Whisper::from_folder(&fixture("tiny-whisper"), false, DType::F32, &Device::Cpu).unwrap();
    let mut enc =
        pal_models::encoders::whisper::WhisperAudioEncoder::new(model.encoder, 80, "tiny".into());
    // 31 s -> two windows: 1500 + 50 tokens.
    let samples: Vec<f32> = (0..31 * 16000)
        .map(|i| (i as f32 * 0.01).sin() * 0.1)
        .collect();
    let tokens = enc.encode(&samples).unwrap();
    assert_eq!(tokens.dims(), &[1550, 64]);
    enc.windows = WindowPolicy { max_windows: 1 };
    let err = enc.encode(&samples).unwrap_err().to_string();
    assert!(
        err.contains("2 encoder windows") && err.contains("limit is 1"),
        "{err}"
    );
    // Padding every window to 30 s instead of the real length.
    enc.windows = WindowPolicy::default();
    enc.real_length = false;
    assert_eq!(enc.encode(&samples[..16000]).unwrap().dims(), &[1500, 64]);
}

struct Counting {
    calls: AtomicUsize,
}

impl AudioEncoder for Counting {
    fn id(&self) -> String {
        "counting".into()
    }
    fn dim(&self) -> usize {
        2
    }
    fn encode(&self, samples: &[f32]) -> pal_models::Result<Tensor> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Tensor::new(
            &[[samples[0], samples.len() as f32]],
            &Device::Cpu,
        )?)
    }
}

#[test]
fn encoder_cache_reuses_outputs_by_content() {
    let tmp = tempfile::tempdir().unwrap();
    let cached = CachedEncoder::new(
        Counting {
            calls: AtomicUsize::new(0),
        },
        tmp.path().to_path_buf(),
    );
    let a = cached.encode(&[0.5, 0.25, 0.0]).unwrap();
    let b = cached.encode(&[0.5, 0.25, 0.0]).unwrap();
    assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 1);
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    cached.encode(&[0.5, 0.25, 0.1]).unwrap();
    assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 2);
    // A damaged cache entry is recomputed.
    std::fs::write(cached.path_for(&[0.5, 0.25, 0.0]), b"garbage").unwrap();
    cached.encode(&[0.5, 0.25, 0.0]).unwrap();
    assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 3);
}

/// Clips of different lengths encoded as one padded batch give what each gives alone (the
/// padding is masked out of the convolutions and attention): tolerance 1e-4 absolute on
/// activations of order 1, f32 rounding of differently-blocked products.
#[test]
fn whisper_batched_encoding_matches_one_clip_at_a_time() {
    use pal_models::encoders::whisper::WhisperAudioEncoder;
    let model =
        Whisper::from_folder(&fixture("tiny-whisper"), false, DType::F32, &Device::Cpu).unwrap();
    let clip = |seconds: f64, pitch: f32| -> Vec<f32> {
        (0..(seconds * 16000.0) as usize)
            .map(|i| 0.3 * (i as f32 * pitch * 0.001).sin() + 0.05 * (i as f32 * 0.017).cos())
            .collect()
    };
    // 31 s: two windows, the second short.
    let clips = [
        clip(0.3, 3.0),
        clip(2.5, 1.3),
        clip(1.1, 7.0),
        clip(31.0, 2.0),
    ];
    for real_length in [true, false] {
        let mut encoder = WhisperAudioEncoder::new(model.encoder.clone(), 80, "fixture".into());
        encoder.real_length = real_length;
        let refs: Vec<&[f32]> = clips.iter().map(|c| c.as_slice()).collect();
        let batched = encoder.encode_batch(&refs).unwrap();
        for (c, b) in clips.iter().zip(&batched) {
            let alone = encoder.encode(c).unwrap();
            assert_eq!(alone.dims(), b.dims());
            let d = max_diff(&alone, b);
            assert!(d < 1e-4, "real_length {real_length}: differs by {d}");
        }
    }
}
