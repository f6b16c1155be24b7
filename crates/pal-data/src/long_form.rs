//! Long recordings (`pal data long`): tasks where the answer is spread over minutes of audio,
//! built from the shared real clips placed in a bed of faint coloured noise, with the held-out
//! rules of their sources (FSDD by take, ESC-10 by source recording: [`crate::shared`]), so a
//! test recording holds only test clips.
//!
//! - `digit-strings`: 3 to 8 spoken digits, one per equal slot of the recording at a random
//!   offset in it (so their order is their order in time), "Which digits are spoken, in
//!   order?", answered with the digits' words: scored by word edit distance (`pal eval`'s WER).
//! - `sound-counts`: one to four clips of one ESC-10 class among one or two clips of other
//!   classes, "How many times do you hear a dog?", answered with a number word.
//! - `first-heard`: one to three clips of one ESC-10 class among one or two of other classes,
//!   "When do you first hear a dog?", answered "at 42 seconds": the onset of the first such clip
//!   (its first 10 ms louder than a tenth of the clip's loudest), rounded to the second. `pal
//!   eval` judges an answer right within 2 s of it (`pal_eval::metrics::TIME_TOLERANCE_SECONDS`).
//!
//! Each split has recordings of every length of its buckets (train: 30 s and 2 min by default;
//! validation and test: 30 s, 2 min and 10 min), written to `{task}/{split}.jsonl` and, for the
//! held-out splits, per length to `{task}/{split}-{seconds}s.jsonl`, so that accuracy can be
//! reported per length. The same seed gives the same manifests and audio bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pal_nn::rng::SplitMix64;

use crate::instruct::{coloured_noise, peak, pick, rms, uniform, RATE};
use crate::shared::{
    absolute_root_and_out, err, esc10_clips_by_split, fsdd_clips_by_split, line, sound_name, write,
    BuildError, BuildSummary, ClipsBySplit,
};

/// Asked of a digit-string recording.
pub const DIGITS_QUESTION: &str = "Which digits are spoken, in order?";

/// Number words for digits and counts.
const NUMBERS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// What to build.
#[derive(Debug, Clone)]
pub struct LongFormOptions {
    /// The shared real-audio folder (`fsdd/`, `esc10/`).
    pub root: PathBuf,
    /// Output folder: manifests per task and split, recordings under `audio/`.
    pub out: PathBuf,
    /// Seed of every random draw.
    pub seed: u64,
    /// Recording lengths of the train split, seconds.
    pub train_seconds: Vec<f32>,
    /// Recording lengths of the validation and test splits, seconds.
    pub held_out_seconds: Vec<f32>,
    /// Recordings per task and length in the train split.
    pub train_per_length: usize,
    /// Recordings per task and length in the validation and test splits.
    pub held_out_per_length: usize,
}

/// One real clip (16 kHz) and its label.
struct Clip {
    samples: Vec<f32>,
    label: String,
}

/// The question asked of a sound-count recording about `label` (an ESC-10 class).
pub fn count_question(label: &str) -> String {
    format!("How many times do you hear {}?", sound_name(label))
}

/// The question asked of a first-heard recording about `label` (an ESC-10 class).
pub fn first_heard_question(label: &str) -> String {
    format!("When do you first hear {}?", sound_name(label))
}

/// The answer of a first-heard recording whose event starts `seconds` in, to the second.
pub fn first_heard_answer(seconds: f32) -> String {
    match seconds.round() as u64 {
        1 => "at 1 second".to_string(),
        s => format!("at {s} seconds"),
    }
}

/// The tasks, in the order they are built (each draws from its own seeded stream).
pub const TASKS: [&str; 3] = ["digit-strings", "sound-counts", "first-heard"];

/// Builds every task of [`TASKS`] under `options.out`.
pub fn build_long_form(options: &LongFormOptions) -> Result<BuildSummary, BuildError> {
    let (root, out) = absolute_root_and_out(&options.root, &options.out)?;
    let mut summary = BuildSummary::default();
    let digits = load(fsdd_clips_by_split(&root)?)?;
    let sounds = load(esc10_clips_by_split(&root)?)?;
    for (t, task) in TASKS.into_iter().enumerate() {
        let dir = out.join("audio").join(task);
        std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
        for (s, split) in ["train", "validation", "test"].into_iter().enumerate() {
            let (lengths, count) = match split {
                "train" => (&options.train_seconds, options.train_per_length),
                _ => (&options.held_out_seconds, options.held_out_per_length),
            };
            let mut rng = SplitMix64::new(options.seed ^ (0x10f0 + 16 * t as u64 + s as u64));
            let mut all = vec![];
            for &seconds in lengths {
                let mut lines = vec![];
                for i in 0..count {
                    let path = dir.join(format!("{split}-{seconds:.0}s-{i:03}.wav"));
                    let (samples, question, answer) = match task {
                        "digit-strings" => digit_string(&mut rng, &digits[split], seconds),
                        "sound-counts" => sound_count(&mut rng, &sounds[split], seconds),
                        _ => first_heard(&mut rng, &sounds[split], seconds),
                    }
                    .map_err(|m| err(&path, m))?;
                    pal_audio::write_wav(&path, &samples, RATE).map_err(|e| err(&path, e))?;
                    lines.push(line(&path, &question, &answer));
                }
                if split != "train" {
                    let name = format!("{task}/{split}-{seconds:.0}s.jsonl");
                    write(&out.join(name), &lines, &mut summary)?;
                }
                all.extend(lines);
            }
            write(
                &out.join(format!("{task}/{split}.jsonl")),
                &all,
                &mut summary,
            )?;
        }
    }
    Ok(summary)
}

/// The samples of `clips` (as [`crate::shared::fsdd_clips_by_split`] and
/// [`crate::shared::esc10_clips_by_split`] list them) at 16 kHz mono, with their labels.
fn load(clips: ClipsBySplit) -> Result<BTreeMap<&'static str, Vec<Clip>>, BuildError> {
    clips
        .into_iter()
        .map(|(split, clips)| {
            let loaded = clips
                .into_iter()
                .map(|c| {
                    // At 16 kHz, the recording's rate (FSDD's files are 8 kHz).
                    let samples =
                        crate::encoding::decode_clip(&c.path).map_err(|e| err(&c.path, e))?;
                    Ok(Clip {
                        samples,
                        label: c.label,
                    })
                })
                .collect::<Result<Vec<Clip>, BuildError>>()?;
            Ok((split, loaded))
        })
        .collect()
}

/// A bed of faint coloured noise, `seconds` long, with `clips` placed one per equal slot at a
/// random offset in it (in order), and the sample where each clip starts. Errors when a clip is
/// longer than its slot.
fn recording(
    rng: &mut SplitMix64,
    seconds: f32,
    clips: &[&Clip],
) -> Result<(Vec<f32>, Vec<usize>), String> {
    let colour = pick(rng, 3);
    let mut bed = coloured_noise(rng, colour, seconds);
    let level = uniform(rng, 0.005, 0.02) / rms(&bed).max(1e-6);
    bed.iter_mut().for_each(|s| *s *= level);
    let slot = bed.len() / clips.len().max(1);
    let mut starts = vec![];
    for (k, clip) in clips.iter().enumerate() {
        let room = slot.checked_sub(clip.samples.len()).ok_or_else(|| {
            format!(
                "a {:.1} s clip does not fit a {:.1} s slot: make the recording longer",
                clip.samples.len() as f32 / RATE as f32,
                slot as f32 / RATE as f32
            )
        })?;
        let at = k * slot + pick(rng, room.max(1));
        let gain = uniform(rng, 0.5, 1.0) / peak(&clip.samples).max(1e-6);
        for (b, s) in bed[at..].iter_mut().zip(&clip.samples) {
            *b += gain * s;
        }
        starts.push(at);
    }
    Ok((bed, starts))
}

/// Where a clip's sound starts, in samples: its first 10 ms chunk whose RMS is at least a tenth
/// of its loudest chunk's.
fn onset(samples: &[f32]) -> usize {
    let chunk = RATE as usize / 100;
    let levels: Vec<f32> = samples.chunks(chunk).map(rms).collect();
    let loudest = levels.iter().cloned().fold(0.0, f32::max);
    levels.iter().position(|&l| l >= 0.1 * loudest).unwrap_or(0) * chunk
}

/// A digit-string recording: its samples, question and answer.
fn digit_string(
    rng: &mut SplitMix64,
    clips: &[Clip],
    seconds: f32,
) -> Result<(Vec<f32>, String, String), String> {
    let n = 3 + pick(rng, 6);
    let chosen: Vec<&Clip> = (0..n).map(|_| &clips[pick(rng, clips.len())]).collect();
    let (samples, _) = recording(rng, seconds, &chosen)?;
    let answer: Vec<&str> = chosen.iter().map(|c| c.label.as_str()).collect();
    Ok((samples, DIGITS_QUESTION.to_string(), answer.join(" ")))
}

/// A sound-count recording: its samples, question and answer.
fn sound_count(
    rng: &mut SplitMix64,
    clips: &[Clip],
    seconds: f32,
) -> Result<(Vec<f32>, String, String), String> {
    let (target, count, chosen) = targets_among_others(rng, clips, 4);
    let (samples, _) = recording(rng, seconds, &chosen)?;
    Ok((samples, count_question(target), NUMBERS[count].to_string()))
}

/// A first-heard recording: its samples, question and answer.
fn first_heard(
    rng: &mut SplitMix64,
    clips: &[Clip],
    seconds: f32,
) -> Result<(Vec<f32>, String, String), String> {
    let (target, _, chosen) = targets_among_others(rng, clips, 3);
    let (samples, starts) = recording(rng, seconds, &chosen)?;
    // Clips are placed in order, so the first of the target's clips is heard first.
    let first = chosen
        .iter()
        .position(|c| c.label == target)
        .expect("a target clip is placed");
    let at = (starts[first] + onset(&chosen[first].samples)) as f32 / RATE as f32;
    Ok((
        samples,
        first_heard_question(target),
        first_heard_answer(at),
    ))
}

/// A label drawn at random, one to `most` of its clips (how many: the second value) and one or
/// two clips of other labels, in a seeded random order.
fn targets_among_others<'a>(
    rng: &mut SplitMix64,
    clips: &'a [Clip],
    most: usize,
) -> (&'a str, usize, Vec<&'a Clip>) {
    let mut labels: Vec<&str> = clips.iter().map(|c| c.label.as_str()).collect();
    labels.sort();
    labels.dedup();
    let target = labels[pick(rng, labels.len())];
    let of = |want: bool| -> Vec<&Clip> {
        clips
            .iter()
            .filter(|c| (c.label == target) == want)
            .collect()
    };
    let (targets, others) = (of(true), of(false));
    let count = 1 + pick(rng, most);
    let mut chosen: Vec<&Clip> = (0..count)
        .map(|_| targets[pick(rng, targets.len())])
        .collect();
    if !others.is_empty() {
        for _ in 0..1 + pick(rng, 2) {
            chosen.push(others[pick(rng, others.len())]);
        }
    }
    // A seeded shuffle: targets and others in any order.
    for i in (1..chosen.len()).rev() {
        chosen.swap(i, pick(rng, i + 1));
    }
    (target, count, chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onset_is_the_first_chunk_a_tenth_as_loud_as_the_loudest() {
        let mut clip = vec![0.001f32; 4800];
        clip.extend((0..8000).map(|i| (i as f32 * 0.2).sin()));
        assert_eq!(onset(&clip), 4800);
        assert_eq!(onset(&[]), 0);
    }
}
