//! Taking connections: at most [`Network::max_connections`] open (more are closed at once),
//! request headers within [`Network::header_timeout`] (a client that opens a connection and
//! sends nothing, or a header a byte at a time, is closed), HTTP/1.1 with upgrades (WebSocket),
//! and a shutdown that stops accepting, lets the requests in flight finish, and stops anyway
//! after [`Network::shutdown_timeout`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::routes::router;
use crate::settings::ServeError;
use crate::state::AppState;

/// Serves `state` on `listener` until `shutdown` resolves; then stops accepting connections,
/// lets the requests in flight finish (up to the shutdown timeout) and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let network = state.network.clone();
    let counters = state.queue.counters.clone();
    let service = TowerToHyperService::new(router(state));
    let slots = Arc::new(Semaphore::new(network.max_connections.max(1)));
    let (closing, closed) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of file descriptors or a connection reset before it was taken: wait
                    // a moment instead of spinning, then go on.
                    tracing::warn!("accepting a connection on {addr:?}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let mut closed = closed.clone();
        let counters = counters.clone();
        let header_timeout = network.header_timeout;
        tokio::spawn(async move {
            counters.connections.fetch_add(1, Ordering::Relaxed);
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { drop(closed.wait_for(|closing| *closing).await) } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            counters.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection gives its slot back when it ends.
    let all = network.max_connections.max(1) as u32;
    if tokio::time::timeout(network.shutdown_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "stopping with {} connection(s) still open after the shutdown timeout",
            counters.connections.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
