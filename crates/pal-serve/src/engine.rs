//! The one thread that runs the model. Requests wait in a bounded queue; the worker takes the
//! first, waits a short while for more, and generates for all of them in one batch
//! ([`pal_infer::generate_batch`]). A full queue is refused at once (the server answers 503), and
//! a request whose client went away is dropped from the batch.
//!
//! Nothing one request does takes the others down: each is checked against the model's real
//! position limit after encoding and before it joins a batch; a batch that fails is retried one
//! request at a time, so the request at fault fails alone; a panic fails its batch with 500 and
//! the thread carries on (counted, and reported by `/health`).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use pal_infer::{generate_batch_cached, FinishReason, GenerationParams};
use pal_models::audio_llm::{AudioLlm, ClipLal, Example};
use pal_models::encoders::whisper::{Whisper, WhisperTokenizer};
use pal_models::encoders::{encode_clip, AudioEncoder};
use pal_models::text::Segment;
use pal_models::Tokenizer;
use tokio::sync::{mpsc, oneshot};

use crate::audio_cache::{AudioCache, CachedClip};

/// A loaded model bundle: the audio-LLM, its encoders, its tokenizer, and a Whisper with its
/// decoder when the bundle's encoder is one (for transcriptions).
pub struct Bundle {
    /// The audio-LLM.
    pub model: AudioLlm,
    /// One encoder per attachment.
    pub encoders: Vec<Box<dyn AudioEncoder>>,
    /// The LLM's tokenizer.
    pub tokenizer: Tokenizer,
    /// Whisper with its decoder, for `/v1/audio/transcriptions`.
    pub whisper: Option<(Whisper, WhisperTokenizer)>,
    /// For tests of the server's resilience only: panics the model thread in the middle of a
    /// batch holding a request whose prompt this matches. `None` in every real server.
    pub fault_injection: Option<FaultInjection>,
}

/// Decides from a request's prompt whether the model thread panics on it (see [`FaultInjection`]).
pub type PanicWhen = dyn Fn(&[Segment]) -> bool + Send + Sync;

/// A test hook that decides, from a request's prompt, whether the model thread panics on it.
#[derive(Clone)]
pub struct FaultInjection(pub Arc<PanicWhen>);

/// What the worker tells a chat request, in order: text pieces, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// New text.
    Text(String),
    /// The answer is complete.
    Done {
        /// Why it ended.
        finish: FinishReason,
        /// Prompt rows.
        prompt_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
    },
    /// Generation failed (the server's fault: 500).
    Failed(String),
    /// The request cannot be served as asked (the client's: 400), found once its audio was
    /// encoded (its positions exceed the model's context).
    Refused {
        /// What is wrong, for a person.
        message: String,
        /// OpenAI's code.
        code: &'static str,
    },
}

/// Work for the model thread.
pub enum Job {
    /// Answer a conversation about a clip.
    Chat {
        /// The prompt, with the clip's place.
        segments: Vec<Segment>,
        /// The clip, 16 kHz mono.
        samples: Vec<f32>,
        /// How to generate.
        params: GenerationParams,
        /// Where the answer goes; closed when the client goes away.
        events: mpsc::UnboundedSender<Event>,
    },
    /// Transcribe a clip with Whisper.
    Transcribe {
        /// The clip, 16 kHz mono.
        samples: Vec<f32>,
        /// The transcript or an error.
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// How requests are batched.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most requests in one batch (1 turns batching off).
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub wait: Duration,
    /// Most requests waiting; more are refused with 503.
    pub queue_capacity: usize,
    /// Bytes of the audio cache (encoder outputs and LAL keys/values of recent clips); 0 turns
    /// it off.
    pub audio_cache_bytes: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_batch: 8,
            wait: Duration::from_millis(5),
            queue_capacity: 64,
            audio_cache_bytes: 512 << 20,
        }
    }
}

/// Counters for `/health` and the load test.
#[derive(Debug, Default)]
pub struct Counters {
    /// Chat requests answered (completed, failed or cancelled).
    pub chats: AtomicUsize,
    /// Batches run.
    pub batches: AtomicUsize,
    /// Requests cancelled because their client went away.
    pub cancelled: AtomicUsize,
    /// Transcriptions done.
    pub transcriptions: AtomicUsize,
    /// Requests refused because the queue was full.
    pub refused: AtomicUsize,
    /// Requests refused after encoding because they would not fit the model's context.
    pub too_long: AtomicUsize,
    /// Batches that panicked (their requests got 500; the thread carried on).
    pub panics: AtomicUsize,
    /// The last panic's message.
    pub last_panic: Mutex<Option<String>>,
    /// Set when the model thread has stopped (shutdown, or a failure it could not survive).
    pub stopped: AtomicBool,
    /// Clips found in the audio cache (encoder and LAL prefix skipped).
    pub audio_cache_hits: AtomicUsize,
    /// Clips encoded (and kept, when the cache is on).
    pub audio_cache_misses: AtomicUsize,
}

/// The sending side of the queue.
#[derive(Clone)]
pub struct Queue {
    sender: SyncSender<Job>,
    /// Shared counters.
    pub counters: Arc<Counters>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full.
    Full,
    /// The worker has stopped (shutting down).
    Stopped,
}

impl Queue {
    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                SubmitError::Full
            }
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }
}

/// A queue of `capacity` jobs and its receiving end (what [`start`] hands the model thread).
pub fn queue(capacity: usize) -> (Queue, Receiver<Job>) {
    let (sender, receiver) = sync_channel(capacity.max(1));
    let counters = Arc::new(Counters::default());
    (Queue { sender, counters }, receiver)
}

/// Starts the model thread. It ends when every [`Queue`] clone is dropped and the queue is
/// drained.
pub fn start(bundle: Arc<Bundle>, batching: Batching) -> (Queue, std::thread::JoinHandle<()>) {
    let (queue, receiver) = queue(batching.queue_capacity);
    let worker_counters = queue.counters.clone();
    let handle = std::thread::Builder::new()
        .name("pal-model".into())
        .spawn(move || {
            run(&bundle, &receiver, batching, &worker_counters);
            worker_counters.stopped.store(true, Ordering::Relaxed);
        })
        .expect("spawn the model thread");
    (queue, handle)
}

/// A chat job taken from the queue.
struct ChatJob {
    segments: Vec<Segment>,
    samples: Vec<f32>,
    params: GenerationParams,
    events: mpsc::UnboundedSender<Event>,
}

fn run(bundle: &Bundle, receiver: &Receiver<Job>, batching: Batching, counters: &Counters) {
    let mut cache = AudioCache::new(batching.audio_cache_bytes);
    while let Ok(first) = receiver.recv() {
        let mut chats = vec![];
        let take = |job: Job, chats: &mut Vec<ChatJob>| match job {
            Job::Chat {
                segments,
                samples,
                params,
                events,
            } => chats.push(ChatJob {
                segments,
                samples,
                params,
                events,
            }),
            Job::Transcribe { samples, reply } => {
                let result = transcribe(bundle, &samples);
                counters.transcriptions.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(result);
            }
        };
        take(first, &mut chats);
        let deadline = Instant::now() + batching.wait;
        while chats.len() < batching.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(job) => take(job, &mut chats),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if !chats.is_empty() {
            run_chats(bundle, chats, &mut cache, counters);
        }
    }
}

fn transcribe(bundle: &Bundle, samples: &[f32]) -> Result<String, String> {
    let (model, tokenizer) = bundle
        .whisper
        .as_ref()
        .ok_or_else(|| "this model has no Whisper decoder".to_string())?;
    pal_infer::transcribe(model, tokenizer, samples).map_err(|e| e.to_string())
}

/// Runs one batch of chats; a panic anywhere in it fails the batch's requests with 500 and is
/// counted, and the thread goes on with the next batch.
fn run_chats(bundle: &Bundle, chats: Vec<ChatJob>, cache: &mut AudioCache, counters: &Counters) {
    let senders: Vec<mpsc::UnboundedSender<Event>> =
        chats.iter().map(|c| c.events.clone()).collect();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        run_batch(bundle, chats, cache, counters);
    }));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        counters.panics.fetch_add(1, Ordering::Relaxed);
        *counters
            .last_panic
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
        for events in senders {
            let _ = events.send(Event::Failed(format!(
                "internal error while generating (the request was not at fault): {message}"
            )));
        }
    }
}

/// Encodes each clip, refuses the requests that would not fit the model's context, and generates
/// every other answer in one batch (one at a time when the batch fails, so that the request at
/// fault fails alone).
fn run_batch(bundle: &Bundle, chats: Vec<ChatJob>, cache: &mut AudioCache, counters: &Counters) {
    let positions = bundle.model.llm.rope.len();
    let mut live = vec![];
    let mut examples = vec![];
    let mut clips: Vec<Option<Arc<CachedClip>>> = vec![];
    for job in chats {
        counters.chats.fetch_add(1, Ordering::Relaxed);
        if job.events.is_closed() {
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let clip = match clip_audio(bundle, cache, &job.samples, counters) {
            Ok(clip) => clip,
            Err(e) => {
                let _ = job
                    .events
                    .send(Event::Failed(format!("encoding the audio: {e}")));
                continue;
            }
        };
        let example = Example {
            segments: job.segments.clone(),
            audio: match &clip {
                Clip::Kept(c) => c.audio.clone(),
                Clip::Encoded(audio) => audio.clone(),
            },
        };
        let needed = bundle
            .model
            .prompt_positions(&example)
            .map(|p| p + job.params.max_tokens);
        match needed {
            Ok(needed) if needed > positions => {
                counters.too_long.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Refused {
                    message: format!(
                        "the audio, the prompt and max_tokens take {needed} positions; the model has {positions} (send a shorter clip or prompt, or fewer max_tokens)"
                    ),
                    code: "context_length_exceeded",
                });
            }
            Ok(_) => {
                examples.push(example);
                live.push(job);
                clips.push(match clip {
                    Clip::Kept(c) => Some(c),
                    Clip::Encoded(_) => None,
                });
            }
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.to_string()));
            }
        }
    }
    if live.is_empty() {
        return;
    }
    if let Some(fault) = &bundle.fault_injection {
        if live.iter().any(|j| (fault.0)(&j.segments)) {
            panic!("fault injected for a test");
        }
    }
    counters.batches.fetch_add(1, Ordering::Relaxed);
    // Kept clips bring their LAL keys/values; without the cache the batch computes them.
    let lal: Vec<Option<&ClipLal>> = if clips.iter().all(Option::is_some) {
        clips.iter().map(|c| c.as_deref().map(|c| &c.lal)).collect()
    } else {
        vec![]
    };
    if generate_and_send(bundle, &live, &examples, &lal, counters).is_err() && live.len() > 1 {
        for (i, job) in live.iter().enumerate() {
            let one = std::slice::from_ref(job);
            let example = std::slice::from_ref(&examples[i]);
            let lal = lal.get(i).map(std::slice::from_ref).unwrap_or(&[]);
            let _ = generate_and_send(bundle, one, example, lal, counters);
        }
    }
}

/// A request's clip: kept from an earlier request, or just encoded (the cache is off).
enum Clip {
    Kept(Arc<CachedClip>),
    Encoded(Vec<Tensor>),
}

/// The clip's encoder outputs and LAL keys/values: from the cache, or computed (and kept when
/// the cache is on).
fn clip_audio(
    bundle: &Bundle,
    cache: &mut AudioCache,
    samples: &[f32],
    counters: &Counters,
) -> pal_models::Result<Clip> {
    if !cache.enabled() {
        counters.audio_cache_misses.fetch_add(1, Ordering::Relaxed);
        return Ok(Clip::Encoded(encode_clip(&bundle.encoders, samples)?));
    }
    let key = AudioCache::key(samples);
    if let Some(clip) = cache.get(&key) {
        counters.audio_cache_hits.fetch_add(1, Ordering::Relaxed);
        return Ok(Clip::Kept(clip));
    }
    counters.audio_cache_misses.fetch_add(1, Ordering::Relaxed);
    let audio = encode_clip(&bundle.encoders, samples)?;
    let lal = bundle.model.clip_lal(&audio)?;
    let clip = Arc::new(CachedClip { audio, lal });
    cache.insert(key, clip.clone());
    Ok(Clip::Kept(clip))
}

/// Generates the answers of `live` in one batch and sends them; on an error the requests get
/// nothing yet, unless there is one (it gets the error), and the error is returned.
fn generate_and_send(
    bundle: &Bundle,
    live: &[ChatJob],
    examples: &[Example],
    lal: &[Option<&ClipLal>],
    counters: &Counters,
) -> Result<(), ()> {
    let params: Vec<GenerationParams> = live.iter().map(|j| j.params.clone()).collect();
    let result = generate_batch_cached(
        &bundle.model,
        &bundle.tokenizer,
        examples,
        lal,
        &params,
        |i, piece| {
            let events = &live[i].events;
            if !piece.is_empty() {
                let _ = events.send(Event::Text(piece.to_string()));
            }
            !events.is_closed()
        },
    );
    match result {
        Ok(generations) => {
            for (job, g) in live.iter().zip(generations) {
                if g.finish_reason == FinishReason::Cancelled {
                    counters.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                let _ = job.events.send(Event::Done {
                    finish: g.finish_reason,
                    prompt_tokens: g.prompt_tokens,
                    completion_tokens: g.tokens.len(),
                });
            }
            Ok(())
        }
        Err(e) => {
            if let [job] = live {
                let _ = job.events.send(Event::Failed(e.to_string()));
            }
            Err(())
        }
    }
}
