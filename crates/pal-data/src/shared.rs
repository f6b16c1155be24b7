//! Builds manifests from the project's shared real-audio folder (`shared/data`): FSDD spoken
//! digits (official split: takes 0-4 test), ESC-10 environmental sounds with labels and captions
//! (held out by source recording), and the speech samples with their transcripts (ALSA channel
//! names for training, JFK and Beckett for testing).

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

/// Writes `out/fsdd`, `out/esc10`, `out/esc10-probe` (half the sources held out),
/// `out/esc10-captions` and `out/speech` (each `train.jsonl` and `test.jsonl`) from `root` (the shared `data` folder). Audio paths are absolute.
pub fn build_shared_manifests(root: &Path, out: &Path) -> Result<BuildSummary, BuildError> {
    let root = root.canonicalize().map_err(|e| err(root, e))?;
    let mut summary = BuildSummary::default();

    let fsdd = root.join("fsdd");
    let (mut train, mut test) = (vec![], vec![]);
    for row in read_csv(&fsdd.join("labels.csv"))? {
        let l = line(&fsdd.join(&row["path"]), DIGIT_QUESTION, &row["word"]);
        if row["split"] == "test" {
            test.push(l)
        } else {
            train.push(l)
        }
    }
    write(&out.join("fsdd/train.jsonl"), &train, &mut summary)?;
    write(&out.join("fsdd/test.jsonl"), &test, &mut summary)?;

    // ESC-10: every source recording goes wholly to train or test; about one in five to test,
    // chosen per class in a fixed order so the split is the same everywhere.
    let esc = root.join("esc10");
    let rows = read_csv(&esc.join("labels.csv"))?;
    let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &rows {
        let list = sources.entry(r["category"].clone()).or_default();
        if !list.contains(&r["src_file"]) {
            list.push(r["src_file"].clone());
        }
    }
    let held_out: Vec<String> = sources
        .values_mut()
        .flat_map(|list| {
            list.sort();
            list.iter().skip(2).step_by(5).cloned().collect::<Vec<_>>()
        })
        .collect();
    // The probe's split: half of each class's sources held out (every second one), a test split
    // twice as large (about 40 clips) for comparisons whose intervals mean something.
    let half_held_out: Vec<String> = sources
        .values()
        .flat_map(|list| list.iter().skip(1).step_by(2).cloned().collect::<Vec<_>>())
        .collect();
    let (mut probe_train, mut probe_test) = (vec![], vec![]);
    let (mut train, mut test, mut train_captions, mut test_captions) =
        (vec![], vec![], vec![], vec![]);
    for r in &rows {
        let path = esc.join(&r["path"]);
        let label = line(&path, SOUND_QUESTION, &r["category"].replace('_', " "));
        let described = line(&path, DESCRIBE_QUESTION, caption(&r["category"]));
        if half_held_out.contains(&r["src_file"]) {
            probe_test.push(label.clone());
        } else {
            probe_train.push(label.clone());
        }
        if held_out.contains(&r["src_file"]) {
            test.push(label);
            test_captions.push(described);
        } else {
            train.push(label);
            train_captions.push(described);
        }
    }
    write(&out.join("esc10/train.jsonl"), &train, &mut summary)?;
    write(&out.join("esc10/test.jsonl"), &test, &mut summary)?;
    write(
        &out.join("esc10-probe/train.jsonl"),
        &probe_train,
        &mut summary,
    )?;
    write(
        &out.join("esc10-probe/test.jsonl"),
        &probe_test,
        &mut summary,
    )?;
    write(
        &out.join("esc10-captions/train.jsonl"),
        &train_captions,
        &mut summary,
    )?;
    write(
        &out.join("esc10-captions/test.jsonl"),
        &test_captions,
        &mut summary,
    )?;

    let speech = root.join("speech_samples");
    let clips = [
        ("jfk_16k.wav", "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."),
        ("beckett_16k.wav", "Ever tried, ever failed. No matter, try again. Fail again. Fail better."),
    ];
    let lines: Vec<String> = clips
        .iter()
        .map(|(f, t)| line(&speech.join(f), SPEECH_QUESTION, t))
        .collect();
    write(&out.join("speech/test.jsonl"), &lines, &mut summary)?;

    // The ALSA channel names ("Front_Center.wav" says "Front, center.") for training.
    let alsa = speech.join("alsa");
    let mut names: Vec<String> = std::fs::read_dir(&alsa)
        .map_err(|e| err(&alsa, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".wav") && n != "Noise.wav")
        .collect();
    names.sort();
    let lines: Vec<String> = names
        .iter()
        .map(|name| {
            let words: Vec<&str> = name.trim_end_matches(".wav").split('_').collect();
            let text = format!("{}, {}.", words[0], words[1..].join(" ").to_lowercase());
            line(&alsa.join(name), SPEECH_QUESTION, &text)
        })
        .collect();
    write(&out.join("speech/train.jsonl"), &lines, &mut summary)?;
    Ok(summary)
}
