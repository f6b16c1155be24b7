//! `/v1/realtime` over real WebSockets on loopback, on the real SmolLM2 + Whisper tiny.en
//! bundle: a whole session's events in order and their contents (the answer the same as chat
//! completions gives for the same clip and question), a question asked mid-stream, cancel,
//! clear, transcription as the audio arrives, and every limit and bad event answered with an
//! `error` event while the session goes on.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use futures_util::{SinkExt, StreamExt};
use pal_serve::engine::{self, Batching};
use pal_serve::Limits;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a session; `headers` are added to the upgrade request.
async fn connect(
    addr: SocketAddr,
    query: &str,
    headers: &[(&'static str, &str)],
) -> Result<Socket, u16> {
    let mut request = format!("ws://{addr}/v1/realtime{query}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("connecting: {e}"),
    }
}

async fn send(socket: &mut Socket, event: Value) {
    socket
        .send(Message::Text(event.to_string().into()))
        .await
        .unwrap();
}

/// The next server event (within 120 s).
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), socket.next())
            .await
            .expect("no event within 120 s")
            .expect("the session ended")
            .expect("a WebSocket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Events until (and with) the first of type `last`.
async fn until(socket: &mut Socket, last: &str) -> Vec<Value> {
    let mut events = vec![];
    loop {
        let event = next(socket).await;
        let done = event["type"] == last;
        events.push(event);
        if done {
            return events;
        }
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// 16 kHz samples of a WAV clip of the repository's assets.
fn samples(name: &str) -> Vec<f32> {
    let path = format!("{}/../../assets/clips/{name}", env!("CARGO_MANIFEST_DIR"));
    let audio = pal_audio::load_audio(std::path::Path::new(&path)).unwrap();
    pal_audio::resample(&audio.samples, audio.sample_rate, 16_000, name).unwrap()
}

/// PCM16 little-endian bytes of `samples`, base64.
fn pcm16_base64(samples: &[f32]) -> String {
    let bytes: Vec<u8> = samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Appends `samples` in 100 ms events.
async fn append(socket: &mut Socket, samples: &[f32], rate: usize) {
    for piece in samples.chunks(rate / 10) {
        let event = json!({"type": "input_audio_buffer.append", "audio": pcm16_base64(piece)});
        send(socket, event).await;
    }
}

/// A server with the test bundle and `limits`.
async fn server(limits: Limits, key: Option<&str>) -> Option<SocketAddr> {
    let bundle = bundle()?;
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let (addr, stop, _task) = serve_on_loopback(state(&bundle, queue, limits, key)).await;
    // The server lives as long as the test's runtime.
    std::mem::forget(stop);
    Some(addr)
}

fn sixteen_k() -> Value {
    json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
        "transcription": {"model": "whisper-1"}}}}})
}

fn question(text: &str) -> Value {
    json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_session_answers_as_chat_completions_does() {
    let Some(addr) = server(Limits::default(), None).await else {
        return;
    };
    let mut socket = connect(addr, "?model=test-model", &[]).await.unwrap();
    let created = next(&mut socket).await;
    assert_eq!(created["type"], "session.created");
    assert_eq!(
        created["session"]["audio"]["input"]["format"]["rate"],
        24000
    );
    send(&mut socket, sixteen_k()).await;
    let updated = next(&mut socket).await;
    assert_eq!(updated["type"], "session.updated", "{updated}");
    assert_eq!(
        updated["session"]["audio"]["input"]["format"]["rate"],
        16000
    );
    let clip = samples("jfk_16k.wav");
    append(&mut socket, &clip, 16_000).await;
    send(
        &mut socket,
        json!({"type": "input_audio_buffer.commit", "event_id": "c1"}),
    )
    .await;
    let committed = until(
        &mut socket,
        "conversation.item.input_audio_transcription.completed",
    )
    .await;
    let kinds = types(&committed);
    assert_eq!(
        &kinds[..3],
        [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done"
        ]
    );
    assert!(kinds.contains(&"conversation.item.input_audio_transcription.delta"));
    let item_id = committed[0]["item_id"].as_str().unwrap();
    let completed = committed.last().unwrap();
    assert_eq!(completed["item_id"], item_id);
    let transcript = completed["transcript"].as_str().unwrap().to_lowercase();
    assert!(transcript.contains("country"), "{transcript}");

    send(&mut socket, question("What is said?")).await;
    let added = until(&mut socket, "conversation.item.done").await;
    assert_eq!(
        types(&added),
        ["conversation.item.added", "conversation.item.done"]
    );
    assert_eq!(added[0]["previous_item_id"], item_id);
    send(
        &mut socket,
        json!({"type": "response.create", "response": {"max_output_tokens": 12}}),
    )
    .await;
    let answer = until(&mut socket, "response.done").await;
    let kinds = types(&answer);
    assert_eq!(
        &kinds[..4],
        [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        &kinds[kinds.len() - 5..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done"
        ]
    );
    let deltas: String = answer
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let done = answer.last().unwrap();
    let text = done["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(deltas, text);
    assert!(done["response"]["usage"]["output_tokens"].as_u64().unwrap() >= 1);
    assert!(["completed", "incomplete"].contains(&done["response"]["status"].as_str().unwrap()));

    // The same clip and question through chat completions: the same answer (a clip shorter
    // than a window is encoded in one piece either way).
    let body = chat_body(
        &pal_audio::wav_bytes(&clip, 16_000),
        "What is said?",
        json!({}),
    );
    let (status, reply) = http_request(
        addr,
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["choices"][0]["message"]["content"], text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_question_mid_stream_is_answered_from_the_audio_so_far() {
    let limits = Limits {
        stream_chunk_seconds: 2.0,
        ..Limits::default()
    };
    let Some(addr) = server(limits, None).await else {
        return;
    };
    let mut socket = connect(addr, "", &[]).await.unwrap();
    next(&mut socket).await;
    send(&mut socket, sixteen_k()).await;
    next(&mut socket).await;
    let clip = samples("jfk_16k.wav");
    // 5 s in: two 2 s windows are encoded as they fill, with their transcripts.
    append(&mut socket, &clip[..5 * 16_000], 16_000).await;
    let first = until(
        &mut socket,
        "conversation.item.input_audio_transcription.delta",
    )
    .await;
    assert_eq!(
        types(&first),
        ["conversation.item.input_audio_transcription.delta"]
    );
    send(&mut socket, question("What is said?")).await;
    send(
        &mut socket,
        json!({"type": "response.create", "response": {"max_output_tokens": 4}}),
    )
    .await;
    let answer = until(&mut socket, "response.done").await;
    let done = answer.last().unwrap();
    assert_ne!(done["response"]["status"], "failed", "{done}");
    // The audio keeps coming, and is committed whole afterwards.
    append(&mut socket, &clip[5 * 16_000..], 16_000).await;
    send(&mut socket, json!({"type": "input_audio_buffer.commit"})).await;
    let rest = until(
        &mut socket,
        "conversation.item.input_audio_transcription.completed",
    )
    .await;
    let transcript = rest.last().unwrap()["transcript"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(transcript.contains("country"), "{transcript}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_clear_do_what_they_say() {
    let Some(addr) = server(Limits::default(), None).await else {
        return;
    };
    let mut socket = connect(addr, "", &[("OpenAI-Beta", "realtime=v1")])
        .await
        .unwrap();
    next(&mut socket).await;
    // Nothing to cancel yet.
    send(
        &mut socket,
        json!({"type": "response.cancel", "event_id": "x"}),
    )
    .await;
    let error = next(&mut socket).await;
    assert_eq!(error["error"]["code"], "response_cancel_not_active");
    assert_eq!(error["error"]["event_id"], "x");
    // 24 kHz audio (the default), resampled.
    let clip = samples("fsdd_7_theo_0.wav");
    let at_24k = pal_audio::resample(&clip, 16_000, 24_000, "clip").unwrap();
    append(&mut socket, &at_24k, 24_000).await;
    send(&mut socket, json!({"type": "input_audio_buffer.commit"})).await;
    let committed = until(&mut socket, "conversation.item.created").await;
    assert_eq!(types(&committed)[0], "input_audio_buffer.committed");
    send(
        &mut socket,
        json!({"type": "response.create", "response": {"max_output_tokens": 400}}),
    )
    .await;
    until(&mut socket, "response.created").await;
    send(&mut socket, json!({"type": "response.cancel"})).await;
    let ended = until(&mut socket, "response.done").await;
    let done = ended.last().unwrap();
    assert_eq!(done["response"]["status"], "cancelled", "{done}");
    assert!(
        types(&ended).contains(&"response.text.done"),
        "beta names for a beta client"
    );
    // Audio appended then cleared is gone: the buffer is empty again.
    append(&mut socket, &at_24k, 24_000).await;
    send(&mut socket, json!({"type": "input_audio_buffer.clear"})).await;
    assert_eq!(
        next(&mut socket).await["type"],
        "input_audio_buffer.cleared"
    );
    send(&mut socket, json!({"type": "input_audio_buffer.commit"})).await;
    let error = next(&mut socket).await;
    assert_eq!(error["error"]["code"], "input_audio_buffer_commit_empty");
    // The session still answers.
    send(
        &mut socket,
        json!({"type": "response.create", "response": {"max_output_tokens": 2}}),
    )
    .await;
    let done = until(&mut socket, "response.done").await;
    assert_ne!(done.last().unwrap()["response"]["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_events_get_errors_and_the_session_goes_on() {
    let limits = Limits {
        max_session_seconds: 1.0,
        ..Limits::default()
    };
    let Some(addr) = server(limits, None).await else {
        return;
    };
    let mut socket = connect(addr, "", &[]).await.unwrap();
    next(&mut socket).await;
    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (Message::Text("{not json".into()), "invalid_json", None),
        (Message::Text(r#"{"no": "type"}"#.into()), "invalid_event", None),
        (Message::Text(r#"{"type": "conversation.item.delete"}"#.into()), "unknown_event", None),
        (Message::Binary(vec![1, 2, 3].into()), "invalid_event", None),
        (
            Message::Text(r#"{"type": "input_audio_buffer.append", "audio": "%%%"}"#.into()),
            "invalid_value",
            Some("audio"),
        ),
        (
            Message::Text(r#"{"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}}}"#.into()),
            "invalid_value",
            Some("session.audio.input.turn_detection"),
        ),
        (
            Message::Text(r#"{"type": "conversation.item.create", "item": {"role": "robot", "content": []}}"#.into()),
            "invalid_value",
            Some("item.role"),
        ),
        (Message::Text(r#"{"type": "response.create"}"#.into()), "no_audio", None),
    ];
    for (message, code, param) in cases {
        socket.send(message).await.unwrap();
        let error = next(&mut socket).await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error"]["code"], code, "{error}");
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{error}");
        }
    }
    // Past the session's seconds: the append is refused whole.
    let tone: Vec<f32> = (0..40_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
    send(
        &mut socket,
        json!({"type": "input_audio_buffer.append", "audio": pcm16_base64(&tone)}),
    )
    .await;
    let error = next(&mut socket).await;
    assert_eq!(error["error"]["code"], "session_audio_limit", "{error}");
    // Still alive: a good update is taken.
    send(&mut socket, sixteen_k()).await;
    assert_eq!(next(&mut socket).await["type"], "session.updated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_keys_and_idle_clients_are_limited() {
    let limits = Limits {
        max_sessions: 1,
        session_idle_seconds: 1.0,
        ..Limits::default()
    };
    let Some(addr) = server(limits, Some("sekrit")).await else {
        return;
    };
    assert_eq!(connect(addr, "", &[]).await.err(), Some(401));
    assert_eq!(
        connect(addr, "?model=other", &[("Authorization", "Bearer sekrit")])
            .await
            .err(),
        Some(400)
    );
    // The key as a browser gives it: a subprotocol; `realtime` is echoed.
    let mut socket = connect(
        addr,
        "",
        &[(
            "Sec-WebSocket-Protocol",
            "realtime, openai-insecure-api-key.sekrit",
        )],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut socket).await["type"], "session.created");
    // One session at most.
    let second = connect(addr, "", &[("Authorization", "Bearer sekrit")]).await;
    assert_eq!(second.err(), Some(503));
    // Silent past the idle timeout: an error event, then the session is closed.
    let error = next(&mut socket).await;
    assert_eq!(error["error"]["code"], "session_idle");
    let closed = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap();
    assert!(matches!(closed, Some(Ok(Message::Close(_))) | None));
    // Its slot was given back before the close was sent.
    let again = connect(addr, "", &[("Authorization", "Bearer sekrit")]).await;
    assert!(again.is_ok(), "the idle session's slot was not freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transcription_session_transcribes_and_answers_nothing() {
    let Some(addr) = server(Limits::default(), None).await else {
        return;
    };
    let mut socket = connect(addr, "?intent=transcription", &[]).await.unwrap();
    let created = next(&mut socket).await;
    assert_eq!(created["session"]["type"], "transcription");
    let clip = samples("fsdd_7_theo_0.wav");
    let at_24k = pal_audio::resample(&clip, 16_000, 24_000, "clip").unwrap();
    append(&mut socket, &at_24k, 24_000).await;
    send(&mut socket, json!({"type": "input_audio_buffer.commit"})).await;
    let events = until(
        &mut socket,
        "conversation.item.input_audio_transcription.completed",
    )
    .await;
    let transcript = events.last().unwrap()["transcript"]
        .as_str()
        .unwrap()
        .to_lowercase();
    // Whisper writes the spoken digit as a numeral.
    assert!(
        transcript.contains("seven") || transcript.contains('7'),
        "{transcript}"
    );
    send(&mut socket, json!({"type": "response.create"})).await;
    assert_eq!(
        next(&mut socket).await["error"]["code"],
        "transcription_session"
    );
}
