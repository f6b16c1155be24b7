//! Work whose client has gone away stops and gives its resources back: a clip whose request is
//! dropped stops decoding at its next packet (its decoding slot and seconds return at once, not
//! when the whole clip would have decoded), and a transcription stops at its next window. Long
//! transcriptions run on their own thread: a chat sent during one is answered first.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use common::*;
use pal_serve::audio_in::Decoding;
use pal_serve::engine::{self, Batching};
use pal_serve::request::ClipPart;
use pal_serve::{router, Counters, Limits};
use serde_json::json;

/// Twenty minutes of 48 kHz stereo silence in a small FLAC.
fn long_flac() -> ClipPart {
    ClipPart {
        bytes: pal_audio::hostile::silent_flac(1200.0, 48_000, 2),
        format: "flac".into(),
        field: "clip".into(),
    }
}

/// Polls `done` until it holds; how long that took (panics past a minute).
async fn until(mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(60), "never happened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_whose_client_leaves_stops_and_gives_its_budget_back() {
    let limits = Limits {
        max_audio_seconds: 1300.0,
        max_concurrent_decodes: 1,
        max_decoding_seconds: 1300.0,
        ..Limits::default()
    };
    let counters = Arc::new(Counters::default());
    let decoding = Arc::new(Decoding::new(&limits, counters.clone()));
    let start = Instant::now();
    let whole = decoding.decode_all(vec![long_flac()]).await.unwrap();
    let full = start.elapsed();
    assert_eq!(whole[0].len(), 1200 * 16_000);
    drop(whole);
    assert_eq!(counters.decoding_millis.load(Ordering::Relaxed), 0);

    let abandoned = tokio::spawn({
        let decoding = decoding.clone();
        async move { decoding.decode_all(vec![long_flac()]).await }
    });
    // Once it holds its twenty minutes, its client goes away.
    until(|| counters.decoding_millis.load(Ordering::Relaxed) == 1_200_000).await;
    abandoned.abort();
    let freed = until(|| counters.decoding_millis.load(Ordering::Relaxed) == 0).await;
    assert!(
        freed < full / 4,
        "the abandoned decode held its budget {freed:?} (a whole decode takes {full:?})"
    );
    // Its slot is free too: the next clip decodes at once.
    let start = Instant::now();
    let short = ClipPart {
        bytes: pal_audio::hostile::silent_flac(2.0, 48_000, 2),
        format: "flac".into(),
        field: "clip".into(),
    };
    decoding.decode_all(vec![short]).await.unwrap();
    assert!(start.elapsed() < full / 4, "{:?}", start.elapsed());
}

/// A multipart transcription request for `wav`.
fn transcription(wav: &[u8]) -> Request<Body> {
    let boundary = "palboundary";
    let mut form = Vec::new();
    form.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"clip.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes());
    form.extend(wav);
    form.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    Request::post("/v1/audio/transcriptions")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(form))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcriptions_run_apart_and_stop_when_their_client_leaves() {
    let Some(bundle) = bundle() else { return };
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let counters = queue.counters.clone();
    let limits = Limits {
        max_audio_seconds: 600.0,
        max_body_bytes: 64 << 20,
        ..Limits::default()
    };
    let app = router(state(&bundle, queue, limits, None));
    // Ten minutes of speech (the JFK clip over and over): twenty windows.
    let speech = pal_audio::decode_bytes(clip_wav(), Some("wav"), "jfk")
        .unwrap()
        .samples;
    let long: Vec<f32> = speech.iter().copied().cycle().take(600 * 16_000).collect();
    let long_wav = pal_audio::wav_bytes(&long, 16_000);

    // A chat sent while a long transcription runs is answered while it still runs.
    let abandoned = tokio::spawn({
        let app = app.clone();
        async move { send(&app, transcription(&long_wav)).await }
    });
    until(|| counters.transcribed_windows.load(Ordering::Relaxed) > 0).await;
    let (status, body) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(&clip_wav(), "What is said?", json!({})).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let windows = counters.transcribed_windows.load(Ordering::Relaxed);
    assert!(windows < 20, "the chat waited for the transcription");
    assert_eq!(counters.queued_transcriptions.load(Ordering::Relaxed), 1);

    // Its client leaves: it stops at its next window.
    abandoned.abort();
    until(|| counters.queued_transcriptions.load(Ordering::Relaxed) == 0).await;
    let done = counters.transcribed_windows.load(Ordering::Relaxed);
    assert!(
        done <= windows + 2 && done < 20,
        "{done} windows transcribed after the client left at {windows}"
    );
    assert_eq!(counters.transcriptions_cancelled.load(Ordering::Relaxed), 1);
}
