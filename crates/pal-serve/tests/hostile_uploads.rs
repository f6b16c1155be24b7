//! Uploads built to exhaust memory are refused while the server's memory barely moves: ten hours
//! of 48 kHz stereo silence in a 9 MB FLAC (6.9 GB once decoded), alone and four at once, and an
//! Ogg whose header lies about its channels. This file holds one test, so that nothing else runs
//! in the process while its memory is measured.

mod common;

use std::sync::Arc;

use common::*;
use pal_serve::engine::{self, Batching};
use pal_serve::{router, Limits};
use serde_json::json;

/// (peak since the last reset, current) resident memory of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets the peak (VmHWM) to the current resident size (Linux `clear_refs` 5).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_uploads_are_refused_without_the_memory_they_ask_for() {
    let Some(bundle) = bundle() else { return };
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let app = router(state(&bundle, queue, Limits::default(), None));
    let flac = pal_audio::hostile::silent_flac(36_000.0, 48_000, 2);
    let ogg = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pal-audio/tests/fixtures/tone.ogg"
    ))
    .unwrap();
    let lying_ogg = pal_audio::hostile::ogg_claiming_channels(&ogg, 24);
    let flac_body = Arc::new(chat_body_as(&flac, "flac", "What is this?", json!({})).to_string());
    let ogg_body = chat_body_as(&lying_ogg, "ogg", "What is this?", json!({})).to_string();

    reset_peak();
    let (_, before) = memory();
    let (status, message) = error(&app, post("/v1/chat/completions", (*flac_body).clone())).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("120 s"), "{message}");
    let (status, message) = error(&app, post("/v1/chat/completions", ogg_body)).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("could not decode"), "{message}");
    let (peak, _) = memory();
    let growth = peak.saturating_sub(before);
    eprintln!(
        "one ten-hour FLAC and a lying Ogg: peak +{} MB",
        growth >> 20
    );
    assert!(
        growth < 200 << 20,
        "one ten-hour FLAC and a lying Ogg grew the peak by {} MB",
        growth >> 20
    );

    // Four at once, with the length left out of the header (0 = unknown), so that each is
    // decoded up to the limit before it is refused.
    let mut unknown = flac.clone();
    unknown[18 + 3] &= 0xF0;
    unknown[18 + 4..18 + 8].copy_from_slice(&[0; 4]);
    let flac_body =
        Arc::new(chat_body_as(&unknown, "flac", "What is this?", json!({})).to_string());
    reset_peak();
    let (_, before) = memory();
    let requests = (0..4).map(|_| {
        let app = app.clone();
        let body = flac_body.clone();
        tokio::spawn(
            async move { error(&app, post("/v1/chat/completions", (*body).clone())).await },
        )
    });
    for request in requests {
        let (status, message) = request.await.unwrap();
        assert_eq!(status, 400, "{message}");
    }
    let (peak, _) = memory();
    let growth = peak.saturating_sub(before);
    eprintln!("four ten-hour FLACs at once: peak +{} MB", growth >> 20);
    assert!(
        growth < 400 << 20,
        "four ten-hour FLACs at once grew the peak by {} MB",
        growth >> 20
    );
}
