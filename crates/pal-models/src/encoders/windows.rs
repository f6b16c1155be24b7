//! Clips longer than an encoder's window: consecutive windows, up to a limit, never silent cuts.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// How clips longer than an encoder's window are handled: split into consecutive windows whose
/// tokens are concatenated, up to `max_windows` (then an error, never silent truncation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowPolicy {
    /// Most windows per clip.
    pub max_windows: usize,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        Self { max_windows: 4 }
    }
}

impl WindowPolicy {
    /// Splits `samples` into windows of at most `window` samples, or errors when there would be
    /// more than `max_windows`.
    pub fn split<'a>(&self, samples: &'a [f32], window: usize) -> Result<Vec<&'a [f32]>> {
        if samples.is_empty() {
            return Err(ModelError::Unsupported(
                "cannot encode an empty clip".into(),
            ));
        }
        let count = samples.len().div_ceil(window);
        if count > self.max_windows {
            return Err(ModelError::Unsupported(format!(
                "clip of {:.1} s needs {count} encoder windows of {:.1} s; the limit is {} (raise max_windows)",
                samples.len() as f64 / 16000.0,
                window as f64 / 16000.0,
                self.max_windows
            )));
        }
        Ok(samples.chunks(window).collect())
    }
}
