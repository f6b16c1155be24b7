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
//! fault fails alone; a panic fails the requests of its step (or its encoding, prefill or first
//! token) with 500 and the thread carries on (counted in `/metrics`). Should the model thread
//! end anyway, `/health` says so (503) and every waiting client gets an error, never a silent
//! end. Transcriptions run on a thread of their own ([`crate::transcriber`]).

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pal_infer::continuous::{prefill, prefill_reusing, Prefilled, Running};
use pal_infer::{FinishReason, Generation, GenerationParams};
use pal_models::audio_llm::{Example, GrowingClip};
use pal_models::text::Segment;
use tokio::sync::{mpsc, oneshot};

use crate::audio_cache::{locked, AudioCache, CachedClip, ClipKey};
pub use crate::bundle::Bundle;
use crate::bundle::FaultPoint;
pub use crate::clips::GrowingRequest;
use crate::clips::{gather_clips, growing_clip, Clip};
use crate::metrics::{Counters, Outcome};
use crate::transcriber::{self, Transcription, Transcriptions};
use crate::work::isolated;
pub use crate::work::SubmitError;

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

/// A chat for the model threads.
pub struct Job {
    /// The prompt, with the clips' places.
    pub segments: Vec<Segment>,
    /// The clips in order, 16 kHz mono (none when `growing` gives the clip).
    pub clips: Vec<Vec<f32>>,
    /// The one clip, when it is a live session's ([`pal_models::audio_llm::GrowingClip`]).
    pub growing: Option<GrowingRequest>,
    /// How to generate.
    pub params: GenerationParams,
    /// Where the answer goes; closed when the client goes away.
    pub events: mpsc::UnboundedSender<Event>,
    /// When the request arrived (for time to first token).
    pub arrived: Instant,
}

/// A window of a growing clip to encode on the encoder thread, between the chats it takes.
pub struct WindowJob {
    /// The clip the window is appended to.
    pub clip: Arc<Mutex<GrowingClip>>,
    /// Where the window starts in the clip (refused unless the clip's windows end there).
    pub start: usize,
    /// The window, 16 kHz mono (at most the encoders' window).
    pub samples: Vec<f32>,
    /// Told when the window is encoded (or why it could not be).
    pub done: oneshot::Sender<Result<(), String>>,
}

/// Work for the encoder thread.
enum Work {
    Chat(Job),
    Window(WindowJob),
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

/// The sending side of the queues: chats for the encoder and model threads, transcriptions
/// for the transcription thread.
#[derive(Clone)]
pub struct Queue {
    sender: SyncSender<Work>,
    /// Where transcriptions go.
    pub transcriptions: Transcriptions,
    /// Shared counters.
    pub counters: Arc<Counters>,
}

impl Queue {
    /// Queues a chat without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.send(Work::Chat(job))
    }

    /// Queues a window of a growing clip, waiting for room in the queue (blocking: call it off
    /// the async threads). Audio that arrives faster than it is encoded waits here.
    pub fn submit_window_waiting(&self, job: WindowJob) -> Result<(), SubmitError> {
        self.counters.queued_chats.fetch_add(1, Ordering::Relaxed);
        self.sender.send(Work::Window(job)).map_err(|_| {
            self.counters.queued_chats.fetch_sub(1, Ordering::Relaxed);
            SubmitError::Stopped
        })
    }

    fn send(&self, work: Work) -> Result<(), SubmitError> {
        match self.sender.try_send(work) {
            Ok(()) => {
                self.counters.queued_chats.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Err(SubmitError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Queues a transcription without waiting.
    pub fn transcribe(&self, job: Transcription) -> Result<(), SubmitError> {
        self.transcriptions.submit(job)
    }
}

/// The receiving side of the chat queue, for [`start_on`]; the transcription thread, which
/// [`queue`] starts (it waits for jobs and ends when every [`Queue`] is dropped).
pub struct Receivers {
    chats: Receiver<Work>,
    transcriber: std::thread::JoinHandle<()>,
}

/// Queues of `capacity` jobs each, and what [`start_on`] hands the threads.
pub fn queue(bundle: Arc<Bundle>, capacity: usize) -> (Queue, Receivers) {
    let (sender, chats) = sync_channel(capacity.max(1));
    let counters = Arc::new(Counters::default());
    let (transcriptions, transcriber) = transcriber::start(bundle, capacity, counters.clone());
    let queue = Queue {
        sender,
        transcriptions,
        counters,
    };
    (queue, Receivers { chats, transcriber })
}

/// Starts the encoder, model and transcription threads. They end when every [`Queue`] clone is
/// dropped and the queues are drained; the handle ends with the last of them.
pub fn start(bundle: Arc<Bundle>, batching: Batching) -> (Queue, std::thread::JoinHandle<()>) {
    let (queue, receivers) = queue(bundle.clone(), batching.queue_capacity);
    let handle = start_on(bundle, batching, &queue, receivers);
    (queue, handle)
}

/// Marks the model thread stopped when dropped, however it ends (a return or a panic that got
/// past every isolation), so `/health` never says "ok" for a server that cannot answer.
struct StoppedOnDrop(Arc<Counters>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Relaxed);
    }
}

/// [`start`] on queues made by [`queue`] (which may already hold jobs: the encoder thread then
/// takes them together, as it takes requests that arrive while it encodes).
pub fn start_on(
    bundle: Arc<Bundle>,
    batching: Batching,
    queue: &Queue,
    receivers: Receivers,
) -> std::thread::JoinHandle<()> {
    let Receivers {
        chats: receiver,
        transcriber,
    } = receivers;
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
            let stopped = StoppedOnDrop(model_counters.clone());
            generate_requests(&bundle, &ready, batching, &model_cache, &model_counters);
            drop(stopped);
            // Whatever the encoder still hands over finds no model thread: its clients get an
            // error when their channel closes.
            drop(ready);
            let _ = encoder.join();
            let _ = transcriber.join();
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
    client: Client,
}

/// A chat's client, as the model thread knows it: where its events go, and when it arrived
/// and got its first token (for the latency histograms).
pub struct Client {
    events: mpsc::UnboundedSender<Event>,
    arrived: Instant,
    first_token: Cell<Option<Instant>>,
}

impl Client {
    fn new(events: mpsc::UnboundedSender<Event>, arrived: Instant) -> Self {
        Self {
            events,
            arrived,
            first_token: Cell::new(None),
        }
    }

    /// Tells the client its request failed or was refused.
    fn fail(&self, event: Event, counters: &Counters) {
        let outcome = match event {
            Event::Refused { .. } => Outcome::Refused,
            _ => Outcome::Failed,
        };
        counters.chat_ended(outcome);
        let _ = self.events.send(event);
    }
}

/// The encoder thread: takes the chats waiting in the queue (up to a batch) and gets their clips
/// together ([`gather_clips`]: equal-length clips encoded in one batch), then checks each chat
/// and hands it to the model thread; a panic fails the request it happened on.
fn encode_requests(
    bundle: &Bundle,
    receiver: &Receiver<Work>,
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
        counters
            .queued_chats
            .fetch_sub(jobs.len(), Ordering::Relaxed);
        // Windows first: a question taken with a window of its clip is asked after it.
        let mut chats = Vec::with_capacity(jobs.len());
        for work in jobs {
            match work {
                Work::Window(window) => {
                    let start = Instant::now();
                    let outcome = isolated(counters, || {
                        let mut clip = window.clip.lock().unwrap_or_else(|e| e.into_inner());
                        if clip.samples() != window.start {
                            return Err(format!(
                                "a window at sample {} after windows ending at {}",
                                window.start,
                                clip.samples()
                            ));
                        }
                        clip.push(&bundle.model, &bundle.encoders, &window.samples)
                            .map_err(|e| e.to_string())
                    })
                    .and_then(|r| r);
                    Counters::spent(&counters.encode_micros, start);
                    counters.realtime_windows.fetch_add(1, Ordering::Relaxed);
                    let _ = window.done.send(outcome);
                }
                Work::Chat(job) if job.events.is_closed() => {
                    counters.chat_ended(Outcome::Cancelled);
                }
                Work::Chat(job) => chats.push(job),
            }
        }
        if chats.is_empty() {
            continue;
        }
        let start = Instant::now();
        let clip_sets: Vec<&[Vec<f32>]> = chats.iter().map(|c| c.clips.as_slice()).collect();
        let mut gathered = gather_clips(bundle, cache, &clip_sets, counters);
        for (chat, clips) in chats.iter().zip(gathered.iter_mut()) {
            if let Some(growing) = &chat.growing {
                *clips = isolated(counters, || growing_clip(bundle, cache, growing))
                    .and_then(|r| r)
                    .map(|clip| vec![clip]);
            }
        }
        let mut prepared = Vec::with_capacity(chats.len());
        for (chat, clips) in chats.into_iter().zip(gathered) {
            let outcome = clips.map_err(Event::Failed).and_then(|clips| {
                isolated(counters, || {
                    prepare(bundle, chat.segments, clips, &chat.params)
                })
                .map_err(Event::Failed)
                .and_then(|p| p)
            });
            let client = Client::new(chat.events, chat.arrived);
            prepared.push((outcome, chat.params, client));
        }
        Counters::spent(&counters.encode_micros, start);
        for (outcome, params, client) in prepared {
            match outcome {
                Ok((example, clip, clip_key)) => {
                    let request = Ready {
                        example,
                        clip,
                        clip_key,
                        params,
                        client,
                    };
                    counters.ready_chats.fetch_add(1, Ordering::Relaxed);
                    if let Err(unsent) = ready.send(request) {
                        counters.ready_chats.fetch_sub(1, Ordering::Relaxed);
                        let message = "the model thread has stopped".to_string();
                        unsent.0.client.fail(Event::Failed(message), counters);
                        return;
                    }
                }
                Err(event) => client.fail(event, counters),
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
            Clip::Grown(c) => {
                audio.push(c.audio.clone());
                clip = Some((c, None));
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
    let mut running: Running<Client> = Running::default();
    loop {
        counters.running.store(running.len(), Ordering::Relaxed);
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
        counters
            .ready_chats
            .fetch_sub(arrivals.len(), Ordering::Relaxed);
        if let Some(fault) = &bundle.fault_injection {
            let struck = arrivals
                .iter()
                .any(|r| fault.strikes(FaultPoint::ModelThread, &r.example.segments));
            assert!(!struck, "fault injected on the model thread for a test");
        }
        if !arrivals.is_empty() {
            let start = Instant::now();
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
        let start = Instant::now();
        let outcome = isolated(counters, || {
            running
                .step(&bundle.model.llm, &bundle.tokenizer, stream)
                .map_err(|e| e.to_string())
        });
        Counters::spent(&counters.decode_micros, start);
        match outcome {
            Ok(Ok(outcome)) => {
                for (client, generation) in outcome.ended {
                    finish(&client, generation, counters);
                }
                for (client, error) in outcome.failed {
                    client.fail(Event::Failed(error), counters);
                }
            }
            // The sequences still in the batch fail with the step; any a panic took out of it
            // were dropped, and their clients' channels closed without an answer (an error to
            // them, never a complete-looking end).
            Ok(Err(error)) | Err(error) => {
                for client in running.drain() {
                    client.fail(Event::Failed(error.clone()), counters);
                }
            }
        }
    }
}

/// Prefills the requests that arrived, one at a time, and adds each to the running batch. One
/// prompt at a time: pal's kernels are as fast per row on one prompt as on several, and a padded
/// batch would pad every prompt and LAL prefix to the longest (measured 5% slower on the load
/// test). A request the model fails on, or panics on (in its prefill or its first token),
/// fails alone.
fn admit(
    bundle: &Bundle,
    running: &mut Running<Client>,
    arrivals: Vec<Ready>,
    cache: &Mutex<AudioCache>,
    counters: &Counters,
) {
    for request in arrivals {
        if request.client.events.is_closed() {
            counters.chat_ended(Outcome::Cancelled);
            continue;
        }
        let prefilled = isolated(counters, || {
            if let Some(fault) = &bundle.fault_injection {
                if fault.strikes(FaultPoint::Prefill, &request.example.segments) {
                    panic!("fault injected for a test");
                }
            }
            prefill_one(bundle, &request, cache, counters)
        })
        .and_then(|p| p);
        let events = request.client.events.clone();
        let joined = prefilled.and_then(|p| {
            isolated(counters, || {
                running
                    .join(request.client, p, request.params, &bundle.tokenizer, stream)
                    .map_err(|e| e.to_string())
            })
            .and_then(|r| r)
        });
        match joined {
            Ok(Some((client, generation))) => finish(&client, generation, counters),
            Ok(None) => {}
            Err(error) => {
                counters.chat_ended(Outcome::Failed);
                let _ = events.send(Event::Failed(error));
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

/// Streams a piece of text; `false` (cancel) once the client has gone away. The first call is
/// the first token's time.
fn stream(client: &Client, piece: &str) -> bool {
    if client.first_token.get().is_none() {
        client.first_token.set(Some(Instant::now()));
    }
    if !piece.is_empty() {
        let _ = client.events.send(Event::Text(piece.to_string()));
    }
    !client.events.is_closed()
}

/// Tells the client its answer is complete, and records its latencies.
fn finish(client: &Client, generation: Generation, counters: &Counters) {
    let now = Instant::now();
    let tokens = generation.tokens.len();
    counters
        .generated_tokens
        .fetch_add(tokens, Ordering::Relaxed);
    if generation.finish_reason == FinishReason::Cancelled {
        counters.chat_ended(Outcome::Cancelled);
    } else {
        counters.chat_ended(Outcome::Answered);
        counters.request_seconds.observe(now - client.arrived);
        if let Some(first) = client.first_token.get() {
            counters
                .time_to_first_token
                .observe(first.saturating_duration_since(client.arrived));
            if tokens > 1 {
                counters
                    .time_per_output_token
                    .observe((now - first) / (tokens as u32 - 1));
            }
        }
    }
    let _ = client.events.send(Event::Done {
        finish: generation.finish_reason,
        prompt_tokens: generation.prompt_tokens,
        completion_tokens: tokens,
    });
}
