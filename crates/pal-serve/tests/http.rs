//! The HTTP API in process (tower `oneshot`, no sockets) with the real SmolLM2-135M + Whisper
//! tiny.en and an untrained PAL adapter: answers equal direct generation, streaming equals the
//! whole answer, every bad request gets its status and an OpenAI-style error, a full queue
//! answers 503, and a client that leaves mid-stream is cancelled.

mod common;

use std::time::{Duration, Instant};

use common::*;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt;
use pal_infer::{generate_with_audio, ChatTemplate, GenerationParams, Message};
use pal_models::audio_llm::Example;
use pal_serve::engine::{self, Batching};
use pal_serve::{router, Limits};
use serde_json::{json, Value};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_streams_and_refuses_bad_requests() {
    let Some(bundle) = bundle() else { return };
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let limits = Limits {
        max_body_bytes: 2 * 1024 * 1024,
        max_audio_seconds: 20.0,
        max_tokens: 64,
        max_prompt_tokens: 200,
        ..Limits::default()
    };
    let app = router(state(&bundle, queue, limits, None));

    // Health and models.
    let (status, body) = send(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"status": "ok"})
    );
    let (_, body) = send(
        &app,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["data"][0]["id"],
        "test-model"
    );

    // A whole answer equals direct generation (what `pal ask` runs).
    let question = "What is said in this clip?";
    let (status, body) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(&clip_wav(), question, json!({})).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let samples = pal_audio::decode_bytes(clip_wav(), Some("wav"), "clip")
        .unwrap()
        .to_16k("clip")
        .unwrap()
        .samples;
    let template = ChatTemplate::for_tokenizer(&bundle.tokenizer).unwrap();
    let direct = generate_with_audio(
        &bundle.model,
        &bundle.tokenizer,
        &[Example {
            segments: pal_models::text::segments::prompt_segments(
                &template,
                &bundle.tokenizer,
                &[Message::new("user", question)],
            )
            .unwrap(),
            clips: vec![vec![bundle.encoders[0].encode(&samples).unwrap()]],
        }],
        &GenerationParams {
            max_tokens: 12,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap();
    assert_eq!(text, direct[0].text);
    assert_eq!(answer["usage"]["completion_tokens"], direct[0].tokens.len());
    // `/metrics` says where the time of that answer went: encoding, prefill, decoding steps.
    let (_, body) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let metrics = String::from_utf8(body).unwrap();
    for stage in ["encode", "prefill", "decode"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("pal_busy_seconds_total{{stage=\"{stage}\"}}")))
            .unwrap();
        let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(seconds > 0.0, "{line}");
    }

    // Streaming: the deltas add up to the same answer, and the stream ends with [DONE].
    let (status, body) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(&clip_wav(), question, json!({"stream": true})).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sse = String::from_utf8(body).unwrap();
    let data: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let streamed: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(streamed, text);
    let last: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());

    // Bad requests: status and a message naming the problem.
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post("/v1/chat/completions", "{\"model\": "),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            post(
                "/v1/chat/completions",
                chat_body(&clip_wav(), "q", json!({"model": "gpt-4o"})).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "unknown model 'gpt-4o'",
        ),
        (
            post("/v1/chat/completions", {
                let mut b = chat_body(&clip_wav(), "q", json!({}));
                b["messages"][0]["content"][1]["input_audio"]["data"] = json!("not base64 at all!");
                b.to_string()
            }),
            StatusCode::BAD_REQUEST,
            "not valid base64",
        ),
        (
            post(
                "/v1/chat/completions",
                chat_body(b"RIFF this is not audio", "q", json!({})).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "could not decode the audio",
        ),
        (
            post(
                "/v1/chat/completions",
                chat_body(&tone_wav(25.0), "q", json!({})).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "at most 20 s",
        ),
        (
            post(
                "/v1/chat/completions",
                chat_body(&tone_wav(80.0), "q", json!({})).to_string(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than the server's limit",
        ),
        (
            post(
                "/v1/chat/completions",
                chat_body(&clip_wav(), "q", json!({"max_tokens": 1000})).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "max_tokens must be between 1 and 64",
        ),
        (
            post(
                "/v1/chat/completions",
                chat_body(&clip_wav(), &"word ".repeat(400), json!({})).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "at most 200",
        ),
        (
            post(
                "/v1/chat/completions",
                json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "needs an input_audio",
        ),
        (
            post("/v1/chat/completions", {
                let mut b = chat_body(&clip_wav(), "q", json!({}));
                b["messages"][0]["content"][1]["input_audio"]["format"] = json!("aac");
                b.to_string()
            }),
            StatusCode::BAD_REQUEST,
            "unsupported audio format 'aac'",
        ),
    ];
    for (request, status, message) in cases {
        let (got, text) = error(&app, request).await;
        assert_eq!(got, status, "{message}: {text}");
        assert!(text.contains(message), "expected '{message}' in '{text}'");
    }

    // Transcription of the JFK clip through the multipart endpoint.
    let boundary = "palboundary";
    let mut form = Vec::new();
    form.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
        )
        .as_bytes(),
    );
    form.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"jfk.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes());
    form.extend(clip_wav());
    form.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let request = Request::post("/v1/audio/transcriptions")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(form))
        .unwrap();
    let (status, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let text = serde_json::from_slice::<Value>(&body).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        text.contains("ask not what your country can do for you"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let Some(bundle) = bundle() else { return };
    let (queue, _receiver) = engine::queue(bundle.clone(), 4);
    let app = router(state(&bundle, queue, Limits::default(), Some("sekret")));
    for auth in [None, Some("Bearer wrong")] {
        let mut request = Request::get("/v1/models");
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        let (status, message) = error(&app, request.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(message.contains("API key"));
    }
    let request = Request::get("/v1/models")
        .header("authorization", "Bearer sekret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::OK);
    // The metrics tell what others asked about: behind the key too.
    let (status, _) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Health stays open for load balancers.
    assert_eq!(
        send(&app, Request::get("/health").body(Body::empty()).unwrap())
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503() {
    let Some(bundle) = bundle() else { return };
    // A queue of one that nobody takes from, already holding a job: the next is refused.
    let (queue, _receiver) = engine::queue(bundle.clone(), 1);
    let (events, _answer) = tokio::sync::mpsc::unbounded_channel();
    queue
        .submit(engine::Job {
            segments: vec![],
            clips: vec![],
            growing: None,
            params: GenerationParams::default(),
            events,
            arrived: Instant::now(),
        })
        .unwrap();
    let app = router(state(&bundle, queue, Limits::default(), None));
    let response = app
        .clone()
        .oneshot(post(
            "/v1/chat/completions",
            chat_body(&clip_wav(), "q", json!({})).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_is_cancelled() {
    let Some(bundle) = bundle() else { return };
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let counters = queue.counters.clone();
    let app = router(state(&bundle, queue, Limits::default(), None));
    let request = post(
        "/v1/chat/completions",
        chat_body(
            &clip_wav(),
            "Tell me a long story.",
            json!({"stream": true, "max_tokens": 500, "temperature": 1.0, "seed": 3}),
        )
        .to_string(),
    );
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Read until the first generated text arrives, then hang up.
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(bytes) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    drop(body);
    let start = Instant::now();
    while counters.chats(pal_serve::metrics::Outcome::Cancelled) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the abandoned request was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `audio_url` parts with `data:` URLs answer what `input_audio` answers; remote URLs, other
/// types and a second clip (this model's config allows one) are refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_urls_carry_audio_and_remote_urls_are_refused() {
    let Some(bundle) = bundle() else { return };
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let app = router(state(&bundle, queue, Limits::default(), None));
    let wav = clip_wav();
    let with_part = |part: Value| {
        json!({
            "model": "test-model", "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is said?"}, part]}],
        })
        .to_string()
    };
    let url = format!(
        "data:audio/wav;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&wav)
    );
    let (status, by_url) = send(
        &app,
        post(
            "/v1/chat/completions",
            with_part(json!({"type": "audio_url", "audio_url": {"url": url}})),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&by_url)
    );
    let (_, by_part) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(&wav, "What is said?", json!({})).to_string(),
        ),
    )
    .await;
    let content = |b: &[u8]| {
        serde_json::from_slice::<Value>(b).unwrap()["choices"][0]["message"]["content"].clone()
    };
    assert_eq!(content(&by_url), content(&by_part));

    let cases = [
        (
            with_part(
                json!({"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}}),
            ),
            "fetches nothing remote",
        ),
        (
            with_part(
                json!({"type": "audio_url", "audio_url": {"url": "data:video/mp4;base64,AAAA"}}),
            ),
            "unsupported audio type 'video/mp4'",
        ),
        (
            {
                let mut b = chat_body(&wav, "q", json!({}));
                let part = b["messages"][0]["content"][1].clone();
                b["messages"][0]["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(part);
                b.to_string()
            },
            "at most 1 audio clip(s) per request",
        ),
    ];
    for (body, message) in cases {
        let (status, text) = error(&app, post("/v1/chat/completions", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(message), "expected '{message}' in '{text}'");
    }
}
