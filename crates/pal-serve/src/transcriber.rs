//! The transcription thread: Whisper transcriptions (`/v1/audio/transcriptions`) run here, one
//! at a time from their own bounded queue, so a long transcription never holds up the chats on
//! the encoder and model threads. A transcription whose client has gone away stops at its next
//! 30 s window; a panic fails its request alone.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::bundle::Bundle;
use crate::metrics::Counters;
use crate::work::{isolated, SubmitError};

/// A transcription asked for.
pub struct Transcription {
    /// The clip, 16 kHz mono.
    pub samples: Vec<f32>,
    /// The transcript or an error; closed when the client goes away.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// The sending side of the transcription queue.
#[derive(Clone)]
pub struct Transcriptions {
    sender: SyncSender<Transcription>,
    counters: Arc<Counters>,
}

impl Transcriptions {
    /// Queues a transcription without waiting.
    pub fn submit(&self, job: Transcription) -> Result<(), SubmitError> {
        match self.sender.try_send(job) {
            Ok(()) => {
                self.counters
                    .queued_transcriptions
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Err(SubmitError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Queues a transcription, waiting for room in the queue (blocking: call it off the async
    /// threads).
    pub fn submit_waiting(&self, job: Transcription) -> Result<(), SubmitError> {
        self.counters
            .queued_transcriptions
            .fetch_add(1, Ordering::Relaxed);
        self.sender.send(job).map_err(|_| {
            self.counters
                .queued_transcriptions
                .fetch_sub(1, Ordering::Relaxed);
            SubmitError::Stopped
        })
    }
}

/// Starts the transcription thread with a queue of `capacity`; it ends when every sender is
/// dropped.
pub fn start(
    bundle: Arc<Bundle>,
    capacity: usize,
    counters: Arc<Counters>,
) -> (Transcriptions, std::thread::JoinHandle<()>) {
    let (sender, receiver) = sync_channel(capacity.max(1));
    let thread_counters = counters.clone();
    let handle = std::thread::Builder::new()
        .name("pal-transcribe".into())
        .spawn(move || run(&bundle, &receiver, &thread_counters))
        .expect("spawn the transcription thread");
    (Transcriptions { sender, counters }, handle)
}

fn run(bundle: &Bundle, receiver: &Receiver<Transcription>, counters: &Counters) {
    while let Ok(job) = receiver.recv() {
        let start = Instant::now();
        let result = if job.reply.is_closed() {
            Ok(None)
        } else {
            let reply = &job.reply;
            isolated(counters, || {
                transcribe(bundle, &job.samples, reply, counters)
            })
            .and_then(|r| r)
        };
        Counters::spent(&counters.transcribe_micros, start);
        counters
            .queued_transcriptions
            .fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Some(text)) => {
                counters.transcriptions.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Ok(text));
            }
            Ok(None) => {
                counters
                    .transcriptions_cancelled
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
}

/// The transcript, or `None` when the client went away before it ended.
fn transcribe(
    bundle: &Bundle,
    samples: &[f32],
    reply: &oneshot::Sender<Result<String, String>>,
    counters: &Counters,
) -> Result<Option<String>, String> {
    let (model, tokenizer) = bundle
        .whisper
        .as_ref()
        .ok_or_else(|| "this model has no Whisper decoder".to_string())?;
    let mut text = String::new();
    let whole = pal_infer::transcribe_windows(model, tokenizer, samples, |window| {
        text.push_str(window);
        counters.transcribed_windows.fetch_add(1, Ordering::Relaxed);
        !reply.is_closed()
    })
    .map_err(|e| e.to_string())?;
    Ok(whole.then_some(text))
}
