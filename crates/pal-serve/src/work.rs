//! What the server's worker threads share: how a queue refuses a job, and panic isolation (a
//! panic fails the request it struck and the thread goes on).

use std::panic::AssertUnwindSafe;

use crate::metrics::Counters;

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full.
    Full,
    /// The worker has stopped (shutting down).
    Stopped,
}

/// Runs `f`, turning a panic into the message of a 500 (counted in `/metrics`): the thread
/// carries on.
pub fn isolated<T>(counters: &Counters, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        counters.panicked(&message);
        format!("internal error while generating (the request was not at fault): {message}")
    })
}
