//! Clients that are slow, silent or never finish cannot hold the server up, over real TCP
//! connections on loopback: uploads that stall after one byte take no slot from anyone and are
//! cut off by the body timeouts (408); a connection that never finishes its headers is closed;
//! connections past the limit are closed at once; and shutdown ends within its deadline even
//! with such clients still connected.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pal_serve::engine::{self, Batching};
use pal_serve::{Limits, Network};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection that sends the headers of a 20 MB upload and then one byte.
async fn stalled_upload(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 20000000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// What a connection receives until the server closes it, or `within` passes.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = vec![];
    tokio::time::timeout(within, stream.read_to_end(&mut got))
        .await
        .ok()?
        .ok()?;
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_uploads_block_nobody_and_are_cut_off() {
    let Some(bundle) = bundle() else { return };
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let network = Network {
        body_idle_timeout: Duration::from_secs(15),
        ..Network::default()
    };
    let app = state_with(&bundle, queue, Limits::default(), network, None);
    let (addr, stop, server) = serve_on_loopback(app).await;
    // More stalled uploads than there are decoding slots (4).
    let mut stalled = vec![];
    for _ in 0..6 {
        stalled.push(stalled_upload(addr).await);
    }
    let body = chat_body(&clip_wav(), "What is said?", json!({})).to_string();
    let (status, answer) = http_request(
        addr,
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json",
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // Answered while every stalled upload still waits (none has been cut off yet).
    for stream in &mut stalled {
        let mut byte = [0u8; 1];
        let pending = tokio::time::timeout(Duration::ZERO, stream.peek(&mut byte)).await;
        assert!(
            pending.is_err(),
            "a stalled upload was answered before the normal request"
        );
    }
    // Each stalled upload is answered 408 once it has stalled past the idle timeout.
    for stream in &mut stalled {
        let got = read_until_closed(stream, Duration::from_secs(30))
            .await
            .expect("the stalled upload was never cut off");
        let (status, body) = parse_response(&got);
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("--body-idle-timeout-s"), "{body}");
    }
    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_their_number_is_capped() {
    let Some(bundle) = bundle() else { return };
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let network = Network {
        header_timeout: Duration::from_secs(1),
        max_connections: 3,
        ..Network::default()
    };
    let app = state_with(&bundle, queue, Limits::default(), network, None);
    let (addr, stop, server) = serve_on_loopback(app).await;
    // Headers begun and never finished: closed after the header timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
        .await
        .unwrap();
    let start = Instant::now();
    read_until_closed(&mut slow, Duration::from_secs(20))
        .await
        .expect("a connection that never finished its headers stayed open");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // Three open connections fill the server; the fourth is closed without an answer.
    let mut open = vec![];
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await;
    let got = read_until_closed(&mut extra, Duration::from_secs(10))
        .await
        .unwrap_or_default();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // One closes: there is room again.
    drop(open.pop());
    let start = Instant::now();
    loop {
        let (status, _) = http_request(addr, "GET /health HTTP/1.1", b"").await;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no room after a close"
        );
        tokio::task::yield_now().await;
    }
    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_its_deadline_whatever_clients_do() {
    let Some(bundle) = bundle() else { return };
    let (queue, _worker) = engine::start(bundle.clone(), Batching::default());
    let network = Network {
        shutdown_timeout: Duration::from_secs(2),
        ..Network::default()
    };
    let app = state_with(&bundle, queue, Limits::default(), network, None);
    let (addr, stop, server) = serve_on_loopback(app).await;
    let _stalled = stalled_upload(addr).await;
    let _silent = TcpStream::connect(addr).await.unwrap();
    // The connections are taken before the shutdown begins.
    let (status, _) = http_request(addr, "GET /health HTTP/1.1", b"").await;
    assert_eq!(status, 200);
    let start = Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server did not stop within its shutdown deadline")
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // And it takes no new connection.
    assert!(TcpStream::connect(addr).await.is_err());
}
