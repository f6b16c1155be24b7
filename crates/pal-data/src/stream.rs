//! The order of a training stage whose examples need not fit in memory. Its data is a list of
//! units (a manifest's examples held in memory, or one feature shard read memory-mapped); each
//! epoch the units are shuffled and taken in turn into groups of about `shuffle_buffer`
//! records, and each group is shuffled, length-bucketed and cut into batches by
//! [`BatchOrder`]. Only the current group's descriptions are in memory, so memory does not grow
//! with the dataset, and the whole order is a function of (seed, epoch, unit sizes): a
//! [`BatchState`] is an exact position, as for data held in memory.
//!
//! When everything fits in one group (the buffer holds all records), the order is the one
//! [`BatchOrder`] gives over all records, whether they come from a manifest or from its shards.

use pal_nn::rng::SplitMix64;

use crate::batching::{BatchOrder, BatchState};

/// How a stage's units are read.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// Records of each unit, in the stage's order.
    pub units: Vec<usize>,
    /// Examples per batch.
    pub batch_size: usize,
    /// Records shuffled together (a group grows by whole units until it holds this many).
    pub shuffle_buffer: usize,
    /// The stage's seed.
    pub seed: u64,
}

/// Where a position falls: group `group` of `epoch`, its batch `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPosition {
    /// Epoch.
    pub epoch: u64,
    /// Group of that epoch.
    pub group: usize,
    /// Batch within the group.
    pub batch: usize,
}

impl StreamPlan {
    /// The groups of `epoch`: unit indices, each group in the stage's unit order.
    pub fn groups(&self, epoch: u64) -> Vec<Vec<usize>> {
        let total: usize = self.units.iter().sum();
        if total <= self.shuffle_buffer.max(1) {
            return vec![(0..self.units.len()).collect()];
        }
        let mut order: Vec<usize> = (0..self.units.len()).collect();
        SplitMix64::new(
            self.seed ^ 0x94D0_49BB_1331_11EB ^ epoch.wrapping_mul(0xBF58_476D_1CE4_E5B9),
        )
        .shuffle(&mut order);
        let mut groups = vec![];
        let mut current: Vec<usize> = vec![];
        let mut records = 0;
        for unit in order {
            current.push(unit);
            records += self.units[unit];
            if records >= self.shuffle_buffer {
                current.sort_unstable();
                groups.push(std::mem::take(&mut current));
                records = 0;
            }
        }
        if !current.is_empty() {
            current.sort_unstable();
            groups.push(current);
        }
        groups
    }

    /// Records of a group.
    pub fn group_records(&self, group: &[usize]) -> usize {
        group.iter().map(|&u| self.units[u]).sum()
    }

    /// Batches of a group.
    pub fn group_batches(&self, group: &[usize]) -> usize {
        self.group_records(group).div_ceil(self.batch_size.max(1))
    }

    /// Batches in `epoch`.
    pub fn batches_per_epoch(&self, epoch: u64) -> usize {
        self.groups(epoch)
            .iter()
            .map(|g| self.group_batches(g))
            .sum()
    }

    /// The position of the next batch after `state`, advancing `state` (and rolling over to
    /// the next epoch).
    pub fn next(&self, state: &mut BatchState) -> StreamPosition {
        if state.next_batch >= self.batches_per_epoch(state.epoch) {
            state.epoch += 1;
            state.next_batch = 0;
        }
        let mut batch = state.next_batch;
        state.next_batch += 1;
        for (group, members) in self.groups(state.epoch).iter().enumerate() {
            let n = self.group_batches(members);
            if batch < n {
                return StreamPosition {
                    epoch: state.epoch,
                    group,
                    batch,
                };
            }
            batch -= n;
        }
        unreachable!("a batch index below batches_per_epoch falls in a group")
    }

    /// The batches of group `group` of `epoch`, as indices into the group's records (its units'
    /// records one after another), given their lengths.
    pub fn group_order(&self, epoch: u64, group: usize, lengths: Vec<usize>) -> Vec<Vec<usize>> {
        let seed = self.seed ^ (group as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        BatchOrder::new(lengths, self.batch_size, seed).epoch(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(units: Vec<usize>, buffer: usize) -> StreamPlan {
        StreamPlan {
            units,
            batch_size: 4,
            shuffle_buffer: buffer,
            seed: 3,
        }
    }

    #[test]
    fn one_group_is_the_in_memory_order() {
        let p = plan(vec![10, 7, 5], 100);
        let lengths: Vec<usize> = (0..22).map(|i| (i * 7) % 13).collect();
        let mut state = BatchState::default();
        let mut memory = BatchState::default();
        let order = BatchOrder::new(lengths.clone(), 4, 3);
        for _ in 0..20 {
            let at = p.next(&mut state);
            let batches = p.group_order(at.epoch, at.group, lengths.clone());
            assert_eq!(batches[at.batch], order.next(&mut memory));
        }
    }

    #[test]
    fn groups_cover_every_record_once_per_epoch_and_resume_exactly() {
        let p = plan(vec![5; 40], 20);
        for epoch in 0..3 {
            let groups = p.groups(epoch);
            assert!(groups.len() >= 9, "{groups:?}");
            let mut units: Vec<usize> = groups.concat();
            units.sort_unstable();
            assert_eq!(units, (0..40).collect::<Vec<_>>());
        }
        assert_ne!(p.groups(0), p.groups(1));
        let mut a = BatchState::default();
        let straight: Vec<StreamPosition> = (0..150).map(|_| p.next(&mut a)).collect();
        let mut b = BatchState::default();
        let mut resumed: Vec<StreamPosition> = (0..61).map(|_| p.next(&mut b)).collect();
        let mut c: BatchState = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        resumed.extend((61..150).map(|_| p.next(&mut c)));
        assert_eq!(straight, resumed);
        assert_eq!(straight[0].epoch, 0);
        assert!(straight.iter().any(|s| s.epoch == 2));
    }
}
