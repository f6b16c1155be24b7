//! What the server counts, and `/metrics` in the Prometheus text format (version 0.0.4): requests
//! by route and status, chats by outcome, queue depth, the running batch, cache hits and
//! misses, time to first token and per-token latency histograms, and each thread's busy
//! seconds. Everything is an atomic, updated where it happens; rendering reads them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A Prometheus histogram of seconds with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in seconds (`+Inf` is implied).
    bounds: &'static [f64],
    /// Observations at or under each bound (not cumulative; summed when rendered).
    counts: Vec<AtomicU64>,
    /// Observations past the last bound.
    over: AtomicU64,
    /// Sum of the observations in microseconds.
    sum_micros: AtomicU64,
}

/// Buckets for time to first token and whole requests (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets for the time per output token (seconds).
const TOKEN_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            over: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        match self.bounds.iter().position(|&b| seconds <= b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.over.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = cumulative + self.over.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// How a chat request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered in full (stopped by itself, a stop string or its token limit).
    Answered,
    /// Its client went away first.
    Cancelled,
    /// The server failed it (500).
    Failed,
    /// It could not be served as asked (400 after encoding: past the model's context).
    Refused,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Answered,
        Outcome::Cancelled,
        Outcome::Failed,
        Outcome::Refused,
    ];

    fn name(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

/// The server's counters, shared by the handlers and the threads.
#[derive(Debug)]
pub struct Counters {
    /// Chat requests that reached the model threads, by [`Outcome`] (in `Outcome::ALL` order).
    chats: [AtomicU64; 4],
    /// HTTP responses by route and status code.
    responses: Mutex<std::collections::BTreeMap<(String, u16), u64>>,
    /// Decoding steps run (each over the whole running batch).
    pub decode_steps: AtomicUsize,
    /// Rows those steps decoded (the running batch's size, summed over steps).
    pub decoded_rows: AtomicUsize,
    /// Tokens generated (answered, cancelled or failed).
    pub generated_tokens: AtomicUsize,
    /// Transcriptions done.
    pub transcriptions: AtomicUsize,
    /// 30 s windows transcribed.
    pub transcribed_windows: AtomicUsize,
    /// Transcriptions whose client went away before they ended.
    pub transcriptions_cancelled: AtomicUsize,
    /// Requests refused because a queue was full.
    pub refused: AtomicUsize,
    /// Panics caught (their requests got 500; the thread carried on).
    pub panics: AtomicUsize,
    /// Set when the model thread has stopped (shutdown, or a failure it could not survive).
    pub stopped: AtomicBool,
    /// Clips found in the audio cache (encoder and LAL prefix skipped).
    pub audio_cache_hits: AtomicUsize,
    /// Clips encoded (and kept, when the cache is on).
    pub audio_cache_misses: AtomicUsize,
    /// Encoder batches run (clips of equal length from the requests waiting together).
    pub encoder_batches: AtomicUsize,
    /// Prompts found whole in the audio cache (the same question about the same clip).
    pub prompt_cache_hits: AtomicUsize,
    /// Prompt rows taken from a kept prompt about the same clip instead of run.
    pub prompt_rows_reused: AtomicUsize,
    /// Prompt rows run through the LLM.
    pub prompt_rows_run: AtomicUsize,
    /// Realtime windows encoded as their audio arrived.
    pub realtime_windows: AtomicUsize,
    /// Realtime sessions opened.
    pub realtime_sessions_total: AtomicUsize,
    /// Realtime sessions open now.
    pub realtime_sessions: AtomicUsize,
    /// Chats (and realtime windows) waiting for the encoder thread.
    pub queued_chats: AtomicUsize,
    /// Chats encoded and waiting for the model thread.
    pub ready_chats: AtomicUsize,
    /// Transcriptions waiting or running.
    pub queued_transcriptions: AtomicUsize,
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Connections refused because `--max-connections` were open.
    pub connections_refused: AtomicU64,
    /// Bytes of request bodies held now (see [`crate::Limits::upload_budget_bytes`]).
    pub upload_bytes: AtomicU64,
    /// Seconds of audio being decoded now, in milliseconds.
    pub decoding_millis: AtomicU64,
    /// Microseconds the encoder thread spent preparing chats.
    pub encode_micros: AtomicU64,
    /// Microseconds the model thread spent admitting requests (their prefill).
    pub prefill_micros: AtomicU64,
    /// Microseconds the model thread spent in decoding steps.
    pub decode_micros: AtomicU64,
    /// Microseconds the transcription thread spent transcribing.
    pub transcribe_micros: AtomicU64,
    /// From a request's arrival to its first token.
    pub time_to_first_token: Histogram,
    /// Per request, the time between its tokens after the first.
    pub time_per_output_token: Histogram,
    /// From a request's arrival to its last token.
    pub request_seconds: Histogram,
    /// When the server started.
    started: Instant,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            chats: Default::default(),
            responses: Default::default(),
            decode_steps: Default::default(),
            decoded_rows: Default::default(),
            generated_tokens: Default::default(),
            transcriptions: Default::default(),
            transcribed_windows: Default::default(),
            transcriptions_cancelled: Default::default(),
            refused: Default::default(),
            panics: Default::default(),
            stopped: Default::default(),
            audio_cache_hits: Default::default(),
            audio_cache_misses: Default::default(),
            encoder_batches: Default::default(),
            prompt_cache_hits: Default::default(),
            prompt_rows_reused: Default::default(),
            prompt_rows_run: Default::default(),
            realtime_windows: Default::default(),
            realtime_sessions_total: Default::default(),
            realtime_sessions: Default::default(),
            queued_chats: Default::default(),
            ready_chats: Default::default(),
            queued_transcriptions: Default::default(),
            running: Default::default(),
            connections: Default::default(),
            connections_refused: Default::default(),
            upload_bytes: Default::default(),
            decoding_millis: Default::default(),
            encode_micros: Default::default(),
            prefill_micros: Default::default(),
            decode_micros: Default::default(),
            transcribe_micros: Default::default(),
            time_to_first_token: Histogram::new(LATENCY_BUCKETS),
            time_per_output_token: Histogram::new(TOKEN_BUCKETS),
            request_seconds: Histogram::new(LATENCY_BUCKETS),
            started: Instant::now(),
        }
    }
}

impl Counters {
    /// Adds the time since `start` to `micros` (a thread's busy time).
    pub fn spent(micros: &AtomicU64, start: Instant) {
        micros.fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a chat that ended with `outcome`.
    pub fn chat_ended(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.chats[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Chats that ended with `outcome` so far.
    pub fn chats(&self, outcome: Outcome) -> u64 {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.chats[i].load(Ordering::Relaxed)
    }

    /// Counts a response on `route` with `status`.
    pub fn responded(&self, route: &str, status: u16) {
        let mut responses = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        *responses.entry((route.to_string(), status)).or_default() += 1;
    }

    /// Responses on `route` with `status` so far.
    pub fn responses(&self, route: &str, status: u16) -> u64 {
        let responses = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        responses
            .get(&(route.to_string(), status))
            .copied()
            .unwrap_or(0)
    }

    /// Records a panic caught on one of the threads (the thread goes on).
    pub fn panicked(&self, message: &str) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!("caught a panic (the server goes on): {message}");
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self, model: &str) -> String {
        let mut out = String::new();
        let load = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
        let seconds = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: f64| vec![(String::new(), v)];
        metric(
            "pal_up",
            "gauge",
            "1 while the model thread runs, 0 once it has stopped.",
            &one(if self.stopped.load(Ordering::Relaxed) {
                0.0
            } else {
                1.0
            }),
        );
        metric(
            "pal_model_info",
            "gauge",
            "The served model's name.",
            &[(format!("{{model=\"{}\"}}", escape(model)), 1.0)],
        );
        metric(
            "pal_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            &one(self.started.elapsed().as_secs_f64()),
        );
        let responses: Vec<(String, f64)> = self
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((route, status), n)| {
                let labels = format!("{{route=\"{}\",status=\"{status}\"}}", escape(route));
                (labels, *n as f64)
            })
            .collect();
        metric(
            "pal_http_responses_total",
            "counter",
            "HTTP responses by route and status code.",
            &responses,
        );
        let chats: Vec<(String, f64)> = Outcome::ALL
            .iter()
            .map(|o| {
                let labels = format!("{{outcome=\"{}\"}}", o.name());
                (labels, self.chats(*o) as f64)
            })
            .collect();
        metric(
            "pal_chat_requests_total",
            "counter",
            "Chat requests that reached the model, by how they ended.",
            &chats,
        );
        let counters: [(&str, &str, u64); 17] = [
            (
                "pal_realtime_windows_total",
                "Realtime audio windows encoded as they arrived.",
                load(&self.realtime_windows),
            ),
            (
                "pal_realtime_sessions_total",
                "Realtime sessions opened.",
                load(&self.realtime_sessions_total),
            ),
            (
                "pal_transcribed_windows_total",
                "30 s windows transcribed.",
                load(&self.transcribed_windows),
            ),
            (
                "pal_transcriptions_total",
                "Transcriptions done.",
                load(&self.transcriptions),
            ),
            (
                "pal_transcriptions_cancelled_total",
                "Transcriptions stopped because their client went away.",
                load(&self.transcriptions_cancelled),
            ),
            (
                "pal_queue_full_total",
                "Requests refused with 503 because a queue was full.",
                load(&self.refused),
            ),
            (
                "pal_panics_total",
                "Panics caught; their requests got 500 and the thread went on.",
                load(&self.panics),
            ),
            (
                "pal_decode_steps_total",
                "Decoding steps over the running batch.",
                load(&self.decode_steps),
            ),
            (
                "pal_decoded_rows_total",
                "Rows those steps decoded (the running batch, summed).",
                load(&self.decoded_rows),
            ),
            (
                "pal_audio_cache_hits_total",
                "Clips found in the audio cache.",
                load(&self.audio_cache_hits),
            ),
            (
                "pal_audio_cache_misses_total",
                "Clips encoded.",
                load(&self.audio_cache_misses),
            ),
            (
                "pal_encoder_batches_total",
                "Encoder batches (clips of equal length together).",
                load(&self.encoder_batches),
            ),
            (
                "pal_prompt_cache_hits_total",
                "Prompts found whole with their clip: no prefill.",
                load(&self.prompt_cache_hits),
            ),
            (
                "pal_prompt_rows_reused_total",
                "Prompt rows taken from a kept prompt.",
                load(&self.prompt_rows_reused),
            ),
            (
                "pal_prompt_rows_run_total",
                "Prompt rows run through the LLM.",
                load(&self.prompt_rows_run),
            ),
            (
                "pal_connections_refused_total",
                "Connections closed at once because --max-connections were open.",
                self.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "pal_generated_tokens_total",
                "Tokens generated.",
                load(&self.generated_tokens),
            ),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, &one(value as f64));
        }
        let gauges: [(&str, &str, f64); 8] = [
            (
                "pal_realtime_sessions",
                "Realtime sessions open.",
                load(&self.realtime_sessions) as f64,
            ),
            (
                "pal_queued_chats",
                "Chats and realtime windows waiting for the encoder thread.",
                load(&self.queued_chats) as f64,
            ),
            (
                "pal_ready_chats",
                "Chats encoded and waiting for the model thread.",
                load(&self.ready_chats) as f64,
            ),
            (
                "pal_queued_transcriptions",
                "Transcriptions waiting or running.",
                load(&self.queued_transcriptions) as f64,
            ),
            (
                "pal_running_sequences",
                "Sequences in the running batch.",
                load(&self.running) as f64,
            ),
            (
                "pal_open_connections",
                "Open HTTP connections.",
                load(&self.connections) as f64,
            ),
            (
                "pal_upload_bytes",
                "Bytes of request bodies held now.",
                self.upload_bytes.load(Ordering::Relaxed) as f64,
            ),
            (
                "pal_decoding_audio_seconds",
                "Seconds of audio being decoded now.",
                self.decoding_millis.load(Ordering::Relaxed) as f64 / 1e3,
            ),
        ];
        for (name, help, value) in gauges {
            metric(name, "gauge", help, &one(value));
        }
        let busy: Vec<(String, f64)> = [
            ("encode", &self.encode_micros),
            ("prefill", &self.prefill_micros),
            ("decode", &self.decode_micros),
            ("transcribe", &self.transcribe_micros),
        ]
        .into_iter()
        .map(|(stage, micros)| (format!("{{stage=\"{stage}\"}}"), seconds(micros)))
        .collect();
        metric(
            "pal_busy_seconds_total",
            "counter",
            "Seconds each stage's thread has been busy: encoder thread (encode), model thread (prefill, decode), transcription thread.",
            &busy,
        );
        self.time_to_first_token.render(
            &mut out,
            "pal_time_to_first_token_seconds",
            "From a chat request's arrival to its first token.",
        );
        self.time_per_output_token.render(
            &mut out,
            "pal_time_per_output_token_seconds",
            "Per chat request, the mean time between its tokens after the first.",
        );
        self.request_seconds.render(
            &mut out,
            "pal_request_seconds",
            "From a chat request's arrival to its last token.",
        );
        out
    }
}

/// A label value with `\`, `"` and line breaks escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let counters = Counters::default();
        counters
            .time_to_first_token
            .observe(Duration::from_millis(30));
        counters
            .time_to_first_token
            .observe(Duration::from_millis(700));
        counters
            .time_to_first_token
            .observe(Duration::from_secs(500));
        counters.responded("/v1/chat/completions", 200);
        counters.chat_ended(Outcome::Cancelled);
        let text = counters.render("m\"odel");
        assert!(text.contains("pal_time_to_first_token_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("pal_time_to_first_token_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("pal_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("pal_time_to_first_token_seconds_count 3\n"));
        assert!(text.contains("pal_time_to_first_token_seconds_sum 500.73\n"));
        assert!(text.contains(
            "pal_http_responses_total{route=\"/v1/chat/completions\",status=\"200\"} 1\n"
        ));
        assert!(text.contains("pal_chat_requests_total{outcome=\"cancelled\"} 1\n"));
        assert!(text.contains("pal_model_info{model=\"m\\\"odel\"} 1\n"));
        // Every sample line is `name{labels} number`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
