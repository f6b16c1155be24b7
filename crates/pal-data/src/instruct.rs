//! The multi-task audio instruction set (`pal data instruct`): real clips (FSDD digits, ESC-10
//! sounds, speech samples; see [`crate::shared`]) and generated ones (beeps with pitch and count, coloured noises,
//! major/minor chords, espeak-ng speech with its text; instruments, languages and unknown sounds
//! from [`crate::vocabulary`]), each task with `train`, `validation`
//! and `test` splits, disjoint by the same rule: FSDD by take (its official test split; takes 5-9
//! validate), ESC-10 by source recording, the generated clips by their own draws, espeak-ng by
//! voice and by sentence ([`Part`]); and `speech-sound`, the speech clips asked the sound
//! questions. Choices are made on `validation`; `test` is read once, for a final report.
//! Everything is drawn from one seed, so the same seed gives the same manifests and the same
//! audio bytes.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};
use std::process::Command;

use pal_nn::rng::SplitMix64;

use crate::shared::SPEECH_QUESTION;
use crate::shared::{err, line, write, BuildError, BuildSummary};

/// Asked of generated beeps: how many.
pub const COUNT_QUESTION: &str = "How many beeps are there?";
/// Asked of generated beeps: their pitch.
pub const PITCH_QUESTION: &str = "Is the tone high or low?";
/// Asked of generated noise.
pub const NOISE_QUESTION: &str = "What kind of noise is this?";
/// Asked of generated chords.
pub const CHORD_QUESTION: &str = "Is this chord major or minor?";

/// What to build.
#[derive(Debug, Clone)]
pub struct InstructOptions {
    /// The shared real-audio folder (`fsdd/`, `esc10/`, `speech_samples/`); without it only
    /// generated tasks are built.
    pub root: Option<PathBuf>,
    /// Output folder: manifests per task and split, generated audio under `audio/`.
    pub out: PathBuf,
    /// Seed of every random draw.
    pub seed: u64,
    /// Synthesize speech with espeak-ng (skipped with a warning when it is not installed).
    pub espeak: bool,
    /// Generated clips per task in the train split (validation and test get a quarter as many).
    pub generated_per_task: usize,
}

/// Number words for counts and digits.
const NUMBERS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

pub(crate) const RATE: u32 = 16_000;

pub(crate) fn uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f32 {
    (lo + (hi - lo) * rng.next_f64()) as f32
}

pub(crate) fn pick(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// Root mean square of samples.
pub(crate) fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Largest absolute sample.
pub(crate) fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Gaussian-ish noise (sum of uniforms) for backgrounds.
pub(crate) fn noise_sample(rng: &mut SplitMix64) -> f32 {
    ((0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0) as f32
}

/// `count` beeps of `hz` with random lengths and gaps, over faint noise. Returns the samples.
fn beeps(rng: &mut SplitMix64, count: usize, hz: f32) -> Vec<f32> {
    let amplitude = uniform(rng, 0.15, 0.5);
    let floor = uniform(rng, 0.0, 0.01);
    let mut out: Vec<f32> = (0..(uniform(rng, 0.1, 0.4) * RATE as f32) as usize)
        .map(|_| floor * noise_sample(rng))
        .collect();
    for _ in 0..count {
        let on = (uniform(rng, 0.12, 0.3) * RATE as f32) as usize;
        let off = (uniform(rng, 0.15, 0.35) * RATE as f32) as usize;
        for i in 0..on {
            // 5 ms ramps avoid clicks that would sound like extra beeps.
            let ramp = (i.min(on - i) as f32 / 80.0).min(1.0);
            let t = i as f32 / RATE as f32;
            out.push(amplitude * ramp * (2.0 * PI * hz * t).sin() + floor * noise_sample(rng));
        }
        out.extend((0..off).map(|_| floor * noise_sample(rng)));
    }
    out
}

/// White, pink or brown noise (by index) for `seconds`.
pub(crate) fn coloured_noise(rng: &mut SplitMix64, colour: usize, seconds: f32) -> Vec<f32> {
    let n = (seconds * RATE as f32) as usize;
    let white: Vec<f32> = (0..n).map(|_| noise_sample(rng) * 0.5).collect();
    let mut out = match colour {
        0 => white,
        1 => {
            // Paul Kellet's economy pink filter.
            let (mut b0, mut b1, mut b2) = (0.0f32, 0.0f32, 0.0f32);
            white
                .iter()
                .map(|&w| {
                    b0 = 0.99765 * b0 + w * 0.0990460;
                    b1 = 0.96300 * b1 + w * 0.2965164;
                    b2 = 0.57000 * b2 + w * 1.0526913;
                    b0 + b1 + b2 + w * 0.1848
                })
                .collect()
        }
        _ => {
            let mut last = 0.0f32;
            white
                .iter()
                .map(|&w| {
                    last = (last + 0.02 * w) * 0.998;
                    last
                })
                .collect()
        }
    };
    let peak = out.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    let gain = uniform(rng, 0.2, 0.6) / peak;
    out.iter_mut().for_each(|x| *x *= gain);
    out
}

/// A major or minor triad on `root` Hz with a few harmonics and a decay.
pub(crate) fn chord(rng: &mut SplitMix64, minor: bool, root: f32) -> Vec<f32> {
    let third = if minor { 3.0f32 } else { 4.0 };
    let notes = [
        root,
        root * 2f32.powf(third / 12.0),
        root * 2f32.powf(7.0 / 12.0),
    ];
    let seconds = uniform(rng, 1.2, 2.0);
    let decay = uniform(rng, 0.5, 2.0);
    let amplitude = uniform(rng, 0.1, 0.25);
    (0..(seconds * RATE as f32) as usize)
        .map(|i| {
            let t = i as f32 / RATE as f32;
            let env = (-decay * t).exp() * (t * 200.0).min(1.0);
            let tone: f32 = notes
                .iter()
                .map(|f| {
                    (1..=3)
                        .map(|h| (2.0 * PI * f * h as f32 * t).sin() / h as f32)
                        .sum::<f32>()
                })
                .sum();
            amplitude * env * tone
        })
        .collect()
}

/// The split a generated sentence belongs to. The grammar's 512 sentences (subject, verb, place:
/// 8 each) are partitioned by (subject + verb + place) mod 4: 0 is test, 1 validation, 2 and 3
/// train. Every word occurs in every part, and no sentence in two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Read by training.
    Train,
    /// Read for choices (checkpoints, configs, weights).
    Validation,
    /// Read once, for the final report (and by the out-of-distribution check set).
    Test,
}

impl Part {
    /// The part of a split named `train`, `validation` or `test`.
    pub fn of_split(split: &str) -> Part {
        match split {
            "train" => Part::Train,
            "validation" => Part::Validation,
            _ => Part::Test,
        }
    }

    /// The part whose residues hold `sum mod 4` (the rule every generated split is drawn by).
    pub fn of_sum(sum: usize) -> Part {
        [Part::Train, Part::Validation, Part::Test]
            .into_iter()
            .find(|p| p.residues().contains(&(sum % 4)))
            .expect("the residues cover 0..4")
    }

    pub(crate) fn residues(self) -> &'static [usize] {
        match self {
            Part::Train => &[2, 3],
            Part::Validation => &[1],
            Part::Test => &[0],
        }
    }
}

/// Sentences for espeak-ng: simple, varied, with a known text, from `part` of the grammar.
pub(crate) fn sentence(rng: &mut SplitMix64, part: Part) -> String {
    const SUBJECTS: [&str; 8] = [
        "The red car",
        "My old dog",
        "A small bird",
        "The new teacher",
        "Our neighbour",
        "The tall tree",
        "A green boat",
        "The quiet child",
    ];
    const VERBS: [&str; 8] = [
        "is near",
        "waits by",
        "moves past",
        "sits under",
        "looks at",
        "stays behind",
        "runs to",
        "stands beside",
    ];
    const PLACES: [&str; 8] = [
        "the river",
        "the station",
        "the old bridge",
        "the garden gate",
        "the market",
        "the white house",
        "the school",
        "the harbour",
    ];
    let (subject, verb) = (pick(rng, 8), pick(rng, 8));
    let residues = part.residues();
    let residue = residues[pick(rng, residues.len())];
    // The place whose index makes (subject + verb + place) mod 4 the part's residue: one of two.
    let place = (residue + 8 - (subject + verb) % 4) % 4 + 4 * pick(rng, 2);
    format!("{} {} {}.", SUBJECTS[subject], VERBS[verb], PLACES[place])
}

/// espeak-ng voices: these for training, one held out for validation and one for testing.
const TRAIN_VOICES: [&str; 4] = ["en-us", "en-gb", "en-gb-scotland", "en-029"];
pub(crate) const VALIDATION_VOICE: &str = "en-gb-x-gbcwmd";
pub(crate) const TEST_VOICE: &str = "en-gb-x-rp";

/// Whether `espeak-ng` runs here.
pub fn espeak_available() -> bool {
    Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) fn espeak(text: &str, voice: &str, speed: u32, path: &Path) -> Result<(), BuildError> {
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &speed.to_string(), "-w"])
        .arg(path)
        .arg(text)
        .status()
        .map_err(|e| err(path, format!("running espeak-ng: {e}")))?;
    if !status.success() {
        return Err(err(path, format!("espeak-ng failed: {status}")));
    }
    Ok(())
}

/// One generated task: for every split, `make(rng, i, wav)` writes clip `i` to `wav` and returns
/// its (question, answer) pairs; the manifests go to `out/{name}/{split}.jsonl` and the clips to
/// `out/audio/{name}/`. Split `s` draws from the stream `seed ^ (salt + s)`.
pub(crate) fn generated_task(
    out: &Path,
    name: &str,
    seed: u64,
    salt: u64,
    per_split: &[(&str, usize)],
    summary: &mut BuildSummary,
    mut make: impl FnMut(
        &mut SplitMix64,
        &str,
        usize,
        &Path,
    ) -> Result<Vec<(&'static str, String)>, BuildError>,
) -> Result<(), BuildError> {
    let dir = out.join("audio").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
    for (s, (split, n)) in per_split.iter().enumerate() {
        let mut rng = SplitMix64::new(seed ^ (salt + s as u64));
        let mut lines = vec![];
        for i in 0..*n {
            let path = dir.join(format!("{split}-{i:04}.wav"));
            for (question, answer) in make(&mut rng, split, i, &path)? {
                lines.push(line(&path, question, &answer));
            }
        }
        write(&out.join(format!("{name}/{split}.jsonl")), &lines, summary)?;
    }
    Ok(())
}

/// Builds every task's `train.jsonl`, `validation.jsonl` and `test.jsonl` under `options.out`.
pub fn build_instruction_set(options: &InstructOptions) -> Result<BuildSummary, BuildError> {
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(|e| err(out, e))?;
    let out = out.canonicalize().map_err(|e| err(out, e))?;
    let mut summary = BuildSummary::default();
    let splits = [
        ("train", options.generated_per_task),
        ("test", options.generated_per_task.div_ceil(4)),
        // Last: train and test draw what they drew before validation splits existed.
        ("validation", options.generated_per_task.div_ceil(4)),
    ];
    let wav = |path: &Path, samples: &[f32]| {
        pal_audio::write_wav(path, samples, RATE).map_err(|e| err(path, e))
    };

    // Beeps: count and pitch, two questions per clip.
    generated_task(
        &out,
        "beeps",
        options.seed,
        0xbee9,
        &splits,
        &mut summary,
        |rng, _, _, path| {
            let count = 1 + pick(rng, 4);
            let high = rng.next_f64() < 0.5;
            let hz = if high {
                uniform(rng, 1200.0, 2400.0)
            } else {
                uniform(rng, 180.0, 360.0)
            };
            wav(path, &beeps(rng, count, hz))?;
            Ok(vec![
                (COUNT_QUESTION, NUMBERS[count].to_string()),
                (
                    PITCH_QUESTION,
                    if high { "high" } else { "low" }.to_string(),
                ),
            ])
        },
    )?;

    // Noise colours, in turn.
    generated_task(
        &out,
        "noise",
        options.seed,
        0x4015e,
        &splits,
        &mut summary,
        |rng, _, i, path| {
            let colour = i % 3;
            let seconds = uniform(rng, 1.0, 2.0);
            wav(path, &coloured_noise(rng, colour, seconds))?;
            Ok(vec![(
                NOISE_QUESTION,
                ["white noise", "pink noise", "brown noise"][colour].to_string(),
            )])
        },
    )?;

    // Chords, major and minor in turn.
    generated_task(
        &out,
        "chords",
        options.seed,
        0xc40d,
        &splits,
        &mut summary,
        |rng, _, i, path| {
            let minor = i % 2 == 1;
            let root = uniform(rng, 180.0, 440.0);
            wav(path, &chord(rng, minor, root))?;
            Ok(vec![(
                CHORD_QUESTION,
                if minor { "minor" } else { "major" }.to_string(),
            )])
        },
    )?;

    // espeak-ng speech: training voices and sentences for train, held-out ones for the others.
    if options.espeak {
        if espeak_available() {
            generated_task(
                &out,
                "espeak",
                options.seed,
                0x5beec,
                &splits,
                &mut summary,
                |rng, split, i, path| {
                    let text = sentence(rng, Part::of_split(split));
                    let voice = match Part::of_split(split) {
                        Part::Train => TRAIN_VOICES[i % TRAIN_VOICES.len()],
                        Part::Validation => VALIDATION_VOICE,
                        Part::Test => TEST_VOICE,
                    };
                    let speed = 130 + pick(rng, 50) as u32;
                    espeak(&text, voice, speed, path)?;
                    Ok(vec![(SPEECH_QUESTION, text)])
                },
            )?;
        } else {
            eprintln!("warning: espeak-ng is not installed; the espeak speech task is skipped");
        }
    }

    // Instruments, languages, and sounds outside every label set.
    crate::vocabulary::build_vocabulary_tasks(
        &out,
        options.seed,
        &splits,
        options.espeak && espeak_available(),
        &mut summary,
    )?;

    if let Some(root) = &options.root {
        let real = crate::shared::build_shared_manifests(root, &out)?;
        summary.manifests.extend(real.manifests);
    }
    speech_as_sound(&out, &mut summary)?;
    Ok(summary)
}

/// `speech-sound/{train,validation,test}.jsonl`: the speech tasks' clips (espeak-ng, real speech) asked the
/// sound tasks' questions, answered "someone speaking" and "a person speaking", so that a model
/// asked what it hears in speech says so instead of guessing a sound class. Built from the
/// speech manifests already written; absent when there are none.
fn speech_as_sound(out: &Path, summary: &mut BuildSummary) -> Result<(), BuildError> {
    for split in ["train", "validation", "test"] {
        let clips = crate::shared::clips_of(out, split, &["espeak", "speech"])?;
        if clips.is_empty() {
            continue;
        }
        let lines: Vec<String> = clips
            .iter()
            .flat_map(|c| {
                [
                    line(c, crate::shared::SOUND_QUESTION, "someone speaking"),
                    line(c, crate::shared::DESCRIBE_QUESTION, "a person speaking"),
                ]
            })
            .collect();
        write(
            &out.join(format!("speech-sound/{split}.jsonl")),
            &lines,
            summary,
        )?;
    }
    Ok(())
}
