//! The audio cache: a second question about a clip (from any client) is served from the cache,
//! skipping the encoder and the LAL prefix, with the answer the clip gets when computed afresh.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use pal_serve::engine::{self, Batching};
use pal_serve::{router, Limits};
use serde_json::{json, Value};

async fn answer(app: &axum::Router, question: &str) -> String {
    let (status, body) = send(
        app,
        post(
            "/v1/chat/completions",
            chat_body(&clip_wav(), question, json!({})).to_string(),
        ),
    )
    .await;
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
    let other = answer(&app, "Describe the sound.").await;
    assert_eq!(counters.audio_cache_hits.load(Ordering::Relaxed), 2);
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
}
