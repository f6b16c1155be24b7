//! Builds manifests from the project's shared real-audio folder (`shared/data`): FSDD spoken
//! digits (official split: takes 0-4 test; takes 5-9 validate; and one speaker-held-out split
//! per speaker), ESC-10 environmental sounds with
//! labels and captions (held out by source recording, [`Esc10Sources`]), and the speech samples
//! with their transcripts (ALSA channel names for training and validation, JFK and Beckett for
//! testing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

/// The caption of an ESC-10 class (for "Describe the sound.").
pub fn caption(category: &str) -> &'static str {
    match category {
        "dog" => "A dog is barking.",
        "rooster" => "A rooster crows.",
        "rain" => "Rain is falling steadily.",
        "sea_waves" => "Waves are washing onto a shore.",
        "crackling_fire" => "A fire is crackling.",
        "crying_baby" => "A baby is crying.",
        "sneezing" => "Someone sneezes.",
        "clock_tick" => "A clock is ticking.",
        "helicopter" => "A helicopter is flying.",
        "chainsaw" => "A chainsaw is running.",
        _ => "A sound is playing.",
    }
}

/// How a question names an ESC-10 class: "a dog", "rain", "a crying baby" (another label: its
/// words, with "a" before it).
pub fn sound_name(category: &str) -> String {
    let name = match category {
        "dog" => "a dog",
        "rooster" => "a rooster",
        "rain" => "rain",
        "sea_waves" => "sea waves",
        "crackling_fire" => "a crackling fire",
        "crying_baby" => "a crying baby",
        "sneezing" => "sneezing",
        "clock_tick" => "a ticking clock",
        "helicopter" => "a helicopter",
        "chainsaw" => "a chainsaw",
        other => return format!("a {}", other.replace('_', " ")),
    };
    name.to_string()
}

/// Files written and example counts.
#[derive(Debug, Default)]
pub struct BuildSummary {
    /// `(manifest path, examples)`.
    pub manifests: Vec<(PathBuf, usize)>,
}

/// A problem with the shared folder.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct BuildError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

pub(crate) fn err(path: &Path, message: impl std::fmt::Display) -> BuildError {
    BuildError {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Rows of a simple CSV (no quoted commas) as header-keyed maps.
pub(crate) fn read_csv(path: &Path) -> Result<Vec<BTreeMap<String, String>>, BuildError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| err(path, "empty CSV"))?
        .split(',')
        .collect();
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let cells: Vec<&str> = l.split(',').collect();
            if cells.len() != header.len() {
                return Err(err(
                    path,
                    format!(
                        "line {}: {} cells, header has {}",
                        i + 2,
                        cells.len(),
                        header.len()
                    ),
                ));
            }
            Ok(header
                .iter()
                .zip(cells)
                .map(|(h, c)| (h.to_string(), c.to_string()))
                .collect())
        })
        .collect()
}

/// `root` (the shared `data` folder) and `out` (created) as absolute paths, for manifests that
/// hold absolute audio paths; errors name the folder.
pub(crate) fn absolute_root_and_out(
    root: &Path,
    out: &Path,
) -> Result<(PathBuf, PathBuf), BuildError> {
    let root = root.canonicalize().map_err(|e| err(root, e))?;
    std::fs::create_dir_all(out).map_err(|e| err(out, e))?;
    let out = out.canonicalize().map_err(|e| err(out, e))?;
    Ok((root, out))
}

pub(crate) fn line(audio: &Path, question: &str, answer: &str) -> String {
    json!({"audio": audio, "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}).to_string()
}

pub(crate) fn write(
    path: &Path,
    lines: &[String],
    summary: &mut BuildSummary,
) -> Result<(), BuildError> {
    std::fs::create_dir_all(path.parent().expect("has parent")).map_err(|e| err(path, e))?;
    std::fs::write(path, lines.join("\n") + "\n").map_err(|e| err(path, e))?;
    summary.manifests.push((path.to_path_buf(), lines.len()));
    Ok(())
}

/// The question asked of FSDD clips.
pub const DIGIT_QUESTION: &str = "Which digit is spoken?";
/// The question asked of ESC-10 clips.
pub const SOUND_QUESTION: &str = "What sound is this?";
/// Asked of ESC-10 clips for a caption.
pub const DESCRIBE_QUESTION: &str = "Describe the sound.";
/// The question asked of speech clips.
pub const SPEECH_QUESTION: &str = "What is said?";

/// The splits a task is written in.
pub const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// Lines by split, in [`SPLITS`] order.
#[derive(Default)]
struct Splits([Vec<String>; 3]);

impl Splits {
    fn push(&mut self, split: &str, line: String) {
        let i = SPLITS
            .iter()
            .position(|s| *s == split)
            .expect("a known split");
        self.0[i].push(line);
    }

    fn write(&self, out: &Path, task: &str, summary: &mut BuildSummary) -> Result<(), BuildError> {
        for (split, lines) in SPLITS.iter().zip(&self.0) {
            if !lines.is_empty() {
                write(&out.join(format!("{task}/{split}.jsonl")), lines, summary)?;
            }
        }
        Ok(())
    }
}

/// ESC-10's source recordings by split, the same everywhere. Every source goes wholly to one
/// split. Per class, sources sorted by name: `esc10` (and its captions) tests on every fifth from
/// the third (indices 2, 7, ...) and validates on every fifth from the fifth (4, 9, ...); the
/// probe's `esc10-probe` holds out every second (1, 3, ...: held-out splits twice as large, for
/// comparisons whose intervals mean something), testing on 1, 5, 9, ... and validating on 3, 7,
/// 11, ..., and trains on the even ones.
pub struct Esc10Sources {
    sources: BTreeMap<String, Vec<String>>,
}

impl Esc10Sources {
    /// The sources of `rows` (ESC-10's `labels.csv`).
    pub fn new(rows: &[BTreeMap<String, String>]) -> Self {
        let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in rows {
            let list = sources.entry(r["category"].clone()).or_default();
            if !list.contains(&r["src_file"]) {
                list.push(r["src_file"].clone());
            }
        }
        sources.values_mut().for_each(|l| l.sort());
        Self { sources }
    }

    fn index(&self, row: &BTreeMap<String, String>) -> usize {
        self.sources[&row["category"]]
            .iter()
            .position(|s| *s == row["src_file"])
            .expect("every row's source is listed")
    }

    /// The `esc10` split of a row.
    pub fn split(&self, row: &BTreeMap<String, String>) -> &'static str {
        match self.index(row) % 5 {
            2 => "test",
            4 => "validation",
            _ => "train",
        }
    }

    /// The `esc10-probe` split of a row.
    pub fn probe_split(&self, row: &BTreeMap<String, String>) -> &'static str {
        match self.index(row) % 4 {
            1 => "test",
            3 => "validation",
            _ => "train",
        }
    }
}

/// ESC-10's rows (`esc10/labels.csv`; rows marked `esc10=False`, if any, are left out).
pub fn esc10_rows(root: &Path) -> Result<Vec<BTreeMap<String, String>>, BuildError> {
    let rows = read_csv(&root.join("esc10/labels.csv"))?;
    Ok(rows
        .into_iter()
        .filter(|r| r.get("esc10").is_none_or(|v| v == "True"))
        .collect())
}

/// The split of an FSDD clip from its `labels.csv` row's `split` and take (`index`): FSDD's
/// official test split (takes 0-4) tests, takes 5-9 of the rest validate, the rest trains.
pub fn fsdd_split(official: &str, take: usize) -> &'static str {
    match (official, take) {
        ("test", _) => "test",
        (_, 5..=9) => "validation",
        _ => "train",
    }
}

/// The speaker-held-out split of an FSDD clip for the rotation that holds out `held_out`: every
/// clip of that speaker tests; of the other speakers, what [`fsdd_split`] trains on trains and
/// what it validates on validates (their official test takes are left out).
pub fn fsdd_speaker_split(
    speaker: &str,
    held_out: &str,
    official: &str,
    take: usize,
) -> Option<&'static str> {
    match (speaker == held_out, fsdd_split(official, take)) {
        (true, _) => Some("test"),
        (false, "test") => None,
        (false, split) => Some(split),
    }
}

/// A clip of the shared data and its label.
pub struct LabelledClip {
    /// The audio file.
    pub path: PathBuf,
    /// Its label: the digit's word (FSDD), the class with spaces (ESC-10).
    pub label: String,
}

/// Labelled clips by split.
pub type ClipsBySplit = BTreeMap<&'static str, Vec<LabelledClip>>;

/// FSDD's clips of `root` (the shared `data` folder) by split ([`fsdd_split`]), labelled with
/// their digit's word, in `labels.csv` order; an error naming the file when a split has none.
pub fn fsdd_clips_by_split(root: &Path) -> Result<ClipsBySplit, BuildError> {
    let fsdd = root.join("fsdd");
    let labels = fsdd.join("labels.csv");
    let mut by_split = ClipsBySplit::new();
    for (i, row) in read_csv(&labels)?.iter().enumerate() {
        let split = fsdd_split(&row["split"], take(&labels, i, row)?);
        by_split.entry(split).or_default().push(LabelledClip {
            path: fsdd.join(&row["path"]),
            label: row["word"].clone(),
        });
    }
    every_split_has_clips(by_split, &labels)
}

/// ESC-10's clips of `root` by split (by source recording, as the `esc10` task splits them),
/// labelled with their class (`_` as spaces), in `labels.csv` order; an error naming the file
/// when a split has none.
pub fn esc10_clips_by_split(root: &Path) -> Result<ClipsBySplit, BuildError> {
    let rows = esc10_rows(root)?;
    let sources = Esc10Sources::new(&rows);
    let mut by_split = ClipsBySplit::new();
    for r in &rows {
        by_split
            .entry(sources.split(r))
            .or_default()
            .push(LabelledClip {
                path: root.join("esc10").join(&r["path"]),
                label: r["category"].replace('_', " "),
            });
    }
    every_split_has_clips(by_split, &root.join("esc10/labels.csv"))
}

/// `by_split` when every split has clips; an error naming `source` otherwise.
fn every_split_has_clips(
    by_split: ClipsBySplit,
    source: &Path,
) -> Result<ClipsBySplit, BuildError> {
    for split in SPLITS {
        if by_split.get(split).is_none_or(|c| c.is_empty()) {
            return Err(err(source, format!("no clips for the {split} split")));
        }
    }
    Ok(by_split)
}

/// The take (`index`) of row `i` of FSDD's `labels.csv`.
fn take(labels: &Path, i: usize, row: &BTreeMap<String, String>) -> Result<usize, BuildError> {
    row["index"]
        .parse()
        .map_err(|e| err(labels, format!("line {}: index: {e}", i + 2)))
}

/// Writes `out/fsdd-speakers/SPEAKER/{train,validation,test}.jsonl` for each FSDD speaker from
/// `root` (the shared `data` folder): train and validate on the other speakers, test on every
/// clip of that one ([`fsdd_speaker_split`]); FSDD's official split has the same six speakers
/// in train and test, a user's speaker is new. Audio paths are absolute.
pub fn build_fsdd_speaker_splits(root: &Path, out: &Path) -> Result<BuildSummary, BuildError> {
    let fsdd = root.canonicalize().map_err(|e| err(root, e))?.join("fsdd");
    let labels = fsdd.join("labels.csv");
    let rows = read_csv(&labels)?;
    let mut speakers: Vec<&str> = rows.iter().map(|r| r["speaker"].as_str()).collect();
    speakers.sort();
    speakers.dedup();
    let mut by_speaker: Vec<Splits> = speakers.iter().map(|_| Splits::default()).collect();
    for (i, row) in rows.iter().enumerate() {
        let l = line(&fsdd.join(&row["path"]), DIGIT_QUESTION, &row["word"]);
        let take = take(&labels, i, row)?;
        for (held_out, splits) in speakers.iter().zip(&mut by_speaker) {
            if let Some(split) = fsdd_speaker_split(&row["speaker"], held_out, &row["split"], take)
            {
                splits.push(split, l.clone());
            }
        }
    }
    let mut summary = BuildSummary::default();
    for (held_out, splits) in speakers.iter().zip(&by_speaker) {
        splits.write(out, &format!("fsdd-speakers/{held_out}"), &mut summary)?;
    }
    Ok(summary)
}

/// Writes `out/fsdd`, `out/esc10`, `out/esc10-probe`, `out/esc10-captions` and `out/speech`
/// (each `train.jsonl`, `validation.jsonl` and `test.jsonl`) from `root` (the shared `data`
/// folder). Audio paths are absolute.
pub fn build_shared_manifests(root: &Path, out: &Path) -> Result<BuildSummary, BuildError> {
    let root = root.canonicalize().map_err(|e| err(root, e))?;
    let mut summary = BuildSummary::default();

    let fsdd = root.join("fsdd");
    let mut digits = Splits::default();
    let labels = fsdd.join("labels.csv");
    for (i, row) in read_csv(&labels)?.iter().enumerate() {
        let l = line(&fsdd.join(&row["path"]), DIGIT_QUESTION, &row["word"]);
        digits.push(fsdd_split(&row["split"], take(&labels, i, row)?), l);
    }
    digits.write(out, "fsdd", &mut summary)?;

    let esc = root.join("esc10");
    let rows = esc10_rows(&root)?;
    let sources = Esc10Sources::new(&rows);
    let (mut labels, mut captions, mut probe) =
        (Splits::default(), Splits::default(), Splits::default());
    for r in &rows {
        let path = esc.join(&r["path"]);
        let label = line(&path, SOUND_QUESTION, &r["category"].replace('_', " "));
        probe.push(sources.probe_split(r), label.clone());
        labels.push(sources.split(r), label);
        captions.push(
            sources.split(r),
            line(&path, DESCRIBE_QUESTION, caption(&r["category"])),
        );
    }
    labels.write(out, "esc10", &mut summary)?;
    captions.write(out, "esc10-captions", &mut summary)?;
    probe.write(out, "esc10-probe", &mut summary)?;

    let speech = root.join("speech_samples");
    let mut said = Splits::default();
    for (f, t) in REAL_SPEECH {
        said.push("test", line(&speech.join(f), SPEECH_QUESTION, t));
    }

    for (split, clips) in alsa_speech_by_split(&root)? {
        for clip in clips {
            said.push(split, line(&clip.path, SPEECH_QUESTION, &clip.label));
        }
    }
    said.write(out, "speech", &mut summary)?;
    Ok(summary)
}

/// The real speech of `speech_samples/` with its transcript: JFK and Beckett, read only by test
/// splits (the `speech` task's and the check set's).
pub(crate) const REAL_SPEECH: [(&str, &str); 2] = [
    ("jfk_16k.wav", "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."),
    ("beckett_16k.wav", "Ever tried, ever failed. No matter, try again. Fail again. Fail better."),
];

/// The ALSA channel names of `root/speech_samples/alsa` (`Front_Center.wav` says "Front,
/// center."), labelled with what is said, by split: every fourth (in name order) from the fourth
/// validates, the others train; none tests (JFK and Beckett test).
pub fn alsa_speech_by_split(root: &Path) -> Result<ClipsBySplit, BuildError> {
    let alsa = root.join("speech_samples/alsa");
    let mut names: Vec<String> = std::fs::read_dir(&alsa)
        .map_err(|e| err(&alsa, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".wav") && n != "Noise.wav")
        .collect();
    names.sort();
    let mut by_split = ClipsBySplit::new();
    for (i, name) in names.iter().enumerate() {
        let words: Vec<&str> = name.trim_end_matches(".wav").split('_').collect();
        let text = format!("{}, {}.", words[0], words[1..].join(" ").to_lowercase());
        let split = if i % 4 == 3 { "validation" } else { "train" };
        by_split.entry(split).or_default().push(LabelledClip {
            path: alsa.join(name),
            label: text,
        });
    }
    Ok(by_split)
}

/// The audio paths of `out/TASK/SPLIT.jsonl` (a task not built is skipped), each once.
pub fn clips_of(out: &Path, split: &str, tasks: &[&str]) -> Result<Vec<PathBuf>, BuildError> {
    let mut clips: Vec<PathBuf> = vec![];
    for task in tasks {
        let manifest = out.join(format!("{task}/{split}.jsonl"));
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        for (i, l) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| err(&manifest, format!("line {}: {e}", i + 1)))?;
            let audio = v["audio"]
                .as_str()
                .ok_or_else(|| err(&manifest, format!("line {}: no \"audio\" path", i + 1)))?;
            let audio = PathBuf::from(audio);
            if !clips.contains(&audio) {
                clips.push(audio);
            }
        }
    }
    Ok(clips)
}
