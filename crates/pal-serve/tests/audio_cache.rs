//! The audio cache: a second question about a clip (from any client) is served from the cache,
//! skipping the encoder and the LAL prefix, and the prompt rows it shares with an earlier
//! question, with the answer the clip gets when computed afresh.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use pal_serve::engine::{self, Batching};
use pal_serve::{router, Limits};
use serde_json::{json, Value};

async fn answer(app: &axum::Router, question: &str) -> String {
    answer_to(app, chat_body(&clip_wav(), question, json!({}))).await
}

/// The next turn of a chat about the clip: `question`, its answer, then `follow_up`.
fn follow_up_body(question: &str, answer: &str, follow_up: &str) -> Value {
    let mut body = chat_body(&clip_wav(), question, json!({}));
    let first = body["messages"][0].clone();
    body["messages"] = json!([first,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": follow_up}]);
    body
}

async fn answer_to(app: &axum::Router, request: Value) -> String {
    let (status, body) = send(app, post("/v1/chat/completions", request.to_string())).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_question_about_a_clip_is_served_from_the_cache() {
    let Some(bundle) = bundle() else { return };
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let counters = queue.counters.clone();
    let app = router(state(&bundle, queue, Limits::default(), None));
    let computations = || bundle.model.lal_prefix_computations.load(Ordering::Relaxed);

    let before = computations();
    let first = answer(&app, "What is said?").await;
    assert_eq!(counters.audio_cache_misses.load(Ordering::Relaxed), 1);
    assert_eq!(computations() - before, 1);
    let second = answer(&app, "What is said?").await;
    assert_eq!(second, first);
    // The same question again: its whole prompt was kept with the clip, nothing runs.
    assert_eq!(counters.prompt_cache_hits.load(Ordering::Relaxed), 1);
    let run = counters.prompt_rows_run.load(Ordering::Relaxed);
    let other = answer(&app, "Describe the sound.").await;
    // Another question: everything up to and including the clip is reused, only its own
    // rows run.
    let reused = counters.prompt_rows_reused.load(Ordering::Relaxed);
    let other_run = counters.prompt_rows_run.load(Ordering::Relaxed) - run;
    assert!(
        other_run > 0 && other_run < 16,
        "{other_run} rows run for a new question"
    );
    // The same question reused all its `run` rows; the other more than it ran.
    assert!(
        reused - run > other_run,
        "{} rows reused and {other_run} run for a new question",
        reused - run
    );
    // The chat's next turn reuses its first turn's prompt and runs its answer and new question.
    let first_rows = run; // the first prompt ran all its rows
    let reused_before = counters.prompt_rows_reused.load(Ordering::Relaxed);
    let run_before = counters.prompt_rows_run.load(Ordering::Relaxed);
    let next_turn = follow_up_body("What is said?", &first, "Say more.");
    let next = answer_to(&app, next_turn.clone()).await;
    let reused = counters.prompt_rows_reused.load(Ordering::Relaxed) - reused_before;
    let run = counters.prompt_rows_run.load(Ordering::Relaxed) - run_before;
    assert!(
        reused >= first_rows && run < first_rows,
        "the next turn reused {reused} rows and ran {run}; the first turn had {first_rows}"
    );
    assert_eq!(counters.audio_cache_hits.load(Ordering::Relaxed), 3);
    assert_eq!(counters.audio_cache_misses.load(Ordering::Relaxed), 1);
    assert_eq!(
        computations() - before,
        1,
        "the LAL prefix was computed once"
    );

    // The same answers with the cache off (every clip encoded and its prefix computed in the batch).
    let (queue, _worker) = engine::start(
        bundle.clone(),
        Batching {
            audio_cache_bytes: 0,
            ..Batching::default()
        },
    );
    let app = router(state(&bundle, queue, Limits::default(), None));
    assert_eq!(answer(&app, "What is said?").await, first);
    assert_eq!(answer(&app, "Describe the sound.").await, other);
    assert_eq!(answer_to(&app, next_turn).await, next);
}

/// The shapes of conversation a server accepts, about `audio` (a base64 WAV) with `question`:
/// user only, system only, system + user, several turns with the audio first, the audio in a
/// later turn, and two clips.
fn shapes(audio: &str, other: &str, question: &str) -> Vec<Value> {
    let clip =
        |data: &str| json!({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}});
    let text = |t: &str| json!({"type": "text", "text": t});
    vec![
        json!([{"role": "user", "content": [text(question), clip(audio)]}]),
        json!([{"role": "system", "content": [clip(audio), text(question)]}]),
        json!([{"role": "system", "content": [text("Be brief."), clip(audio)]},
               {"role": "user", "content": question}]),
        json!([{"role": "user", "content": [clip(audio), text("Listen.")]},
               {"role": "assistant", "content": "I am listening."},
               {"role": "user", "content": question}]),
        json!([{"role": "user", "content": "Hello."},
               {"role": "assistant", "content": "Hi. Send a clip."},
               {"role": "user", "content": [text(question), clip(audio)]}]),
        json!([{"role": "user", "content": [text("First:"), clip(audio), text("second:"), clip(other), text(question)]}]),
    ]
}

/// Every accepted shape of conversation gets the same answer with the audio cache (and its
/// kept prompts) on as off, asked in turn about several clips: the kept prompts count the clip's
/// rows wherever the clip sits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conversation_shape_answers_the_same_with_the_cache_on_and_off() {
    let Some(bundle) = load(&format!("max_clips = 2\n{MODEL_TOML}")) else {
        return;
    };
    let bundle = std::sync::Arc::new(bundle);
    let b64 =
        |wav: Vec<u8>| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, wav);
    let clips = [b64(clip_wav()), b64(tone_wav(2.0))];
    let mut answers: Vec<Vec<String>> = vec![];
    for cache_mb in [0usize, 64] {
        let batching = Batching {
            audio_cache_bytes: cache_mb << 20,
            ..Batching::default()
        };
        let (queue, _worker) = engine::start(bundle.clone(), batching);
        let app = router(state(&bundle, queue, Limits::default(), None));
        let mut got = vec![];
        for question in ["What is said?", "Describe the sound.", "What is said?"] {
            for (i, audio) in clips.iter().enumerate() {
                let other = &clips[(i + 1) % clips.len()];
                for messages in shapes(audio, other, question) {
                    let body = json!({"model": "test-model", "messages": messages,
                                      "temperature": 0, "max_tokens": 6});
                    got.push(answer_to(&app, body).await);
                }
            }
        }
        answers.push(got);
    }
    assert_eq!(answers[0].len(), 36);
    for (i, (off, on)) in answers[0].iter().zip(&answers[1]).enumerate() {
        assert_eq!(off, on, "ask {i}: cache off {off:?}, on {on:?}");
    }
}
