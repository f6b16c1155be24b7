//! The two threads behind the server. Requests wait in a bounded queue (a full queue is refused
//! at once: 503). The encoder thread takes them in order, encodes each clip and computes its LAL
//! keys/values (or finds them in the audio cache) and checks the request against the model's
//! real position limit; the model thread admits ready requests between decoding steps, prefills
//! each (from the prompt kept with its clip that shares the most with it, when the cache is on)
//! and runs them with continuous batching ([`pal_infer::continuous`]): a request joins the
//! running batch as soon as it is prefilled, and leaves it as soon as it ends or its client goes
//! away. So encoding never stalls decoding steps, and a finished answer never costs another
//! step. The audio cache is shared: the encoder thread keeps clips in it, the model thread the
//! prompts asked about them.
//!
//! Nothing one request does takes the others down: a request past the position limit is refused
//! before it joins; a step the model fails is retried one sequence at a time, so the request at
//! fault fails alone; a panic fails the requests of its step (or its encoding) with 500 and the
//! thread carries on (counted, and reported by `/health`).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use pal_infer::continuous::{prefill, prefill_reusing, Prefilled, Running};
use pal_infer::{FinishReason, Generation, GenerationParams};
use pal_models::audio_llm::{AudioLlm, Example};
use pal_models::encoders::whisper::{Whisper, WhisperTokenizer};
use pal_models::encoders::{batch_or_each, encode_clips, AudioEncoder};
use pal_models::text::Segment;
use pal_models::Tokenizer;
use tokio::sync::{mpsc, oneshot};

use crate::audio_cache::{AudioCache, CachedClip, ClipKey};

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
    /// Answer a conversation about one clip or several.
    Chat {
        /// The prompt, with the clips' places.
        segments: Vec<Segment>,
        /// The clips in order, 16 kHz mono.
        clips: Vec<Vec<f32>>,
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
    /// Most requests decoding together (1 turns batching off).
    pub max_batch: usize,
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
    /// Decoding steps run (each over the whole running batch).
    pub decode_steps: AtomicUsize,
    /// Rows those steps decoded (the running batch's size, summed over steps).
    pub decoded_rows: AtomicUsize,
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
    /// Encoder batches run (clips of equal length from the requests waiting together).
    pub encoder_batches: AtomicUsize,
    /// Prompts found whole in the audio cache (the same question about the same clip): no
    /// prefill at all.
    pub prompt_cache_hits: AtomicUsize,
    /// Prompt rows taken from a kept prompt about the same clip instead of run.
    pub prompt_rows_reused: AtomicUsize,
    /// Prompt rows run through the LLM.
    pub prompt_rows_run: AtomicUsize,
    /// Microseconds the encoder thread spent preparing chats (cache lookups, encoding, the LAL
    /// prefix, the position check).
    pub encode_micros: AtomicU64,
    /// Microseconds the model thread spent admitting requests (their prefill).
    pub prefill_micros: AtomicU64,
    /// Microseconds the model thread spent in decoding steps.
    pub decode_micros: AtomicU64,
}

impl Counters {
    /// Adds the time since `start` to `micros`: where the threads' time goes, for `/health`.
    fn spent(micros: &AtomicU64, start: std::time::Instant) {
        micros.fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
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

/// A queue of `capacity` jobs and its receiving end (what [`start_on`] hands the encoder thread).
pub fn queue(capacity: usize) -> (Queue, Receiver<Job>) {
    let (sender, receiver) = sync_channel(capacity.max(1));
    let counters = Arc::new(Counters::default());
    (Queue { sender, counters }, receiver)
}

/// Starts the encoder and model threads. They end when every [`Queue`] clone is dropped and
/// the queue is drained.
pub fn start(bundle: Arc<Bundle>, batching: Batching) -> (Queue, std::thread::JoinHandle<()>) {
    let (queue, receiver) = queue(batching.queue_capacity);
    let handle = start_on(bundle, batching, &queue, receiver);
    (queue, handle)
}

/// [`start`] on a queue made by [`queue`] (which may already hold jobs: the encoder thread then
/// takes them together, as it takes requests that arrive while it encodes).
pub fn start_on(
    bundle: Arc<Bundle>,
    batching: Batching,
    queue: &Queue,
    receiver: Receiver<Job>,
) -> std::thread::JoinHandle<()> {
    // The encoder thread keeps clips in it, the model thread the prompts asked about them.
    let cache = Arc::new(Mutex::new(AudioCache::new(batching.audio_cache_bytes)));
    let model_cache = cache.clone();
    // Encoded requests wait here for the model thread; a small buffer keeps the encoder at most
    // a batch ahead.
    let (ready_sender, ready) = sync_channel::<Ready>(batching.max_batch.max(1));
    let encoder_bundle = bundle.clone();
    let encoder_counters = queue.counters.clone();
    let encoder = std::thread::Builder::new()
        .name("pal-encoder".into())
        .spawn(move || {
            encode_requests(
                &encoder_bundle,
                &receiver,
                &ready_sender,
                batching,
                &cache,
                &encoder_counters,
            )
        })
        .expect("spawn the encoder thread");
    let model_counters = queue.counters.clone();
    std::thread::Builder::new()
        .name("pal-model".into())
        .spawn(move || {
            generate_requests(&bundle, &ready, batching, &model_cache, &model_counters);
            let _ = encoder.join();
            model_counters.stopped.store(true, Ordering::Relaxed);
        })
        .expect("spawn the model thread")
}

/// A chat request whose clip is encoded and which fits the model: ready to join the batch.
struct Ready {
    example: Example,
    /// A one-clip request's clip with its LAL keys/values (computed on the encoder thread).
    clip: Option<Arc<CachedClip>>,
    /// Its key when the audio cache keeps the clip (and the prompts asked about it).
    clip_key: Option<ClipKey>,
    params: GenerationParams,
    events: mpsc::UnboundedSender<Event>,
}

/// A chat the encoder thread has taken from the queue.
struct Chat {
    segments: Vec<Segment>,
    clips: Vec<Vec<f32>>,
    params: GenerationParams,
    events: mpsc::UnboundedSender<Event>,
}

/// The encoder thread: takes what waits in the queue (up to a batch), runs transcriptions, and
/// gets the chats' clips together ([`gather_clips`]: equal-length clips encoded in one batch),
/// then checks each chat and hands it to the model thread; a panic fails the request it
/// happened on.
fn encode_requests(
    bundle: &Bundle,
    receiver: &Receiver<Job>,
    ready: &SyncSender<Ready>,
    batching: Batching,
    cache: &Mutex<AudioCache>,
    counters: &Counters,
) {
    while let Ok(job) = receiver.recv() {
        let mut jobs = vec![job];
        while jobs.len() < batching.max_batch.max(1) {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut chats = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Transcribe { samples, reply } => {
                    let result =
                        isolated(counters, || transcribe(bundle, &samples)).and_then(|r| r);
                    counters.transcriptions.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(result);
                }
                Job::Chat {
                    segments,
                    clips,
                    params,
                    events,
                } => {
                    counters.chats.fetch_add(1, Ordering::Relaxed);
                    if events.is_closed() {
                        counters.cancelled.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    chats.push(Chat {
                        segments,
                        clips,
                        params,
                        events,
                    });
                }
            }
        }
        if chats.is_empty() {
            continue;
        }
        let start = std::time::Instant::now();
        let clip_sets: Vec<&[Vec<f32>]> = chats.iter().map(|c| c.clips.as_slice()).collect();
        let gathered = gather_clips(bundle, cache, &clip_sets, counters);
        let mut prepared = Vec::with_capacity(chats.len());
        for (chat, clips) in chats.into_iter().zip(gathered) {
            let outcome = clips.map_err(Event::Failed).and_then(|clips| {
                isolated(counters, || {
                    prepare(bundle, chat.segments, clips, &chat.params, counters)
                })
                .map_err(Event::Failed)
                .and_then(|p| p)
            });
            prepared.push((outcome, chat.params, chat.events));
        }
        Counters::spent(&counters.encode_micros, start);
        for (outcome, params, events) in prepared {
            match outcome {
                Ok((example, clip, clip_key)) => {
                    let request = Ready {
                        example,
                        clip,
                        clip_key,
                        params,
                        events,
                    };
                    if ready.send(request).is_err() {
                        return;
                    }
                }
                Err(event) => {
                    let _ = events.send(event);
                }
            }
        }
    }
}

/// A chat's example, its clip with its LAL keys/values (one-clip chats), and the clip's key in
/// the audio cache (when it keeps it).
type Prepared = (Example, Option<Arc<CachedClip>>, Option<ClipKey>);

/// The request's example from its clips (kept or just encoded), once it is known to fit the
/// model's positions; else the event that tells the client why not. A one-clip request also gets
/// its clip's LAL keys/values (from the cache, or computed here, off the model thread) and, when
/// the cache keeps the clip, its key; a later clip's keys would sit at other positions, so a
/// request with several clips has them computed in its prefill.
fn prepare(
    bundle: &Bundle,
    segments: Vec<Segment>,
    clips: Vec<Clip>,
    params: &GenerationParams,
    counters: &Counters,
) -> Result<Prepared, Event> {
    let failed = |e: pal_models::ModelError| Event::Failed(format!("encoding the audio: {e}"));
    let count = clips.len();
    let mut audio = Vec::with_capacity(count);
    let mut clip = None;
    for c in clips {
        match c {
            Clip::Kept(key, c) => {
                audio.push(c.audio.clone());
                clip = Some((c, Some(key)));
            }
            Clip::Encoded(outputs) => audio.push(outputs),
        }
    }
    let (clip, clip_key) = match (count, clip) {
        (1, Some((c, key))) => (Some(c), key),
        (1, None) => {
            let lal = bundle.model.clip_lal(&audio[0]).map_err(failed)?;
            let c = CachedClip {
                audio: audio[0].clone(),
                lal,
            };
            (Some(Arc::new(c)), None)
        }
        _ => (None, None),
    };
    let example = Example {
        segments,
        clips: audio,
    };
    let positions = bundle.model.llm.rope.len();
    let needed = bundle
        .model
        .prompt_positions(&example)
        .map_err(|e| Event::Failed(e.to_string()))?
        + params.max_tokens;
    if needed > positions {
        counters.too_long.fetch_add(1, Ordering::Relaxed);
        return Err(Event::Refused {
            message: format!(
                "the audio, the prompt and max_tokens take {needed} positions; the model has {positions} (send a shorter clip or prompt, or fewer max_tokens)"
            ),
            code: "context_length_exceeded",
        });
    }
    Ok((example, clip, clip_key))
}

/// The model thread: admits ready requests between steps (waiting only when nothing runs) and
/// decodes the running batch one step at a time.
fn generate_requests(
    bundle: &Bundle,
    ready: &Receiver<Ready>,
    batching: Batching,
    cache: &Mutex<AudioCache>,
    counters: &Counters,
) {
    let mut running: Running<mpsc::UnboundedSender<Event>> = Running::default();
    loop {
        let mut arrivals = vec![];
        if running.is_empty() {
            match ready.recv() {
                Ok(request) => arrivals.push(request),
                Err(_) => return,
            }
        }
        while running.len() + arrivals.len() < batching.max_batch.max(1) {
            match ready.try_recv() {
                Ok(request) => arrivals.push(request),
                Err(_) => break,
            }
        }
        if !arrivals.is_empty() {
            let start = std::time::Instant::now();
            admit(bundle, &mut running, arrivals, cache, counters);
            Counters::spent(&counters.prefill_micros, start);
        }
        if running.is_empty() {
            continue;
        }
        counters.decode_steps.fetch_add(1, Ordering::Relaxed);
        counters
            .decoded_rows
            .fetch_add(running.len(), Ordering::Relaxed);
        let start = std::time::Instant::now();
        let outcome = isolated(counters, || {
            running
                .step(&bundle.model.llm, &bundle.tokenizer, stream)
                .map_err(|e| e.to_string())
        });
        Counters::spent(&counters.decode_micros, start);
        match outcome {
            Ok(Ok(outcome)) => {
                for (events, generation) in outcome.ended {
                    finish(&events, generation, counters);
                }
                for (events, error) in outcome.failed {
                    let _ = events.send(Event::Failed(error));
                }
            }
            Ok(Err(error)) | Err(error) => {
                for events in running.drain() {
                    let _ = events.send(Event::Failed(error.clone()));
                }
            }
        }
    }
}

/// Prefills the requests that arrived, one at a time, and adds each to the running batch. One
/// prompt at a time: pal's kernels are as fast per row on one prompt as on several, and a padded
/// batch would pad every prompt and LAL prefix to the longest (measured 5% slower on the load
/// test). A request the model fails on, or panics on, fails alone.
fn admit(
    bundle: &Bundle,
    running: &mut Running<mpsc::UnboundedSender<Event>>,
    arrivals: Vec<Ready>,
    cache: &Mutex<AudioCache>,
    counters: &Counters,
) {
    for request in arrivals {
        if request.events.is_closed() {
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let prefilled = isolated(counters, || {
            if let Some(fault) = &bundle.fault_injection {
                if (fault.0)(&request.example.segments) {
                    panic!("fault injected for a test");
                }
            }
            prefill_one(bundle, &request, cache, counters)
        });
        let joined = prefilled.and_then(|p| p).and_then(|p| {
            running
                .join(
                    request.events.clone(),
                    p,
                    request.params,
                    &bundle.tokenizer,
                    stream,
                )
                .map_err(|e| e.to_string())
        });
        match joined {
            Ok(Some((events, generation))) => finish(&events, generation, counters),
            Ok(None) => {}
            Err(error) => {
                let _ = request.events.send(Event::Failed(error));
            }
        }
    }
}

/// The prefill of one request: its LAL keys/values from its clip when it has them, and, when
/// the audio cache keeps the clip, starting from the prompt asked about it that shares the most
/// with this one (then kept in its turn).
fn prefill_one(
    bundle: &Bundle,
    request: &Ready,
    cache: &Mutex<AudioCache>,
    counters: &Counters,
) -> Result<Prefilled, String> {
    let lal = request.clip.as_deref().map(|c| &c.lal);
    let Some(key) = &request.clip_key else {
        let prefilled = prefill(&bundle.model, &request.example, lal).map_err(|e| e.to_string())?;
        counters
            .prompt_rows_run
            .fetch_add(prefilled.prompt_tokens(), Ordering::Relaxed);
        return Ok(prefilled);
    };
    let kept = locked(cache).prompts(key);
    let (prefilled, reused, prompt) =
        prefill_reusing(&bundle.model, &request.example, lal, &kept).map_err(|e| e.to_string())?;
    if reused.run == 0 {
        counters.prompt_cache_hits.fetch_add(1, Ordering::Relaxed);
    }
    counters
        .prompt_rows_reused
        .fetch_add(reused.rows, Ordering::Relaxed);
    counters
        .prompt_rows_run
        .fetch_add(reused.run, Ordering::Relaxed);
    locked(cache).keep_prompt(key, prompt);
    Ok(prefilled)
}

/// The audio cache, locked (a panic while it was held left nothing half-done that matters: at
/// worst a clip or prompt is missing).
fn locked(cache: &Mutex<AudioCache>) -> std::sync::MutexGuard<'_, AudioCache> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

/// Streams a piece of text; `false` (cancel) once the client has gone away.
fn stream(events: &mpsc::UnboundedSender<Event>, piece: &str) -> bool {
    if !piece.is_empty() {
        let _ = events.send(Event::Text(piece.to_string()));
    }
    !events.is_closed()
}

/// Tells the client its answer is complete.
fn finish(events: &mpsc::UnboundedSender<Event>, generation: Generation, counters: &Counters) {
    if generation.finish_reason == FinishReason::Cancelled {
        counters.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    let _ = events.send(Event::Done {
        finish: generation.finish_reason,
        prompt_tokens: generation.prompt_tokens,
        completion_tokens: generation.tokens.len(),
    });
}

/// Runs `f`, turning a panic into the message of a 500 (counted, and kept for `/health`): the
/// thread carries on.
fn isolated<T>(counters: &Counters, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
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
        format!("internal error while generating (the request was not at fault): {message}")
    })
}

fn transcribe(bundle: &Bundle, samples: &[f32]) -> Result<String, String> {
    let (model, tokenizer) = bundle
        .whisper
        .as_ref()
        .ok_or_else(|| "this model has no Whisper decoder".to_string())?;
    pal_infer::transcribe(model, tokenizer, samples).map_err(|e| e.to_string())
}

/// A request's clip: kept in the cache (under its key), or just encoded (the cache is off).
/// Cloning shares the tensors.
#[derive(Clone)]
enum Clip {
    Kept(ClipKey, Arc<CachedClip>),
    Encoded(Vec<Tensor>),
}

/// The clips of the chats taken together (`requests[i]`: chat `i`'s clips): each from the audio
/// cache when it holds it, else encoded, clips of equal length in one batch (no padding, so a
/// clip's outputs are the ones it gets alone, bit for bit); with the cache on, a clip asked
/// twice is encoded once and kept (with its LAL keys/values). A batch that fails is retried clip
/// by clip, so only the chats whose clip fails get an error.
fn gather_clips(
    bundle: &Bundle,
    cache: &Mutex<AudioCache>,
    requests: &[&[Vec<f32>]],
    counters: &Counters,
) -> Vec<Result<Vec<Clip>, String>> {
    let cached = locked(cache).enabled();
    // Each request's clips: kept in the cache, or a place in `unique`, the clips to encode.
    enum Source {
        Kept(Clip),
        Encoded(usize),
    }
    let mut sources: Vec<Vec<Source>> = Vec::with_capacity(requests.len());
    let mut unique: Vec<(&[f32], Option<ClipKey>)> = vec![];
    for clips in requests {
        let mut request = Vec::with_capacity(clips.len());
        for samples in clips.iter() {
            let key = cached.then(|| AudioCache::key(samples));
            let in_cache = key.and_then(|k| locked(cache).get(&k).map(|c| Clip::Kept(k, c)));
            // A clip another request taken together asks about too is encoded once.
            let taken_together = key.and_then(|k| unique.iter().position(|(_, u)| *u == Some(k)));
            let (source, counter) = match (in_cache, taken_together) {
                (Some(clip), _) => (Source::Kept(clip), &counters.audio_cache_hits),
                (None, Some(place)) => (Source::Encoded(place), &counters.audio_cache_hits),
                (None, None) => {
                    unique.push((samples.as_slice(), key));
                    let place = unique.len() - 1;
                    (Source::Encoded(place), &counters.audio_cache_misses)
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
            request.push(source);
        }
        sources.push(request);
    }
    let samples: Vec<&[f32]> = unique.iter().map(|(s, _)| *s).collect();
    let encoded = encode_equal_lengths(bundle, &samples, counters);
    // Kept in the cache with their LAL keys/values, when it is on.
    let done: Vec<Result<Clip, String>> = encoded
        .into_iter()
        .zip(&unique)
        .map(|(audio, (_, key))| {
            audio.and_then(|audio| match key {
                None => Ok(Clip::Encoded(audio)),
                Some(key) => {
                    let lal = isolated(counters, || bundle.model.clip_lal(&audio))?
                        .map_err(|e| e.to_string())?;
                    let clip = Arc::new(CachedClip { audio, lal });
                    locked(cache).insert(*key, clip.clone());
                    Ok(Clip::Kept(*key, clip))
                }
            })
        })
        .collect();
    sources
        .into_iter()
        .map(|request| {
            request
                .into_iter()
                .map(|source| match source {
                    Source::Kept(clip) => Ok(clip),
                    // A clip two requests share is kept (the cache is on): both get it.
                    Source::Encoded(place) => done[place]
                        .clone()
                        .map_err(|e| format!("encoding the audio: {e}")),
                })
                .collect()
        })
        .collect()
}

/// Each clip's encoder outputs, clips of equal length encoded together; a batch that fails or
/// panics is retried clip by clip.
fn encode_equal_lengths(
    bundle: &Bundle,
    clips: &[&[f32]],
    counters: &Counters,
) -> Vec<Result<Vec<Tensor>, String>> {
    let mut out: Vec<Option<Result<Vec<Tensor>, String>>> = vec![None; clips.len()];
    let mut by_length: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, c) in clips.iter().enumerate() {
        by_length.entry(c.len()).or_default().push(i);
    }
    for group in by_length.into_values() {
        let samples: Vec<&[f32]> = group.iter().map(|&i| clips[i]).collect();
        counters.encoder_batches.fetch_add(1, Ordering::Relaxed);
        let encoded = batch_or_each(&samples, |clips| {
            isolated(counters, || encode_clips(&bundle.encoders, clips))
                .and_then(|r| r.map_err(|e| e.to_string()))
        });
        for (&i, audio) in group.iter().zip(encoded) {
            out[i] = Some(audio);
        }
    }
    out.into_iter()
        .map(|o| o.expect("every clip is in a group"))
        .collect()
}
