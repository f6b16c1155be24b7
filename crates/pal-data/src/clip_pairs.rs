//! Questions about two clips (`pal data pairs`), for models whose config takes several clips
//! (`max_clips = 2`): each example lists two files and places them with `<|pal_audio|>` markers
//! ("First clip: ... Second clip: ..."), built from the shared real clips with the held-out
//! rules of their sources (FSDD by take, ESC-10 by source recording: [`crate::shared`]), so a
//! test pair holds only test clips.
//!
//! - `which-has`: two ESC-10 clips of different classes, "Which clip has the dog, the first or
//!   the second?", answered "the first" or "the second" (each half the time).
//! - `same-digit`: two FSDD clips, of the same digit half the time, "Are the two spoken digits
//!   the same?", "yes" or "no".
//! - `louder`: two FSDD clips, one 8 to 16 dB louder (RMS) than the other, "Which clip is
//!   louder, the first or the second?" (the pair is written under `audio/louder/`).
//! - `each-clip`: two ESC-10 clips of different classes, "What is heard in each clip?",
//!   answered "dog, then rain".
//!
//! The same seed gives the same manifests and audio bytes.

use std::path::{Path, PathBuf};

use pal_nn::rng::SplitMix64;
use serde_json::json;

use crate::instruct::{pick, rms, uniform, RATE};
use crate::shared::{
    absolute_root_and_out, err, esc10_clips_by_split, fsdd_clips_by_split, write, BuildError,
    BuildSummary, ClipsBySplit, LabelledClip, SPLITS,
};

/// How each clip is introduced in a pair's question.
pub const PAIR_PROMPT: &str = "First clip: <|pal_audio|>\nSecond clip: <|pal_audio|>\n";
/// Asked of a `same-digit` pair.
pub const SAME_DIGIT_QUESTION: &str = "Are the two spoken digits the same?";
/// Asked of a `louder` pair.
pub const LOUDER_QUESTION: &str = "Which clip is louder, the first or the second?";
/// Asked of an `each-clip` pair.
pub const EACH_CLIP_QUESTION: &str = "What is heard in each clip?";
/// The tasks, in the order they are built.
pub const PAIR_TASKS: [&str; 4] = ["which-has", "same-digit", "louder", "each-clip"];

/// The question of a `which-has` pair about `label`.
pub fn which_has_question(label: &str) -> String {
    format!("Which clip has the {label}, the first or the second?")
}

/// What to build.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// The shared real-audio folder (`fsdd/`, `esc10/`).
    pub root: PathBuf,
    /// Output folder: `{task}/{split}.jsonl`, the `louder` pairs under `audio/louder/`.
    pub out: PathBuf,
    /// Seed of every random draw.
    pub seed: u64,
    /// Pairs per task in the train split.
    pub train: usize,
    /// Pairs per task in each of the validation and test splits.
    pub held_out: usize,
}

/// One pair: its two files, question and answer.
struct Pair {
    clips: [PathBuf; 2],
    question: String,
    answer: String,
}

/// Builds the four tasks under `options.out`.
pub fn build_clip_pairs(options: &PairOptions) -> Result<BuildSummary, BuildError> {
    let (root, out) = absolute_root_and_out(&options.root, &options.out)?;
    let digits = two_labels_each(fsdd_clips_by_split(&root)?, &root.join("fsdd/labels.csv"))?;
    let sounds = two_labels_each(esc10_clips_by_split(&root)?, &root.join("esc10/labels.csv"))?;
    let louder_dir = out.join("audio/louder");
    std::fs::create_dir_all(&louder_dir).map_err(|e| err(&louder_dir, e))?;
    let mut summary = BuildSummary::default();
    for (t, task) in PAIR_TASKS.into_iter().enumerate() {
        for (s, split) in SPLITS.into_iter().enumerate() {
            let count = match split {
                "train" => options.train,
                _ => options.held_out,
            };
            let mut rng = SplitMix64::new(options.seed ^ (0x9a1e + 16 * t as u64 + s as u64));
            let mut lines = vec![];
            for i in 0..count {
                let pair = match task {
                    "which-has" => which_has(&mut rng, &sounds[split]),
                    "same-digit" => same_digit(&mut rng, &digits[split]),
                    "louder" => {
                        let stem = louder_dir.join(format!("{split}-{i:04}"));
                        louder(&mut rng, &digits[split], &stem)?
                    }
                    _ => each_clip(&mut rng, &sounds[split]),
                };
                lines.push(pair_line(&pair));
            }
            write(
                &out.join(format!("{task}/{split}.jsonl")),
                &lines,
                &mut summary,
            )?;
        }
    }
    Ok(summary)
}

fn pair_line(pair: &Pair) -> String {
    json!({
        "audio": pair.clips,
        "messages": [
            {"role": "user", "content": format!("{PAIR_PROMPT}{}", pair.question)},
            {"role": "assistant", "content": pair.answer},
        ],
    })
    .to_string()
}

/// `by_split` when every split has clips of at least two labels; an error naming `source`
/// otherwise.
fn two_labels_each(by_split: ClipsBySplit, source: &Path) -> Result<ClipsBySplit, BuildError> {
    for split in SPLITS {
        let clips = &by_split[split];
        if !clips.iter().any(|c| c.label != clips[0].label) {
            return Err(err(
                source,
                format!("the {split} split needs clips of two labels at least"),
            ));
        }
    }
    Ok(by_split)
}

/// Two clips of different labels, in a random order.
fn two_labels<'a>(rng: &mut SplitMix64, clips: &'a [LabelledClip]) -> [&'a LabelledClip; 2] {
    let a = &clips[pick(rng, clips.len())];
    let others: Vec<&LabelledClip> = clips.iter().filter(|c| c.label != a.label).collect();
    let b = others[pick(rng, others.len())];
    match pick(rng, 2) {
        0 => [a, b],
        _ => [b, a],
    }
}

const ORDINALS: [&str; 2] = ["the first", "the second"];

fn which_has(rng: &mut SplitMix64, clips: &[LabelledClip]) -> Pair {
    let pair = two_labels(rng, clips);
    let asked = pick(rng, 2);
    Pair {
        clips: pair.map(|c| c.path.clone()),
        question: which_has_question(&pair[asked].label),
        answer: ORDINALS[asked].to_string(),
    }
}

fn each_clip(rng: &mut SplitMix64, clips: &[LabelledClip]) -> Pair {
    let pair = two_labels(rng, clips);
    Pair {
        clips: pair.map(|c| c.path.clone()),
        question: EACH_CLIP_QUESTION.to_string(),
        answer: format!("{}, then {}", pair[0].label, pair[1].label),
    }
}

fn same_digit(rng: &mut SplitMix64, clips: &[LabelledClip]) -> Pair {
    let a = &clips[pick(rng, clips.len())];
    let of = |same: bool| -> Vec<&LabelledClip> {
        clips
            .iter()
            .filter(|c| (c.label == a.label) == same && c.path != a.path)
            .collect()
    };
    // Another take of the same digit half the time (always different where there is none).
    let mut same = pick(rng, 2) == 0;
    let mut candidates = of(same);
    if candidates.is_empty() {
        same = !same;
        candidates = of(same);
    }
    let b = candidates[pick(rng, candidates.len())];
    Pair {
        clips: [a.path.clone(), b.path.clone()],
        question: SAME_DIGIT_QUESTION.to_string(),
        answer: if same { "yes" } else { "no" }.to_string(),
    }
}

/// Two FSDD clips written as `{stem}-a.wav` and `{stem}-b.wav`, RMS-normalised, one 8 to 16 dB
/// below the other.
fn louder(rng: &mut SplitMix64, clips: &[LabelledClip], stem: &Path) -> Result<Pair, BuildError> {
    let chosen = [
        &clips[pick(rng, clips.len())],
        &clips[pick(rng, clips.len())],
    ];
    let loud = pick(rng, 2);
    let drop_db = uniform(rng, 8.0, 16.0);
    let base = uniform(rng, 0.05, 0.12);
    let mut files = vec![];
    for (k, source) in chosen.iter().enumerate() {
        let mut samples =
            crate::encoding::decode_clip(&source.path).map_err(|e| err(&source.path, e))?;
        let rms = rms(&samples).max(1e-6);
        let target = match k == loud {
            true => base,
            false => base * 10f32.powf(-drop_db / 20.0),
        };
        samples
            .iter_mut()
            .for_each(|v| *v = (*v * target / rms).clamp(-1.0, 1.0));
        let path = PathBuf::from(format!("{}-{}.wav", stem.display(), ["a", "b"][k]));
        pal_audio::write_wav(&path, &samples, RATE).map_err(|e| err(&path, e))?;
        files.push(path);
    }
    Ok(Pair {
        clips: [files[0].clone(), files[1].clone()],
        question: LOUDER_QUESTION.to_string(),
        answer: ORDINALS[loud].to_string(),
    })
}
