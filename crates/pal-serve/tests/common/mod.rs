//! Helpers shared by pal-serve's HTTP tests: the real-model bundle, the server state, request
//! bodies, and sending requests in process.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt;
use pal_models::audio_llm::{write_untrained_run, ModelConfig};
use pal_serve::engine::{Bundle, Queue};
use pal_serve::{AppState, Limits, Network};
use serde_json::{json, Value};
use tower::ServiceExt;

/// An untrained PAL bundle on the real SmolLM2-135M and Whisper tiny.en.
pub const MODEL_TOML: &str = r#"
seed = 0
[llm]
path = "asset:smollm2-135m-instruct"
[[encoders]]
name = "whisper"
kind = "whisper"
path = "asset:whisper-tiny.en"
real_length = true
route = "pal"
summary = { type = "latent", queries = 4, layers = 1 }
lal = { start = 24 }
"#;

/// The bundle, loaded once for all tests (None when the models are not fetched).
pub fn bundle() -> Option<Arc<Bundle>> {
    static BUNDLE: OnceLock<Option<Arc<Bundle>>> = OnceLock::new();
    BUNDLE
        .get_or_init(|| load(MODEL_TOML).map(Arc::new))
        .clone()
}

/// A bundle of the model config `toml`, written as an untrained run and loaded afresh (None
/// when the models are not fetched).
pub fn load(toml: &str) -> Option<Bundle> {
    pal_assets::for_test(&pal_assets::SMOLLM2_135M)?;
    pal_assets::for_test(&pal_assets::WHISPER_TINY_EN)?;
    let dir = tempfile::tempdir().unwrap().keep();
    let config: ModelConfig = toml::from_str(toml).unwrap();
    write_untrained_run(&config, &dir, &dir.join("run")).unwrap();
    let bundle = pal_serve::load_bundle(
        &dir.join("run"),
        pal_models::WeightForm::Auto,
        pal_nn::ComputeDevice::Cpu,
        pal_nn::ComputeDtype::F32,
    );
    Some(bundle.unwrap())
}

/// The server state for `bundle` under the model name `test-model`.
pub fn state(
    bundle: &Arc<Bundle>,
    queue: Queue,
    limits: Limits,
    api_key: Option<&str>,
) -> Arc<AppState> {
    state_with(bundle, queue, limits, Network::default(), api_key)
}

/// [`state`] with its network settings.
pub fn state_with(
    bundle: &Arc<Bundle>,
    queue: Queue,
    limits: Limits,
    network: Network,
    api_key: Option<&str>,
) -> Arc<AppState> {
    Arc::new(
        AppState::new(
            "test-model".into(),
            bundle,
            queue,
            limits,
            network,
            api_key.map(String::from),
        )
        .unwrap(),
    )
}

/// A server for `state` on a free loopback port: its address, what stops it, and its task
/// (which ends when the server has stopped).
pub async fn serve_on_loopback(
    state: Arc<AppState>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        pal_serve::serve(listener, state, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop, task)
}

/// Sends a whole HTTP/1.1 request on a new connection and reads the response to its end:
/// (status, body); status 0 when the server closed or reset the connection without answering.
pub async fn http_request(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut response = vec![];
    let sent = async {
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.read_to_end(&mut response).await
    };
    if sent.await.is_err() {
        return (0, String::new());
    }
    parse_response(&response)
}

/// (status, body) of a raw HTTP/1.1 response (0 and empty when there is none).
pub fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn clip_wav() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../assets/clips/jfk_16k.wav"
    ))
    .unwrap()
}

/// A 16 kHz mono PCM16 WAV of `seconds` of a 440 Hz tone.
pub fn tone_wav(seconds: f32) -> Vec<u8> {
    let samples: Vec<f32> = (0..(16000.0 * seconds) as usize)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16000.0).sin())
        .collect();
    pal_audio::wav_bytes(&samples, 16000)
}

/// A chat request about `audio` (WAV) with `question`, greedy, 12 tokens, `extra` merged in.
pub fn chat_body(audio: &[u8], question: &str, extra: Value) -> Value {
    chat_body_as(audio, "wav", question, extra)
}

/// [`chat_body`] for audio in `format`.
pub fn chat_body_as(audio: &[u8], format: &str, question: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "test-model",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": question},
            {"type": "input_audio", "input_audio": {
                "data": base64::engine::general_purpose::STANDARD.encode(audio),
                "format": format}},
        ]}],
        "temperature": 0,
        "max_tokens": 12,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

pub fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

pub async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// The status and the error message of a request that must fail.
pub async fn error(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let (status, body) = send(app, request).await;
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("error body is not JSON: {}", String::from_utf8_lossy(&body)));
    (status, v["error"]["message"].as_str().unwrap().to_string())
}

/// Another bundle of the same model, loaded afresh (to give it a test hook).
pub fn fresh_bundle() -> Option<Bundle> {
    load(MODEL_TOML)
}
