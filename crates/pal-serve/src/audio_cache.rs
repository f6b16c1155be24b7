//! The audio cache: a clip's encoder outputs and its LAL keys and values, kept across requests
//! and clients, keyed by the SHA-256 of its 16 kHz samples, in a memory-bounded LRU. A second
//! question about a clip skips the encoder and the LAL prefix: where LAL's design pays off at
//! inference, since the prefix is most of a LAL request's audio work. With the clip, the cache
//! keeps the prompts last asked about it (their KV caches and next-token logits): the same
//! question again runs no prompt at all, and another question about the clip runs only its own
//! rows (everything up to and including the clip is shared).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use pal_infer::continuous::KeptPrompt;
use pal_models::audio_llm::ClipLal;
use sha2::{Digest, Sha256};

/// Prompts kept per clip (the most recently asked).
pub const PROMPTS_PER_CLIP: usize = 8;

/// What is kept of one clip.
pub struct CachedClip {
    /// Encoder outputs, one per attached encoder.
    pub audio: Vec<Tensor>,
    /// Its LAL keys and values.
    pub lal: ClipLal,
}

impl CachedClip {
    /// Bytes the clip keeps alive in the cache (a live session's clip is a view of buffers
    /// with room to grow: all of them).
    pub fn bytes(&self) -> usize {
        let audio: usize = self
            .audio
            .iter()
            .map(pal_models::llm::cache::held_bytes)
            .sum();
        audio + self.lal.bytes()
    }
}

/// A content hash of 16 kHz samples.
pub type ClipKey = [u8; 32];

/// One clip in the cache, with the prompts asked about it.
struct Entry {
    clip: Arc<CachedClip>,
    /// Oldest first.
    prompts: Vec<Arc<KeptPrompt>>,
    /// The clip's bytes and its prompts'.
    bytes: usize,
    /// When it was last used.
    tick: u64,
}

/// A least-recently-used cache of clips (with their prompts) within a byte budget.
pub struct AudioCache {
    budget: usize,
    used: usize,
    tick: u64,
    entries: HashMap<ClipKey, Entry>,
}

impl AudioCache {
    /// An empty cache that holds at most `budget` bytes (0 keeps nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// Whether the cache keeps anything at all.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The key of a clip: SHA-256 of its samples' bytes.
    pub fn key(samples: &[f32]) -> ClipKey {
        let mut h = Sha256::new();
        for s in samples {
            h.update(s.to_le_bytes());
        }
        h.finalize().into()
    }

    /// The clip under `key`, marked as just used.
    pub fn get(&mut self, key: &ClipKey) -> Option<Arc<CachedClip>> {
        let entry = self.touch(key)?;
        Some(entry.clip.clone())
    }

    /// The prompts kept for the clip under `key` (none when it is not kept), marked as used.
    pub fn prompts(&mut self, key: &ClipKey) -> Vec<Arc<KeptPrompt>> {
        self.touch(key)
            .map(|e| e.prompts.clone())
            .unwrap_or_default()
    }

    /// Keeps `clip` under `key`, dropping the least recently used clips to stay within budget; a
    /// clip larger than the whole budget is not kept.
    pub fn insert(&mut self, key: ClipKey, clip: Arc<CachedClip>) {
        let bytes = clip.bytes();
        if bytes > self.budget {
            return;
        }
        if let Some(old) = self.entries.remove(&key) {
            self.used -= old.bytes;
        }
        self.make_room(bytes, None);
        self.tick += 1;
        self.used += bytes;
        let entry = Entry {
            clip,
            prompts: vec![],
            bytes,
            tick: self.tick,
        };
        self.entries.insert(key, entry);
    }

    /// Keeps `prompt` with the clip under `key` (when the clip is still kept) as its most recent
    /// prompt: it replaces a kept prompt with the same items, and the oldest goes past
    /// [`PROMPTS_PER_CLIP`]. Other clips leave, least recently used first, to make room; a
    /// prompt that does not fit even then is not kept.
    pub fn keep_prompt(&mut self, key: &ClipKey, prompt: Arc<KeptPrompt>) {
        let bytes = prompt.bytes();
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if entry.clip.bytes() + bytes > self.budget {
            return;
        }
        let mut freed = 0;
        entry.prompts.retain(|p| {
            let same = p.prompt.fed == prompt.prompt.fed;
            freed += if same { p.bytes() } else { 0 };
            !same
        });
        while entry.prompts.len() >= PROMPTS_PER_CLIP || entry.bytes - freed + bytes > self.budget {
            freed += entry.prompts.remove(0).bytes();
        }
        entry.bytes -= freed;
        self.used -= freed;
        self.make_room(bytes, Some(key));
        let entry = self.entries.get_mut(key).expect("make_room spares it");
        entry.prompts.push(prompt);
        entry.bytes += bytes;
        self.used += bytes;
    }

    /// Clips kept, and the bytes they and their prompts take.
    pub fn size(&self) -> (usize, usize) {
        (self.entries.len(), self.used)
    }

    /// Prompts kept, over all clips.
    pub fn prompt_count(&self) -> usize {
        self.entries.values().map(|e| e.prompts.len()).sum()
    }

    /// The entry under `key`, marked as just used.
    fn touch(&mut self, key: &ClipKey) -> Option<&mut Entry> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        entry.tick = tick;
        Some(entry)
    }

    /// Drops least recently used clips (never `spare`) until `bytes` more fit the budget.
    fn make_room(&mut self, bytes: usize, spare: Option<&ClipKey>) {
        while self.used + bytes > self.budget {
            let oldest = self
                .entries
                .iter()
                .filter(|(k, _)| Some(*k) != spare)
                .min_by_key(|(_, e)| e.tick)
                .map(|(k, _)| *k);
            let Some(oldest) = oldest else { return };
            let freed = self.entries.remove(&oldest).expect("present").bytes;
            self.used -= freed;
        }
    }
}

/// The audio cache, locked (a panic while it was held left nothing half-done that matters: at
/// worst a clip or prompt is missing).
pub(crate) fn locked(cache: &Mutex<AudioCache>) -> std::sync::MutexGuard<'_, AudioCache> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(floats: usize) -> Arc<CachedClip> {
        let t = Tensor::zeros(floats, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        Arc::new(CachedClip {
            audio: vec![t],
            lal: ClipLal { encoders: vec![] },
        })
    }

    #[test]
    fn the_least_recently_used_clip_leaves_first_and_the_budget_holds() {
        let mut cache = AudioCache::new(3 * 400);
        let keys: Vec<ClipKey> = (0..4).map(|i| AudioCache::key(&[i as f32])).collect();
        for k in &keys[..3] {
            cache.insert(*k, clip(100));
        }
        assert!(cache.get(&keys[0]).is_some()); // 0 is now the most recent
        cache.insert(keys[3], clip(100)); // evicts 1
        assert!(cache.get(&keys[1]).is_none());
        assert!(cache.get(&keys[0]).is_some() && cache.get(&keys[2]).is_some());
        assert_eq!(cache.size(), (3, 1200));
        cache.insert(AudioCache::key(&[9.0]), clip(1000)); // larger than the budget: not kept
        assert_eq!(cache.size(), (3, 1200));
        assert!(!AudioCache::new(0).enabled());
    }

    /// A kept prompt of `tokens` items whose cache holds `floats` keys and as many values.
    fn prompt(tokens: &[u32], floats: usize) -> Arc<KeptPrompt> {
        use pal_infer::reuse::{Item, PromptCache};
        let mut cache = pal_models::KvCache::new(1);
        let t = Tensor::zeros(floats, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        cache.layers[0].k = Some(t.clone());
        cache.layers[0].v = Some(t);
        let fed = tokens.iter().map(|&t| Item::Token(t)).collect();
        Arc::new(KeptPrompt {
            prompt: PromptCache::new(cache, fed),
            logits: vec![0.0; 10],
        })
    }

    #[test]
    fn prompts_stay_with_their_clip_within_the_budget() {
        let mut cache = AudioCache::new(4000);
        let (a, b) = (AudioCache::key(&[1.0]), AudioCache::key(&[2.0]));
        cache.insert(a, clip(100)); // 400 bytes
        cache.keep_prompt(&a, prompt(&[1, 2], 100)); // 840 bytes with its logits
        cache.keep_prompt(&a, prompt(&[1, 2], 100)); // the same prompt: replaced, not added
        cache.keep_prompt(&b, prompt(&[1, 2], 100)); // no such clip: not kept
        assert_eq!(cache.prompt_count(), 1);
        assert_eq!(cache.size(), (1, 400 + 840));
        // Past PROMPTS_PER_CLIP the oldest goes.
        cache.insert(a, clip(100));
        for i in 0..PROMPTS_PER_CLIP as u32 + 2 {
            cache.keep_prompt(&a, prompt(&[i], 10));
        }
        let kept = cache.prompts(&a);
        assert_eq!(kept.len(), PROMPTS_PER_CLIP);
        assert_eq!(kept[0].prompt.fed, prompt(&[2], 10).prompt.fed);
        assert_eq!(cache.size().1, 400 + PROMPTS_PER_CLIP * 120);
        // A prompt pushes other clips out, never its own; one too big for the budget is refused.
        cache.insert(b, clip(100));
        cache.keep_prompt(&a, prompt(&[99], 300)); // 2440 bytes: with b it would not fit
        assert!(cache.get(&b).is_none() && cache.get(&a).is_some());
        assert_eq!(cache.size(), (1, 400 + (PROMPTS_PER_CLIP - 1) * 120 + 2440));
        cache.keep_prompt(&a, prompt(&[100], 1000)); // larger than the budget with its clip
        assert_eq!(cache.prompts(&a).len(), PROMPTS_PER_CLIP);
        assert!(cache.size().1 <= 4000);
    }
}
