//! What a stage trains on, in the order [`pal_data::stream`] gives: examples from manifests
//! (their clips decoded and encoded once, in parallel batches, at the start of the stage, cached
//! on disk, and held in memory) and examples streamed from feature shard sets (read
//! memory-mapped, one group of shards at a time, so memory does not grow with their size).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Device;
use pal_data::encoding::{encode_records, EncodeOptions, RecordClips};
use pal_data::stream::StreamPlan;
use pal_data::{load_manifest, BatchState};
use pal_models::audio_llm::Example;
use pal_models::encoders::AudioEncoder;
use pal_models::formats::feature_shards::{FeatureShard, FeatureShardSet};
use pal_models::text::chat_template::ChatTemplate;
use pal_models::text::segments::training_segments;
use pal_models::text::Segment;
use pal_models::Tokenizer;

use crate::curriculum::{DataMix, Stage};
use crate::distributed::Collective;
use crate::TrainError;

/// An example ready for batching: its segments and, per clip, its encoder outputs.
#[derive(Clone)]
struct Item {
    segments: Vec<Segment>,
    clips: RecordClips,
}

/// The length a batch is bucketed by: text tokens plus audio tokens.
fn bucket_length(segments: &[Segment], audio_tokens: usize) -> usize {
    segments
        .iter()
        .map(|s| match s {
            Segment::Text { ids, .. } => ids.len(),
            Segment::Audio => 0,
        })
        .sum::<usize>()
        + audio_tokens
}

/// What every stage of a run shares.
pub struct RunContext<'a> {
    /// The curriculum's folder (data paths are relative to it).
    pub base: &'a Path,
    /// The curriculum's seed.
    pub seed: u64,
    /// Skip bad manifest lines and undecodable clips (each warned and counted).
    pub skip_bad: bool,
    /// Most clips the model takes in one example (its config's `max_clips`).
    pub max_clips: usize,
}

/// A unit of the stream: the stage's manifest examples, or one shard of a set.
enum Unit {
    Memory(Vec<(Item, usize)>),
    Shard { set: usize, shard: usize },
}

/// The group being read: its batches and its records' segments.
struct Group {
    epoch: u64,
    index: usize,
    /// `(unit, record in unit)` of each group record.
    members: Vec<(usize, usize)>,
    /// Segments of the shard records (by group record).
    segments: HashMap<usize, Vec<Segment>>,
    batches: Vec<Vec<usize>>,
    open: HashMap<usize, FeatureShard>,
}

/// A stage's data.
pub struct StageData {
    units: Vec<Unit>,
    sets: Vec<FeatureShardSet>,
    plan: StreamPlan,
    group: Option<Group>,
    template: ChatTemplate,
    /// This rank, and the examples each rank takes from a global batch.
    rank: usize,
    per_rank: usize,
    /// Examples skipped as bad (with `skip_bad`).
    pub skipped: usize,
}

impl StageData {
    /// Loads stage `stage_index`'s manifests (encoding their clips) and opens its shard sets,
    /// checking that they were made by the model's encoders.
    pub fn load<E: AudioEncoder>(
        stage: &Stage,
        stage_index: usize,
        run: &RunContext,
        tokenizer: &Tokenizer,
        encoders: &[E],
        collective: &dyn Collective,
    ) -> Result<Self, TrainError> {
        let (base, seed, skip_bad) = (run.base, run.seed, run.skip_bad);
        let template = ChatTemplate::for_tokenizer(tokenizer)?;
        let mut units = vec![];
        let mut skipped = 0;
        if !stage.manifests.is_empty() {
            let (items, bad) = load_manifest_items(
                &stage.manifests,
                base,
                (&template, tokenizer),
                encoders,
                (skip_bad, run.max_clips),
                seed,
            )?;
            skipped += bad;
            units.push(Unit::Memory(items));
        }
        let expected: Vec<(String, usize)> = encoders.iter().map(|e| (e.id(), e.dim())).collect();
        let mut sets = vec![];
        for (s, mix) in stage.shards.iter().enumerate() {
            let set = FeatureShardSet::open(&base.join(&mix.path))?;
            set.check_encoders(&expected)?;
            let shards: Vec<usize> = repeated(set.index.shards.len(), mix.weight, seed ^ s as u64);
            units.extend(shards.into_iter().map(|shard| Unit::Shard {
                set: sets.len(),
                shard,
            }));
            sets.push(set);
        }
        let sizes: Vec<usize> = units
            .iter()
            .map(|u| match u {
                Unit::Memory(items) => items.len(),
                Unit::Shard { set, shard } => sets[*set].index.shards[*shard].records,
            })
            .collect();
        if sizes.iter().sum::<usize>() == 0 {
            return Err(TrainError::Config(
                base.to_path_buf(),
                format!("stage '{}' has no usable examples", stage.name),
            ));
        }
        Ok(Self {
            rank: collective.rank(),
            per_rank: stage.batch_size,
            plan: StreamPlan {
                units: sizes,
                batch_size: stage.batch_size * collective.size(),
                shuffle_buffer: stage.shuffle_buffer,
                seed: seed ^ stage_index as u64,
            },
            units,
            sets,
            group: None,
            template,
            skipped,
        })
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.batches_per_epoch(0)
    }

    /// This rank's slice of the next global batch after `state` (possibly empty: the last
    /// batch of a group can be short), advancing `state`.
    pub fn next_batch(
        &mut self,
        state: &mut BatchState,
        tokenizer: &Tokenizer,
    ) -> Result<Vec<Example>, TrainError> {
        let at = self.plan.next(state);
        let current = self
            .group
            .as_ref()
            .is_some_and(|g| g.epoch == at.epoch && g.index == at.group);
        if !current {
            self.group = None; // unmaps the previous group's shards first
            self.group = Some(self.load_group(at.epoch, at.group, tokenizer)?);
        }
        let group = self.group.as_ref().expect("loaded");
        let batch = &group.batches[at.batch];
        let start = (self.rank * self.per_rank).min(batch.len());
        let end = (start + self.per_rank).min(batch.len());
        batch[start..end]
            .iter()
            .map(|&r| {
                let (unit, record) = group.members[r];
                match &self.units[unit] {
                    Unit::Memory(items) => Ok(Example {
                        segments: items[record].0.segments.clone(),
                        clips: items[record].0.clips.clone(),
                    }),
                    Unit::Shard { .. } => Ok(Example::one_clip(
                        group.segments[&r].clone(),
                        group.open[&unit].example_audio(record, &Device::Cpu)?,
                    )),
                }
            })
            .collect()
    }

    fn load_group(
        &self,
        epoch: u64,
        index: usize,
        tokenizer: &Tokenizer,
    ) -> Result<Group, TrainError> {
        let units = &self.plan.groups(epoch)[index];
        let mut members = vec![];
        let mut lengths = vec![];
        let mut segments = HashMap::new();
        let mut open = HashMap::new();
        for &u in units {
            match &self.units[u] {
                Unit::Memory(items) => {
                    for (r, (_, length)) in items.iter().enumerate() {
                        members.push((u, r));
                        lengths.push(*length);
                    }
                }
                Unit::Shard { set, shard } => {
                    let opened = self.sets[*set].open_shard(*shard)?;
                    for (r, record) in opened.records().iter().enumerate() {
                        let origin = format!("{} record {r}", opened.path().display());
                        let segs = training_segments(&self.template, tokenizer, &record.messages)
                            .map_err(|e| TrainError::Example(origin, e.to_string()))?;
                        lengths.push(bucket_length(&segs, record.tokens.iter().sum()));
                        segments.insert(members.len(), segs);
                        members.push((u, r));
                    }
                    open.insert(u, opened);
                }
            }
        }
        Ok(Group {
            epoch,
            index,
            batches: self.plan.group_order(epoch, index, lengths),
            members,
            segments,
            open,
        })
    }
}

/// `count` things repeated by `weight`: whole repetitions, plus a seeded fraction.
fn repeated(count: usize, weight: f64, seed: u64) -> Vec<usize> {
    let whole = weight.floor() as usize;
    let frac = weight - whole as f64;
    let mut chosen: Vec<usize> = (0..whole).flat_map(|_| 0..count).collect();
    if frac > 0.0 {
        let mut order: Vec<usize> = (0..count).collect();
        pal_nn::rng::SplitMix64::new(seed ^ 0x5851_f42d_4c95_7f2d).shuffle(&mut order);
        chosen.extend(
            order
                .into_iter()
                .take((frac * count as f64).round() as usize),
        );
    }
    chosen
}

/// The manifests' examples with their encoder outputs and bucket lengths, in mix order. Each
/// distinct clip is decoded and encoded once (in parallel batches), however often the mix
/// repeats it or its examples list it.
fn load_manifest_items<E: AudioEncoder>(
    mixes: &[DataMix],
    base: &Path,
    (template, tokenizer): (&ChatTemplate, &Tokenizer),
    encoders: &[E],
    (skip_bad, max_clips): (bool, usize),
    seed: u64,
) -> Result<(Vec<(Item, usize)>, usize), TrainError> {
    let mut skipped = 0;
    let mut items = vec![];
    for mix in mixes {
        let path = base.join(&mix.path);
        let manifest = load_manifest(&path, skip_bad)?;
        for bad in &manifest.skipped {
            eprintln!("warning: skipped {bad}");
        }
        skipped += manifest.skipped.len();
        let mut records = manifest.records;
        for r in &records {
            let Some(message) = r.too_many_clips(max_clips) else {
                continue;
            };
            if !skip_bad {
                return Err(TrainError::Example(r.origin.clone(), message));
            }
            eprintln!("warning: skipped {}: {message}", r.origin);
            skipped += 1;
        }
        records.retain(|r| r.too_many_clips(max_clips).is_none());
        let chosen = repeated(records.len(), mix.weight, seed);
        let mut distinct: Vec<usize> = chosen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let of_distinct: Vec<&pal_data::Record> = distinct.iter().map(|&r| &records[r]).collect();
        let outputs = encode_records(&of_distinct, encoders, &EncodeOptions::default(), skip_bad)
            .map_err(|(r, e)| TrainError::Example(of_distinct[r].origin.clone(), e))?;
        let mut encoded: BTreeMap<usize, Option<(Item, usize)>> = BTreeMap::new();
        for ((&r, record), clips) in distinct.iter().zip(&of_distinct).zip(outputs) {
            let item = clips.and_then(|clips| {
                let segments = training_segments(template, tokenizer, &record.messages)
                    .map_err(|e| e.to_string())?;
                let tokens = clips.iter().flatten().map(|a| a.dims()[0]).sum();
                let length = bucket_length(&segments, tokens);
                Ok((Item { segments, clips }, length))
            });
            match item {
                Ok(item) => {
                    encoded.insert(r, Some(item));
                }
                Err(e) if skip_bad => {
                    eprintln!("warning: skipped {}: {e}", record.origin);
                    skipped += 1;
                    encoded.insert(r, None);
                }
                Err(e) => return Err(TrainError::Example(record.origin.clone(), e)),
            }
        }
        items.extend(chosen.iter().filter_map(|r| encoded[r].clone()));
    }
    Ok((items, skipped))
}
