//! The audio cache: a clip's encoder outputs and its LAL keys and values, kept across requests
//! and clients, keyed by the SHA-256 of its 16 kHz samples, in a memory-bounded LRU. A second
//! question about a clip skips the encoder and the LAL prefix: where LAL's design pays off at
//! inference, since the prefix is most of a LAL request's audio work.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use pal_models::audio_llm::ClipLal;
use sha2::{Digest, Sha256};

/// What is kept of one clip.
pub struct CachedClip {
    /// Encoder outputs, one per attached encoder.
    pub audio: Vec<Tensor>,
    /// Its LAL keys and values.
    pub lal: ClipLal,
}

impl CachedClip {
    /// Bytes the clip takes in the cache.
    pub fn bytes(&self) -> usize {
        let audio: usize = self
            .audio
            .iter()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        audio + self.lal.bytes()
    }
}

/// A content hash of 16 kHz samples.
pub type ClipKey = [u8; 32];

/// A least-recently-used cache of clips within a byte budget.
pub struct AudioCache {
    budget: usize,
    used: usize,
    tick: u64,
    entries: HashMap<ClipKey, (Arc<CachedClip>, usize, u64)>,
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
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(clip, _, used)| {
            *used = tick;
            clip.clone()
        })
    }

    /// Keeps `clip` under `key`, dropping the least recently used clips to stay within budget; a
    /// clip larger than the whole budget is not kept.
    pub fn insert(&mut self, key: ClipKey, clip: Arc<CachedClip>) {
        let bytes = clip.bytes();
        if bytes > self.budget {
            return;
        }
        if let Some((_, old, _)) = self.entries.remove(&key) {
            self.used -= old;
        }
        while self.used + bytes > self.budget {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| *k)
                .expect("over budget means something is kept");
            let (_, freed, _) = self.entries.remove(&oldest).expect("present");
            self.used -= freed;
        }
        self.tick += 1;
        self.used += bytes;
        self.entries.insert(key, (clip, bytes, self.tick));
    }

    /// Clips kept, and the bytes they take.
    pub fn size(&self) -> (usize, usize) {
        (self.entries.len(), self.used)
    }
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
}
