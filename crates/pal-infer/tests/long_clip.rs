//! A clip longer than the encoder's window, as `pal ask` and `pal chat` take it: decoded in
//! pieces of any size and encoded window by window, it gets the answer the whole clip in memory
//! gets; a clip past the config's windows is refused naming `max_windows`, `max_audio_seconds`
//! replaces the window count, and a clip whose audio tokens would pass the LLM's context (PLITS)
//! is refused naming both figures.

use std::path::Path;

use candle_core::{DType, Device};
use pal_infer::ask::{ask, ask_encoded, encode_growing};
use pal_infer::{Conversation, GenerationParams};
use pal_models::audio_llm::{build, BuiltModel};

/// SmolLM2-135M-Instruct + Whisper tiny.en (untrained adapter) routed as `route`.
fn model(route: &str) -> Option<BuiltModel> {
    model_with(route, "")
}

/// [`model`] with `top` (top-level config keys) added.
fn model_with(route: &str, top: &str) -> Option<BuiltModel> {
    pal_assets::for_test(&pal_assets::SMOLLM2_135M)?;
    pal_assets::for_test(&pal_assets::WHISPER_TINY_EN)?;
    let text = format!(
        r#"
{top}
[llm]
path = "asset:smollm2-135m-instruct"

[[encoders]]
name = "whisper"
kind = "whisper"
path = "asset:whisper-tiny.en"
max_windows = 4
route = "{route}"
connector = {{ type = "mlp", stack = 1 }}
lal = {{ start = 15, rope = "none" }}
"#
    );
    let config = pal_models::formats::config_toml::parse(&text).unwrap();
    Some(build(&config, Path::new("."), DType::F32, &Device::Cpu).unwrap())
}

/// `seconds` of real speech (JFK's clip, repeated).
fn speech(seconds: f64) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/clips/jfk_16k.wav");
    let clip = pal_audio::load_audio(&path).unwrap().samples;
    clip.iter()
        .cycle()
        .take((seconds * 16000.0) as usize)
        .copied()
        .collect()
}

const QUESTION: &str = "What is said in the recording?";

#[test]
fn a_long_clip_read_in_pieces_gets_the_whole_clips_answer() {
    let Some(built) = model("lal") else {
        return;
    };
    let params = GenerationParams {
        max_tokens: 6,
        ..GenerationParams::default()
    };
    // 70 s: two whole windows and a tail.
    let clip = speech(70.0);
    let whole = ask(
        &built,
        std::slice::from_ref(&clip),
        QUESTION,
        &params,
        |_| {},
    )
    .unwrap();
    let pieces = clip.chunks(7919).map(|p| Ok(p.to_vec()));
    let (audio, lal) = encode_growing(&built, pieces).unwrap();
    assert_eq!(audio[0].dims()[0], 3500, "50 frames a second");
    let read = ask_encoded(&built, audio.clone(), &lal, QUESTION, &params, |_| {}).unwrap();
    assert_eq!(read.tokens, whole.tokens);
    assert_eq!(read.tokens.len(), 6);
    // A chat about it (`pal chat`) starts from the same keys: its first turn is the same answer.
    let mut chat = Conversation::from_encoded(&built.model, &built.tokenizer, audio, lal).unwrap();
    let first = chat.say(QUESTION, &params, |_| {}).unwrap();
    assert_eq!(first.tokens, whole.tokens);

    // Past max_windows (4 windows of 30 s).
    let error = ask(&built, &[speech(125.0)], QUESTION, &params, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("120 s") && error.contains("max_windows"),
        "{error}"
    );
}

#[test]
fn max_audio_seconds_replaces_the_window_count() {
    let Some(built) = model_with("lal", "max_audio_seconds = 150\nmax_audio_mib = 340") else {
        return;
    };
    let params = GenerationParams {
        max_tokens: 2,
        ..Default::default()
    };
    // Five windows, past max_windows = 4: taken, as 150 s allow (its f32 keys and outputs: about
    // 293 MiB with their room to grow).
    ask(&built, &[speech(125.0)], QUESTION, &params, |_| {}).unwrap();
    let error = ask(&built, &[speech(155.0)], QUESTION, &params, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("155.0 s")
            && error.contains("max_audio_seconds")
            && error.contains("340 MiB"),
        "{error}"
    );
    // A memory limit the clip's audio would pass is refused by itself.
    let Some(small) = model_with("lal", "max_audio_seconds = 150\nmax_audio_mib = 100") else {
        return;
    };
    let error = ask(&small, &[speech(125.0)], QUESTION, &params, |_| {})
        .unwrap_err()
        .to_string();
    assert!(error.contains("max_audio_mib"), "{error}");
}

#[test]
fn plits_past_the_context_is_refused_naming_both_figures() {
    let Some(built) = model("plits") else {
        return;
    };
    // 110 s is 5,500 audio tokens: with the prompt and 4,000 new tokens, past 8,192 positions.
    let params = GenerationParams {
        max_tokens: 4000,
        ..GenerationParams::default()
    };
    let error = ask(&built, &[speech(110.0)], QUESTION, &params, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("positions") && error.contains("8192"),
        "{error}"
    );
}

#[test]
fn a_corrupt_file_is_refused_naming_it() {
    let Some(built) = model("lal") else {
        return;
    };
    let path = std::env::temp_dir().join(format!("pal-corrupt-{}.wav", std::process::id()));
    std::fs::write(&path, b"RIFF\x10\x00\x00\x00WAVEnot really a wave file").unwrap();
    let error = pal_infer::ask::encode_file(&built, &path)
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(error.contains(&path.display().to_string()), "{error}");
}
