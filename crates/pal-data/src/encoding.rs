//! Encoding many clips as fast as the machine allows: worker threads read, decode and resample
//! the audio while the calling thread runs the frozen encoders on batches of clips of similar
//! length; results come back in input order.
//!
//! Batches are formed inside fixed windows of consecutive inputs (window `w` holds inputs
//! `w * window ..`), sorted by length and cut by a clip count and a padded-audio budget, so a
//! clip's batch, and therefore its output bits, depend only on its window: a run started in the
//! middle (a resumed `pal encode`) gives the same outputs as one that never stopped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use candle_core::Tensor;
use pal_models::encoders::{batch_or_each, encode_clips, AudioEncoder};

/// How clips are decoded and batched.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Threads that read and decode audio (the encoders use the machine's compute threads).
    pub decode_threads: usize,
    /// Most clips in one encoder batch.
    pub batch_clips: usize,
    /// Most padded audio per batch, in seconds (clips x longest clip): bounds activation memory.
    pub batch_seconds: f64,
    /// Inputs sorted together by length before batching.
    pub window: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            decode_threads: std::thread::available_parallelism()
                .map(|n| n.get().saturating_sub(1).max(1))
                .unwrap_or(1),
            batch_clips: 64,
            batch_seconds: 120.0,
            window: 256,
        }
    }
}

/// One encoded clip: its duration and one `(tokens, dim)` tensor per encoder.
#[derive(Debug, Clone)]
pub struct EncodedClip {
    /// Duration in seconds.
    pub seconds: f64,
    /// Encoder outputs, in encoder order.
    pub audio: Vec<Tensor>,
}

/// Decodes a clip to 16 kHz mono, with an error that names the file.
pub fn decode_clip(path: &std::path::Path) -> Result<Vec<f32>, String> {
    pal_audio::load_audio(path)
        .and_then(|a| a.to_16k(&path.display().to_string()))
        .map(|a| a.samples)
        .map_err(|e| e.to_string())
}

/// A clip to encode: something the decode workers turn into 16 kHz mono samples.
pub trait ClipSource: Sync {
    /// The clip's samples at 16 kHz, or a message naming what could not be read.
    fn samples(&self) -> Result<Vec<f32>, String>;
}

impl<S: ClipSource + ?Sized> ClipSource for &S {
    fn samples(&self) -> Result<Vec<f32>, String> {
        (**self).samples()
    }
}

impl ClipSource for PathBuf {
    fn samples(&self) -> Result<Vec<f32>, String> {
        decode_clip(self)
    }
}

/// A clip given in memory: a file's bytes, or samples at some rate.
#[derive(Debug, Clone)]
pub enum AudioInput {
    /// A file on disk.
    File(PathBuf),
    /// An encoded file's bytes (wav, flac, ogg, mp3), named `origin` in errors.
    Encoded {
        /// The bytes.
        bytes: Vec<u8>,
        /// What to call it in errors.
        origin: String,
    },
    /// Mono samples at `rate` Hz.
    Samples {
        /// The samples.
        samples: Vec<f32>,
        /// Their rate.
        rate: u32,
        /// What to call it in errors.
        origin: String,
    },
}

impl ClipSource for AudioInput {
    fn samples(&self) -> Result<Vec<f32>, String> {
        match self {
            Self::File(path) => decode_clip(path),
            Self::Encoded { bytes, origin } => pal_audio::decode_bytes(bytes.clone(), None, origin)
                .and_then(|a| a.to_16k(origin))
                .map(|a| a.samples)
                .map_err(|e| e.to_string()),
            Self::Samples {
                samples,
                rate,
                origin,
            } => pal_audio::resample(samples, *rate, pal_audio::SAMPLE_RATE, origin)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Encodes the clips `files[start..]` with `encoders` and hands each result to `each` in input
/// order (`Err` with a message for a clip that could not be read or encoded). Stops at the first
/// error `each` returns.
pub fn encode_in_order<S, E, F, X>(
    files: &[S],
    start: usize,
    encoders: &[E],
    options: &EncodeOptions,
    mut each: F,
) -> Result<(), X>
where
    S: ClipSource,
    E: AudioEncoder,
    F: FnMut(usize, Result<EncodedClip, String>) -> Result<(), X>,
{
    let window = options.window.max(1);
    let first = start / window * window;
    if first >= files.len() {
        return Ok(());
    }
    let next = AtomicUsize::new(first);
    let stop = AtomicBool::new(false);
    let threads = options.decode_threads.max(1);
    std::thread::scope(|scope| {
        let (send, receive) = mpsc::sync_channel::<(usize, Result<Vec<f32>, String>)>(window * 2);
        for _ in 0..threads {
            let send = send.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= files.len() || stop.load(Ordering::Relaxed) {
                    break;
                }
                if send.send((i, files[i].samples())).is_err() {
                    break;
                }
            });
        }
        drop(send);
        let mut decoded: BTreeMap<usize, Result<Vec<f32>, String>> = BTreeMap::new();
        let result = (|| {
            for begin in (first..files.len()).step_by(window) {
                let end = (begin + window).min(files.len());
                while (begin..end).any(|i| !decoded.contains_key(&i)) {
                    let (i, clip) = receive.recv().expect("decode workers run until the end");
                    decoded.insert(i, clip);
                }
                let clips: Vec<(usize, Result<Vec<f32>, String>)> = (begin..end)
                    .map(|i| (i, decoded.remove(&i).expect("received")))
                    .collect();
                for (i, outcome) in encode_window(clips, encoders, options) {
                    if i >= start {
                        each(i, outcome)?;
                    }
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        drop(receive);
        result
    })
}

/// Encodes one window's decoded clips in length-sorted batches; returns outcomes in input order.
fn encode_window<E: AudioEncoder>(
    clips: Vec<(usize, Result<Vec<f32>, String>)>,
    encoders: &[E],
    options: &EncodeOptions,
) -> Vec<(usize, Result<EncodedClip, String>)> {
    let mut outcomes: BTreeMap<usize, Result<EncodedClip, String>> = BTreeMap::new();
    let mut good: Vec<(usize, Vec<f32>)> = vec![];
    for (i, clip) in clips {
        match clip {
            Ok(samples) if samples.is_empty() => {
                outcomes.insert(i, Err("the clip has no samples".into()));
            }
            Ok(samples) => good.push((i, samples)),
            Err(e) => {
                outcomes.insert(i, Err(e));
            }
        }
    }
    good.sort_by_key(|(i, s)| (s.len(), *i));
    let budget = options.batch_seconds * 16000.0;
    let mut rest = good.as_slice();
    while !rest.is_empty() {
        // Sorted ascending: the last clip taken is the longest of the batch.
        let mut take = 1;
        while take < rest.len()
            && take < options.batch_clips.max(1)
            && ((take + 1) * rest[take].1.len()) as f64 <= budget
        {
            take += 1;
        }
        let (batch, tail) = rest.split_at(take);
        rest = tail;
        let samples: Vec<&[f32]> = batch.iter().map(|(_, s)| s.as_slice()).collect();
        // One bad clip (too long, say) must not fail its neighbours.
        let encoded = batch_or_each(&samples, |clips| {
            encode_clips(encoders, clips).map_err(|e| e.to_string())
        });
        for ((i, s), audio) in batch.iter().zip(encoded) {
            let seconds = s.len() as f64 / 16000.0;
            outcomes.insert(*i, audio.map(|audio| EncodedClip { seconds, audio }));
        }
    }
    outcomes.into_iter().collect()
}

/// Per clip of a record, one `(tokens, dim)` tensor per encoder.
pub type RecordClips = Vec<Vec<Tensor>>;

/// The clips of each record encoded ([`encode_in_order`]), every distinct file once however
/// many records list it. Per record: its clips' encoder outputs in its order, or the error of
/// its first clip that failed (naming the file where the record has several). Unless
/// `keep_going`, the first failure stops the work: `Err((record, message))`.
pub fn encode_records<E: AudioEncoder>(
    records: &[&crate::Record],
    encoders: &[E],
    options: &EncodeOptions,
    keep_going: bool,
) -> Result<Vec<Result<RecordClips, String>>, (usize, String)> {
    let mut files: Vec<PathBuf> = vec![];
    let mut index: std::collections::HashMap<&std::path::Path, usize> = Default::default();
    // The first record of each file (to name it when the file fails).
    let mut first_record = vec![];
    for (r, record) in records.iter().enumerate() {
        for clip in &record.clips {
            index.entry(clip.as_path()).or_insert_with(|| {
                files.push(clip.clone());
                first_record.push(r);
                files.len() - 1
            });
        }
    }
    let mut encoded: Vec<Option<Result<Vec<Tensor>, String>>> = vec![None; files.len()];
    encode_in_order(&files, 0, encoders, options, |i, outcome| match outcome {
        Err(e) if !keep_going => Err((first_record[i], e)),
        outcome => {
            encoded[i] = Some(outcome.map(|clip| clip.audio));
            Ok(())
        }
    })?;
    Ok(records
        .iter()
        .map(|record| {
            record
                .clips
                .iter()
                .map(|clip| match encoded[index[clip.as_path()]].clone() {
                    Some(Ok(audio)) => Ok(audio),
                    Some(Err(e)) if record.clips.len() > 1 => {
                        Err(format!("{}: {e}", clip.display()))
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(format!("{}: not encoded", clip.display())),
                })
                .collect()
        })
        .collect())
}
