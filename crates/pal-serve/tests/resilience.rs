//! One request cannot fail the others: a request past the model's positions is refused before it
//! joins a batch while the request batched with it is answered; a panic on the model thread
//! fails only the request it was prefilling (or the batch of the step it hit), the next request
//! is answered and `/metrics` counts what happened; should the model thread end, `/health`
//! says so.

mod common;

use std::sync::Arc;

use common::*;
use pal_models::text::Segment;
use pal_serve::engine::{self, Batching};
use pal_serve::metrics::Outcome;
use pal_serve::{router, FaultInjection, FaultPoint, Limits};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_position_limit_fails_alone() {
    let Some(bundle) = bundle() else { return };
    let batching = Batching {
        max_batch: 2,
        ..Batching::default()
    };
    let (queue, _worker) = engine::start(bundle.clone(), batching);
    let counters = queue.counters.clone();
    let app = router(state(&bundle, queue, Limits::default(), None));
    // Two minutes of audio (6,000 LAL positions), a 2,000-token prompt and 512 new tokens pass
    // every request limit but not SmolLM2's 8,192 positions.
    let long_prompt = "one ".repeat(1_990);
    let too_long = chat_body(&tone_wav(119.0), &long_prompt, json!({"max_tokens": 512}));
    let normal = chat_body(&clip_wav(), "What is said?", json!({}));
    let (refused, answered) = tokio::join!(
        error(&app, post("/v1/chat/completions", too_long.to_string())),
        send(&app, post("/v1/chat/completions", normal.to_string())),
    );
    assert_eq!(refused.0, 400, "{}", refused.1);
    assert!(refused.1.contains("positions"), "{}", refused.1);
    assert_eq!(answered.0, 200, "{}", String::from_utf8_lossy(&answered.1));
    let v: Value = serde_json::from_slice(&answered.1).unwrap();
    assert!(v["choices"][0]["message"]["content"].is_string());
    assert_eq!(counters.chats(Outcome::Refused), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_only_its_request_and_metrics_count_it() {
    let Some(mut bundle) = fresh_bundle() else {
        return;
    };
    let marker = bundle.tokenizer.encode("PANIC").unwrap();
    bundle.fault_injection = Some(FaultInjection(
        Arc::new(move |segments: &[Segment]| {
            segments.iter().any(|s| match s {
                Segment::Text { ids, .. } => {
                    ids.windows(marker.len()).any(|w| w == marker.as_slice())
                }
                Segment::Audio => false,
            })
        }),
        FaultPoint::Prefill,
    ));
    let bundle = Arc::new(bundle);
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let bundle_counters = queue.counters.clone();
    let app = router(state(&bundle, queue, Limits::default(), None));
    let health = |app: axum::Router| async move {
        let (status, body) = send(
            &app,
            axum::http::Request::get("/health")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    assert_eq!(health(app.clone()).await.1["status"], "ok");

    let (status, message) = error(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(&clip_wav(), "PANIC now", json!({})).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 500, "{message}");
    assert!(message.contains("not at fault"), "{message}");

    let (status, body) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(&clip_wav(), "What is said?", json!({})).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // Health stays a bare "ok" (it tells nobody what others asked); the metrics count it.
    let (status, h) = health(app.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(h, json!({"status": "ok"}));
    assert_eq!(
        bundle_counters
            .panics
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(bundle_counters.chats(Outcome::Failed), 1);
}

#[test]
fn keys_compare_in_constant_time_and_exposure_is_warned() {
    use pal_serve::guard::constant_time_eq;
    assert!(constant_time_eq(b"sekret", b"sekret"));
    assert!(!constant_time_eq(b"sekret", b"sekreT"));
    assert!(!constant_time_eq(b"sekret", b"sekre"));
    assert!(!constant_time_eq(b"", b"x"));
    let public: std::net::SocketAddr = "0.0.0.0:8000".parse().unwrap();
    let local: std::net::SocketAddr = "127.0.0.1:8000".parse().unwrap();
    assert!(pal_serve::exposure_warning(&public, false)
        .unwrap()
        .contains("without an API key"));
    assert!(pal_serve::exposure_warning(&public, true).is_none());
    assert!(pal_serve::exposure_warning(&local, false).is_none());
}

/// A panic that gets past every isolation ends the model thread: the request it struck ends
/// its stream with an error (never `[DONE]`, as if complete), `/health` answers 503 `stopped`
/// (so an orchestrator restarts the server), and later requests get an error at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_model_thread_is_reported_and_fails_every_request() {
    let Some(mut bundle) = fresh_bundle() else {
        return;
    };
    let marker = bundle.tokenizer.encode_text("CRASH").unwrap();
    bundle.fault_injection = Some(FaultInjection(
        Arc::new(move |segments: &[Segment]| {
            segments.iter().any(|s| match s {
                Segment::Text { ids, .. } => {
                    ids.windows(marker.len()).any(|w| w == marker.as_slice())
                }
                Segment::Audio => false,
            })
        }),
        FaultPoint::ModelThread,
    ));
    let bundle = Arc::new(bundle);
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let app = router(state(&bundle, queue, Limits::default(), None));
    let health = || async {
        let request = axum::http::Request::get("/health")
            .body(axum::body::Body::empty())
            .unwrap();
        let (status, body) = send(&app, request).await;
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    assert_eq!(health().await.0, 200);
    let (status, body) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(&clip_wav(), "CRASH now", json!({"stream": true})).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let sse = String::from_utf8(body).unwrap();
    let data: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(!data.contains(&"[DONE]"), "{sse}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{sse}");
    let start = std::time::Instant::now();
    loop {
        let (status, body) = health().await;
        if status == 503 {
            assert_eq!(body, json!({"status": "stopped"}));
            break;
        }
        assert!(start.elapsed().as_secs() < 30, "health still says {body}");
        tokio::task::yield_now().await;
    }
    let (status, message) = error(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(&clip_wav(), "What is said?", json!({})).to_string(),
        ),
    )
    .await;
    assert!(status == 503 || status == 500, "{status}: {message}");
}
