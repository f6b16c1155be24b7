//! The clips of the chats the encoder thread takes: each from the audio cache when it keeps it,
//! else encoded (clips of equal length in one batch), or, for a live session's question, its
//! growing clip as it is now ([`growing_clip`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use pal_models::audio_llm::GrowingClip;
use pal_models::encoders::{batch_or_each, encode_clips};

use crate::audio_cache::{locked, AudioCache, CachedClip, ClipKey};
use crate::bundle::Bundle;
use crate::metrics::Counters;
use crate::work::isolated;

/// A question about a clip that grows as its audio arrives (a `/v1/realtime` session): its
/// windows encoded so far, the audio since (encoded when the question is taken), and the key the
/// audio cache keeps the whole under (with the prompts asked about it).
pub struct GrowingRequest {
    /// The clip's encoded windows.
    pub clip: Arc<Mutex<GrowingClip>>,
    /// Audio after the last window, 16 kHz mono.
    pub tail: Vec<f32>,
    /// Where the tail starts in the clip (the samples its windows cover).
    pub tail_start: usize,
    /// The session's clip as it is now.
    pub key: ClipKey,
}

/// A live session's clip as it is now (its windows and the tail since), kept in the audio cache
/// under the session's key so that the prompts asked about it are kept with it.
pub(crate) fn growing_clip(
    bundle: &Bundle,
    cache: &Mutex<AudioCache>,
    growing: &GrowingRequest,
) -> Result<Clip, String> {
    let (audio, lal) = {
        let mut clip = growing.clip.lock().unwrap_or_else(|e| e.into_inner());
        if clip.samples() != growing.tail_start {
            return Err(format!(
                "the session's audio windows cover {} samples but the question's audio starts at {}",
                clip.samples(),
                growing.tail_start
            ));
        }
        clip.with_tail(&bundle.model, &bundle.encoders, &growing.tail)
            .map_err(|e| format!("encoding the audio: {e}"))?
    };
    let clip = Arc::new(CachedClip { audio, lal });
    let mut cache = locked(cache);
    if cache.enabled() {
        cache.insert(growing.key, clip.clone());
    }
    Ok(Clip::Kept(growing.key, clip))
}

/// A request's clip: kept in the cache (under its key), or just encoded (the cache is off).
/// Cloning shares the tensors.
#[derive(Clone)]
pub(crate) enum Clip {
    /// Kept in the cache under its key, with its LAL keys/values.
    Kept(ClipKey, Arc<CachedClip>),
    /// Its encoder outputs (the cache is off).
    Encoded(Vec<Tensor>),
    /// Encoded window by window with its LAL keys/values (a long clip; the cache is off).
    Grown(Arc<CachedClip>),
}

/// The clips of the chats taken together (`requests[i]`: chat `i`'s clips): each from the audio
/// cache when it holds it, else encoded, clips of equal length in one batch (no padding, so a
/// clip's outputs are the ones it gets alone, bit for bit), a one-clip chat's clip longer than
/// the encoders' window window by window as `pal ask` encodes it ([`encode_long`]); with the cache on, a clip
/// asked twice is encoded once and kept (with its LAL keys/values). A batch that fails is
/// retried clip by clip, so only the chats whose clip fails get an error.
pub(crate) fn gather_clips(
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
    // Per unique clip: whether every chat asking about it asks about it alone (then a long
    // clip is encoded window by window, as `pal ask` encodes one clip).
    let mut alone: Vec<bool> = vec![];
    for clips in requests {
        let mut request = Vec::with_capacity(clips.len());
        for samples in clips.iter() {
            let key = cached.then(|| AudioCache::key(samples));
            let in_cache = key.and_then(|k| locked(cache).get(&k).map(|c| Clip::Kept(k, c)));
            // A clip another request taken together asks about too is encoded once.
            let taken_together = key.and_then(|k| unique.iter().position(|(_, u)| *u == Some(k)));
            let (source, counter) = match (in_cache, taken_together) {
                (Some(clip), _) => (Source::Kept(clip), &counters.audio_cache_hits),
                (None, Some(place)) => {
                    alone[place] &= clips.len() == 1;
                    (Source::Encoded(place), &counters.audio_cache_hits)
                }
                (None, None) => {
                    unique.push((samples.as_slice(), key));
                    alone.push(clips.len() == 1);
                    let place = unique.len() - 1;
                    (Source::Encoded(place), &counters.audio_cache_misses)
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
            request.push(source);
        }
        sources.push(request);
    }
    // Long clips window by window, the others in batches of equal lengths.
    let long: Vec<usize> = match GrowingClip::new(&bundle.model) {
        Ok(_) => {
            let window = GrowingClip::window_samples(&bundle.encoders);
            (0..unique.len())
                .filter(|&i| alone[i] && unique[i].0.len() > window)
                .collect()
        }
        Err(_) => vec![],
    };
    let short: Vec<usize> = (0..unique.len()).filter(|i| !long.contains(i)).collect();
    let samples: Vec<&[f32]> = short.iter().map(|&i| unique[i].0).collect();
    let mut encoded: Vec<Option<Result<Encoded, String>>> = vec![None; unique.len()];
    for (&i, audio) in short
        .iter()
        .zip(encode_equal_lengths(bundle, &samples, counters))
    {
        encoded[i] = Some(audio.map(Encoded::Outputs));
    }
    for &i in &long {
        counters.encoder_batches.fetch_add(1, Ordering::Relaxed);
        let grown = isolated(counters, || encode_long(bundle, unique[i].0)).and_then(|r| r);
        encoded[i] = Some(grown.map(|c| Encoded::WithKeys(Arc::new(c))));
    }
    // Kept in the cache with their LAL keys/values, when it is on.
    let done: Vec<Result<Clip, String>> = encoded
        .into_iter()
        .zip(&unique)
        .map(|(encoded, (_, key))| {
            let encoded = encoded.expect("every clip is encoded")?;
            let clip = match (encoded, key) {
                (Encoded::Outputs(audio), None) => return Ok(Clip::Encoded(audio)),
                (Encoded::WithKeys(clip), None) => return Ok(Clip::Grown(clip)),
                (Encoded::Outputs(audio), Some(_)) => {
                    let lal = isolated(counters, || bundle.model.clip_lal(&audio))?
                        .map_err(|e| e.to_string())?;
                    Arc::new(CachedClip { audio, lal })
                }
                (Encoded::WithKeys(clip), Some(_)) => clip,
            };
            let key = key.expect("matched above");
            locked(cache).insert(key, clip.clone());
            Ok(Clip::Kept(key, clip))
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
        // Past the model's seconds or memory: refused before it is encoded, by itself.
        match GrowingClip::check_length(&bundle.model, &bundle.encoders, c.len()) {
            Ok(()) => by_length.entry(c.len()).or_default().push(i),
            Err(e) => out[i] = Some(Err(e.to_string())),
        }
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

/// A clip as the encoder thread encoded it: its outputs, or (window by window) its outputs with
/// its LAL keys and values.
#[derive(Clone)]
enum Encoded {
    Outputs(Vec<Tensor>),
    WithKeys(Arc<CachedClip>),
}

/// A clip longer than the encoders' window, encoded window by window as `pal ask` encodes it
/// ([`GrowingClip::encode_whole`]): one window's activations at a time, its LAL keys and values computed (in
/// bf16, packed, where the model attends so) window by window, so memory grows with the clip's
/// keys and outputs, not with all its windows' activations at once.
fn encode_long(bundle: &Bundle, samples: &[f32]) -> Result<CachedClip, String> {
    let (audio, lal) = GrowingClip::encode_whole(&bundle.model, &bundle.encoders, samples)
        .map_err(|e| e.to_string())?;
    Ok(CachedClip { audio, lal })
}
