//! Reading a request body so that no client can hold the server up: the body's bytes count
//! against a budget shared by every request from the moment they arrive (so a slow upload
//! holds only what it has sent, and never a slot others wait for), a body over the size limit
//! is refused as soon as its `Content-Length` or its bytes say so, and a body must keep coming
//! ([`crate::Network::body_idle_timeout`]) and end in time ([`crate::Network::body_timeout`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;
use crate::metrics::Counters;
use crate::settings::{Limits, Network};

/// A body read whole, and its share of the upload budget (given back when dropped).
pub struct ReadBody {
    /// The bytes.
    pub bytes: Bytes,
    /// The budget the bytes hold.
    pub hold: BudgetHold,
}

/// Bytes held against the upload budget; given back when dropped.
pub struct BudgetHold {
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    counters: Arc<Counters>,
}

impl BudgetHold {
    fn add(&mut self, permit: OwnedSemaphorePermit, bytes: u64) {
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes += bytes;
        self.counters
            .upload_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.counters
            .upload_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The budget of body bytes all requests may hold at once.
pub fn upload_budget(limits: &Limits) -> Arc<Semaphore> {
    let bytes = limits
        .upload_budget_bytes
        .max(limits.max_body_bytes)
        .min(Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize);
    Arc::new(Semaphore::new(bytes))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the request body is larger than the server's limit (--max-body-mb)",
    )
    .with_code("body_too_large")
}

fn too_slow(what: &str) -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, what.to_string()).with_code("body_timeout")
}

/// Reads `body` within the limits (see the module's documentation): 413 past the size limit,
/// 408 past a timeout, 400 when the client breaks off.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: &Limits,
    network: &Network,
    budget: &Arc<Semaphore>,
    counters: &Arc<Counters>,
) -> Result<ReadBody, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let deadline = Instant::now() + network.body_timeout;
    let mut hold = BudgetHold {
        permit: None,
        bytes: 0,
        counters: counters.clone(),
    };
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
    let mut body = body;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = left.min(network.body_idle_timeout);
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) if left <= network.body_idle_timeout => {
                return Err(too_slow(&format!(
                    "the request body did not arrive within {} s (--body-timeout-s)",
                    network.body_timeout.as_secs()
                )))
            }
            Err(_) => {
                return Err(too_slow(&format!(
                    "the request body stalled: nothing arrived for {} s (--body-idle-timeout-s)",
                    network.body_idle_timeout.as_secs()
                )))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad(
                    None,
                    format!("reading the request body failed: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > limits.max_body_bytes {
            return Err(too_large());
        }
        if data.is_empty() {
            continue;
        }
        // Room in the budget for what arrived, waiting (within the deadline) while others
        // hold it.
        let left = deadline.saturating_duration_since(Instant::now());
        let permit = tokio::time::timeout(
            left,
            budget.clone().acquire_many_owned(data.len() as u32),
        )
        .await
        .map_err(|_| {
            too_slow("the server is receiving too many uploads at once; the body could not be held in time")
        })?
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"))?;
        hold.add(permit, data.len() as u64);
        bytes.extend_from_slice(&data);
    }
    Ok(ReadBody {
        bytes: Bytes::from(bytes),
        hold,
    })
}
