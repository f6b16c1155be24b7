//! Several clips in one request, for a model whose config allows them: each clip is heard at
//! its part's place, the answer is what direct generation gives for those clips in that order,
//! the cache keeps each clip's encoding, and requests past the limit or with the placeholder
//! typed into their text are refused naming the field.

mod common;

use std::sync::atomic::Ordering;

use base64::Engine as _;
use common::*;
use pal_infer::{generate_with_audio, ChatTemplate, GenerationParams, Message};
use pal_models::audio_llm::Example;
use pal_models::text::segments::{prompt_segments, AUDIO_MARKER};
use pal_serve::engine::{self, Batching};
use pal_serve::{router, Limits};
use serde_json::{json, Value};

/// A request whose user message is `parts`.
fn request(parts: Vec<Value>) -> String {
    json!({
        "model": "test-model", "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "user", "content": parts}],
    })
    .to_string()
}

fn audio_part(wav: &[u8]) -> Value {
    json!({"type": "input_audio", "input_audio": {
        "data": base64::engine::general_purpose::STANDARD.encode(wav), "format": "wav"}})
}

fn text_part(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clips_are_heard_in_order_and_a_third_is_refused() {
    let Some(bundle) = load(&format!("max_clips = 2\n{MODEL_TOML}")) else {
        return;
    };
    assert_eq!(bundle.model.max_clips, 2);
    let bundle = std::sync::Arc::new(bundle);
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let counters = queue.counters.clone();
    let app = router(state(&bundle, queue, Limits::default(), None));
    let (speech, tone) = (clip_wav(), tone_wav(1.5));
    let body = request(vec![
        text_part("Compare these two clips."),
        audio_part(&speech),
        text_part("And this one?"),
        audio_part(&tone),
    ]);

    // The answer is direct generation with both clips at their places, in order.
    let (status, answer) = send(&app, post("/v1/chat/completions", body.clone())).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let content = |b: &[u8]| {
        serde_json::from_slice::<Value>(b).unwrap()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let encode = |wav: &[u8]| {
        let samples = pal_audio::decode_bytes(wav.to_vec(), Some("wav"), "clip")
            .unwrap()
            .to_16k("clip")
            .unwrap()
            .samples;
        bundle.encoders[0].encode(&samples).unwrap()
    };
    let template = ChatTemplate::for_tokenizer(&bundle.tokenizer).unwrap();
    let text = format!("Compare these two clips.\n{AUDIO_MARKER}\nAnd this one?\n{AUDIO_MARKER}");
    let segments =
        prompt_segments(&template, &bundle.tokenizer, &[Message::new("user", text)]).unwrap();
    let direct = |clips: Vec<Vec<candle_core::Tensor>>| {
        generate_with_audio(
            &bundle.model,
            &bundle.tokenizer,
            &[Example {
                segments: segments.clone(),
                clips,
            }],
            &GenerationParams {
                max_tokens: 12,
                ..Default::default()
            },
            |_, _| {},
        )
        .unwrap()
        .remove(0)
        .text
    };
    let in_order = direct(vec![vec![encode(&speech)], vec![encode(&tone)]]);
    assert_eq!(content(&answer), in_order);
    let swapped = direct(vec![vec![encode(&tone)], vec![encode(&speech)]]);
    assert_ne!(
        in_order, swapped,
        "the order of the clips should matter to the answer"
    );

    // Asked again: both clips come from the audio cache, and the answer is the same.
    let hits = counters.audio_cache_hits.load(Ordering::Relaxed);
    let (status, again) = send(&app, post("/v1/chat/completions", body)).await;
    assert_eq!(status, 200);
    assert_eq!(content(&again), in_order);
    assert_eq!(counters.audio_cache_hits.load(Ordering::Relaxed) - hits, 2);

    // A third clip, and the placeholder typed as text, are refused naming the part.
    let refused = |parts: Vec<Value>| {
        let app = app.clone();
        async move {
            let (status, body) = send(&app, post("/v1/chat/completions", request(parts))).await;
            let error: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(status, 400, "{error}");
            (
                error["error"]["param"].as_str().unwrap().to_string(),
                error["error"]["message"].as_str().unwrap().to_string(),
            )
        }
    };
    let (param, message) = refused(vec![
        audio_part(&speech),
        audio_part(&tone),
        audio_part(&speech),
    ])
    .await;
    assert_eq!(param, "messages[0].content[2]");
    assert!(message.contains("at most 2"), "{message}");
    let (param, message) = refused(vec![
        text_part(&format!("{AUDIO_MARKER} hello")),
        audio_part(&speech),
    ])
    .await;
    assert_eq!(param, "messages[0].content[0].text");
    assert!(message.contains(AUDIO_MARKER), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_past_max_audio_seconds_is_refused_naming_the_limit() {
    let Some(bundle) = load(&format!("max_audio_seconds = 2\n{MODEL_TOML}")) else {
        return;
    };
    let bundle = std::sync::Arc::new(bundle);
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let app = router(state(&bundle, queue, Limits::default(), None));
    let ask = |wav: Vec<u8>| request(vec![text_part("What is this?"), audio_part(&wav)]);
    let (status, answer) = send(&app, post("/v1/chat/completions", ask(tone_wav(1.5)))).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    // Shorter than the encoder's window, so encoded with the short clips: refused all the same.
    let (status, message) = error(&app, post("/v1/chat/completions", ask(tone_wav(3.0)))).await;
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{status}"
    );
    assert!(
        message.contains("max_audio_seconds") && message.contains("3.0 s"),
        "{message}"
    );
}
