//! Length-bucketed shuffling with a seed: batches hold examples of similar length (less padding),
//! batch order is random, and the whole order is a function of (seed, epoch), so a resumed run
//! continues exactly where it stopped.

use pal_nn::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// Where a data loader is: which epoch and how many batches of it were consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BatchState {
    /// Epoch number, from 0.
    pub epoch: u64,
    /// Batches of this epoch already used.
    pub next_batch: usize,
}

/// The batch order of one dataset.
#[derive(Debug, Clone)]
pub struct BatchOrder {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
}

impl BatchOrder {
    /// Batches of `batch_size` over examples with the given lengths (any unit, e.g. tokens).
    pub fn new(lengths: Vec<usize>, batch_size: usize, seed: u64) -> Self {
        Self {
            lengths,
            batch_size: batch_size.max(1),
            seed,
        }
    }

    /// Batches per epoch (the last one may be smaller).
    pub fn batches_per_epoch(&self) -> usize {
        self.lengths.len().div_ceil(self.batch_size)
    }

    /// The batches of `epoch`, as example indices: shuffle, sort within buckets of 50 batches by
    /// length, cut into batches, shuffle the batches.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = SplitMix64::new(self.seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407));
        let mut order: Vec<usize> = (0..self.lengths.len()).collect();
        rng.shuffle(&mut order);
        let bucket = self.batch_size * 50;
        for chunk in order.chunks_mut(bucket) {
            chunk.sort_by_key(|&i| self.lengths[i]);
        }
        let mut batches: Vec<Vec<usize>> =
            order.chunks(self.batch_size).map(|c| c.to_vec()).collect();
        rng.shuffle(&mut batches);
        batches
    }

    /// The next batch after `state`, advancing it (and rolling over to the next epoch).
    pub fn next(&self, state: &mut BatchState) -> Vec<usize> {
        let mut batches = self.epoch(state.epoch);
        if state.next_batch >= batches.len() {
            state.epoch += 1;
            state.next_batch = 0;
            batches = self.epoch(state.epoch);
        }
        let batch = std::mem::take(&mut batches[state.next_batch]);
        state.next_batch += 1;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_with_similar_lengths_together() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 200).collect();
        let order = BatchOrder::new(lengths.clone(), 8, 1);
        let epoch = order.epoch(0);
        let mut seen: Vec<usize> = epoch.concat();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        // Bucketing: the mean spread within a batch is far below the spread of random batches.
        let spread: f64 = epoch
            .iter()
            .map(|b| {
                let l: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
                (l.iter().max().unwrap() - l.iter().min().unwrap()) as f64
            })
            .sum::<f64>()
            / epoch.len() as f64;
        assert!(spread < 40.0, "mean spread {spread}");
        assert_ne!(order.epoch(0), order.epoch(1));
        assert_eq!(order.epoch(3), BatchOrder::new(lengths, 8, 1).epoch(3));
    }

    #[test]
    fn state_resumes_exactly() {
        let order = BatchOrder::new((0..30).collect(), 4, 9);
        let mut a = BatchState::default();
        let straight: Vec<Vec<usize>> = (0..20).map(|_| order.next(&mut a)).collect();
        let mut b = BatchState::default();
        let mut resumed: Vec<Vec<usize>> = (0..7).map(|_| order.next(&mut b)).collect();
        let saved = serde_json::to_string(&b).unwrap();
        let mut c: BatchState = serde_json::from_str(&saved).unwrap();
        resumed.extend((7..20).map(|_| order.next(&mut c)));
        assert_eq!(straight, resumed);
        assert_eq!(a.epoch, 2);
    }
}
