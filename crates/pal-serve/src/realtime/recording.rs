//! A session's audio: PCM16 pieces in (24 kHz resampled to 16 kHz as they come, or 16 kHz as
//! is), one recording out, cut into windows for the encoder thread as each fills (and at each
//! commit), within the session's limit of seconds.

use std::sync::{Arc, Mutex};

use pal_audio::{StreamResampler, SAMPLE_RATE};
use pal_models::audio_llm::GrowingClip;
use sha2::{Digest, Sha256};

use super::events::EventError;
use crate::audio_cache::ClipKey;

/// The session's recording (see the module's documentation).
pub struct Recording {
    rate: u32,
    resampler: StreamResampler,
    /// A byte of a sample split between two appends.
    odd_byte: Option<u8>,
    /// The recording at 16 kHz: committed, then the buffer.
    samples: Vec<f32>,
    /// Samples committed (the buffer starts here).
    committed: usize,
    /// Samples handed to the encoder thread as windows.
    scheduled: usize,
    /// Changes when audio is taken back, so that keys never name two recordings.
    generation: u64,
    /// The recording's encoded windows (pushed by the encoder thread).
    pub clip: Arc<Mutex<GrowingClip>>,
    /// Samples per window.
    window: usize,
    /// Most samples the session may hold.
    max_samples: usize,
    max_seconds: f64,
}

impl Recording {
    /// An empty recording taking PCM16 at `rate`, cut into windows of `window` samples, at
    /// most `max_seconds` long.
    pub fn new(rate: u32, window: usize, max_seconds: f64, clip: GrowingClip) -> Self {
        Self {
            rate,
            resampler: StreamResampler::new(rate, SAMPLE_RATE, "input_audio_buffer"),
            odd_byte: None,
            samples: vec![],
            committed: 0,
            scheduled: 0,
            generation: 0,
            clip: Arc::new(Mutex::new(clip)),
            window: window.max(1),
            max_samples: (max_seconds * SAMPLE_RATE as f64) as usize,
            max_seconds,
        }
    }

    /// Takes PCM16 at a new rate from now on (what the resampler holds is kept).
    pub fn set_rate(&mut self, rate: u32) -> Result<(), EventError> {
        if rate != self.rate {
            self.flush()?;
            self.rate = rate;
            self.resampler = StreamResampler::new(rate, SAMPLE_RATE, "input_audio_buffer");
        }
        Ok(())
    }

    /// Appends PCM16 little-endian `bytes` (a sample may be split between two appends);
    /// refused whole when the session would hold more than its limit.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), EventError> {
        let held = self.odd_byte.is_some() as usize;
        let incoming = (held + bytes.len()) / 2;
        let resampled = incoming as f64 * SAMPLE_RATE as f64 / self.rate as f64;
        if self.samples.len() as f64 + resampled > self.max_samples as f64 {
            return Err(EventError::refused(
                "session_audio_limit",
                format!(
                    "the session holds at most {} s of audio (--max-session-seconds); this append was dropped",
                    self.max_seconds
                ),
            ));
        }
        let mut joined = Vec::with_capacity(held + bytes.len());
        joined.extend(self.odd_byte.take());
        joined.extend_from_slice(bytes);
        if joined.len() % 2 == 1 {
            self.odd_byte = joined.pop();
        }
        let pcm: Vec<f32> = joined
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
            .collect();
        let out = self
            .resampler
            .push(&pcm)
            .map_err(|e| EventError::server(e.to_string()))?;
        self.samples.extend(out);
        Ok(())
    }

    /// Ends the resampler's input (its last samples join the recording) and starts another.
    fn flush(&mut self) -> Result<(), EventError> {
        let fresh = StreamResampler::new(self.rate, SAMPLE_RATE, "input_audio_buffer");
        let done = std::mem::replace(&mut self.resampler, fresh);
        let rest = done
            .finish()
            .map_err(|e| EventError::server(e.to_string()))?;
        self.samples.extend(rest);
        self.odd_byte = None;
        Ok(())
    }

    /// The next window to encode, `(start, samples)`: a whole window, or with `all` whatever
    /// remains. Marks it handed over.
    pub fn next_window(&mut self, all: bool) -> Option<(usize, Vec<f32>)> {
        let left = self.samples.len() - self.scheduled;
        if left == 0 || (left < self.window && !all) {
            return None;
        }
        let start = self.scheduled;
        let end = start + left.min(self.window);
        self.scheduled = end;
        Some((start, self.samples[start..end].to_vec()))
    }

    /// Gives back a window [`Self::next_window`] handed out (it could not be queued): it is
    /// handed out again later.
    pub fn unschedule(&mut self, start: usize) {
        self.scheduled = self.scheduled.min(start);
    }

    /// Commits the buffer (the resampler flushed); returns the seconds committed, or an error
    /// when the buffer is shorter than 100 ms, as OpenAI's.
    pub fn commit(&mut self) -> Result<f64, EventError> {
        self.flush()?;
        let pending = self.samples.len() - self.committed;
        if pending < SAMPLE_RATE as usize / 10 {
            return Err(EventError::refused(
                "input_audio_buffer_commit_empty",
                format!(
                    "the buffer holds {} ms of audio; a commit needs at least 100 ms",
                    pending * 1000 / SAMPLE_RATE as usize
                ),
            ));
        }
        self.committed = self.samples.len();
        Ok(pending as f64 / SAMPLE_RATE as f64)
    }

    /// Drops the buffer (the audio after the last commit). The caller must have waited for the
    /// windows in flight: the clip's windows past the commit are dropped here.
    pub fn clear(&mut self) {
        self.samples.truncate(self.committed);
        self.odd_byte = None;
        self.resampler = StreamResampler::new(self.rate, SAMPLE_RATE, "input_audio_buffer");
        let kept = self
            .clip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .truncate(self.committed);
        self.scheduled = kept;
        self.generation += 1;
    }

    /// Audio not yet handed over as a window, `(start, samples)`.
    pub fn tail(&self) -> (usize, Vec<f32>) {
        (self.scheduled, self.samples[self.scheduled..].to_vec())
    }

    /// Seconds of audio so far (committed and buffered).
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / SAMPLE_RATE as f64
    }

    /// Whether there is any audio.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Samples buffered since the last commit.
    pub fn buffered(&self) -> usize {
        self.samples.len() - self.committed
    }

    /// The audio cache's key for the recording as it is now in `session`: never the key of a
    /// clip sent whole (its windows are encoded apart, which moves its outputs slightly).
    pub fn key(&self, session: &str) -> ClipKey {
        let mut hash = Sha256::new();
        hash.update(b"pal realtime recording\0");
        hash.update(session.as_bytes());
        hash.update(self.generation.to_le_bytes());
        hash.update((self.samples.len() as u64).to_le_bytes());
        hash.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(samples: usize) -> Vec<u8> {
        (0..samples)
            .flat_map(|i| (((i % 100) as i16 - 50) * 300).to_le_bytes())
            .collect()
    }

    #[test]
    fn windows_fill_and_commits_cut_them() {
        let mut r = Recording::new(16_000, 1000, 10.0, GrowingClip::default());
        r.append(&pcm(2500)).unwrap();
        assert_eq!(
            r.next_window(false).map(|w| (w.0, w.1.len())),
            Some((0, 1000))
        );
        assert_eq!(r.next_window(false).map(|w| w.0), Some(1000));
        assert!(r.next_window(false).is_none());
        // A split sample is kept for the next append.
        let bytes = pcm(100);
        r.append(&bytes[..51]).unwrap();
        r.append(&bytes[51..]).unwrap();
        assert_eq!(r.buffered(), 2600);
        r.commit().unwrap();
        assert_eq!(
            r.next_window(true).map(|w| (w.0, w.1.len())),
            Some((2000, 600))
        );
        assert_eq!(
            r.commit().unwrap_err().code,
            "input_audio_buffer_commit_empty"
        );
        let key = r.key("s");
        r.append(&pcm(2000)).unwrap();
        r.clear();
        assert_eq!(r.buffered(), 0);
        assert_ne!(r.key("s"), key, "a cleared recording never reuses a key");
    }

    #[test]
    fn audio_past_the_limit_is_refused_whole() {
        let mut r = Recording::new(24_000, 16_000, 1.0, GrowingClip::default());
        r.append(&pcm(20_000)).unwrap();
        let err = r.append(&pcm(10_000)).unwrap_err();
        assert_eq!(err.code, "session_audio_limit");
        r.commit().unwrap();
        assert!((r.seconds() - 20_000.0 / 24_000.0).abs() < 1e-3);
    }
}
