//! `pal data pairs` on a small shared folder made here: every example lists two clips of its own
//! split, each placed by a marker, and its answer says what the pair holds; the same seed gives
//! the same manifests and audio bytes.

mod common;

use std::path::{Path, PathBuf};

use common::{lines, shared};
use pal_data::clip_pairs::{build_clip_pairs, PairOptions, PAIR_PROMPT, PAIR_TASKS};

fn options(root: &Path, out: &Path) -> PairOptions {
    PairOptions {
        root: root.to_path_buf(),
        out: out.to_path_buf(),
        seed: 5,
        train: 12,
        held_out: 6,
    }
}

/// Each line's two files, question and answer.
fn pairs(path: &Path) -> Vec<([PathBuf; 2], String, String)> {
    lines(path)
        .into_iter()
        .map(|v| {
            let files = v["audio"].as_array().unwrap();
            assert_eq!(files.len(), 2, "{v}");
            let file = |i: usize| PathBuf::from(files[i].as_str().unwrap());
            let text = |i: usize| v["messages"][i]["content"].as_str().unwrap().to_string();
            ([file(0), file(1)], text(0), text(1))
        })
        .collect()
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().to_string()
}

fn rms(path: &Path) -> f32 {
    let s = pal_audio::load_audio(path).unwrap().samples;
    (s.iter().map(|v| v * v).sum::<f32>() / s.len() as f32).sqrt()
}

/// The split of a clip of the shared folder by its name: FSDD's `DIGIT_ann_TAKE.wav` (takes 0-1
/// test, 5-7 validate), ESC-10's `CLASS-SOURCE.wav` (source 2 tests, 4 validates).
fn own_split(name: &str) -> &'static str {
    let stem = name.trim_end_matches(".wav");
    if stem.contains('_') {
        match stem.rsplit('_').next().unwrap().parse::<u32>().unwrap() {
            0..=1 => "test",
            5..=7 => "validation",
            _ => "train",
        }
    } else {
        match stem.rsplit('-').next().unwrap() {
            "2" => "test",
            "4" => "validation",
            _ => "train",
        }
    }
}

#[test]
fn pairs_hold_their_splits_clips_and_answer_what_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("shared"), dir.path().join("pairs"));
    shared(&root);
    build_clip_pairs(&options(&root, &out)).unwrap();
    for task in PAIR_TASKS {
        for split in ["train", "validation", "test"] {
            let lines = pairs(&out.join(format!("{task}/{split}.jsonl")));
            assert_eq!(lines.len(), if split == "train" { 12 } else { 6 });
            for (files, question, answer) in &lines {
                assert!(question.starts_with(PAIR_PROMPT), "{question}");
                let names = files.clone().map(|f| name(&f));
                if task != "louder" {
                    for n in &names {
                        assert_eq!(own_split(n), split, "{task}/{split} holds {n}");
                    }
                }
                let ordinal = |i: usize| ["the first", "the second"][i];
                match task {
                    "which-has" => {
                        let label = question.split("has the ").nth(1).unwrap().split(',').next();
                        let i = names.iter().position(|n| n.starts_with(label.unwrap()));
                        assert_eq!(answer, ordinal(i.unwrap()), "{question} {names:?}");
                    }
                    "each-clip" => {
                        let labels = names
                            .clone()
                            .map(|n| n.split('-').next().unwrap().to_string());
                        assert_eq!(*answer, format!("{}, then {}", labels[0], labels[1]));
                    }
                    "same-digit" => {
                        assert_ne!(names[0], names[1]);
                        let same = names[0][..1] == names[1][..1];
                        assert_eq!(answer, if same { "yes" } else { "no" });
                    }
                    _ => {
                        let (a, b) = (rms(&files[0]), rms(&files[1]));
                        let louder = usize::from(b > a);
                        assert_eq!(answer, ordinal(louder));
                        let db = 20.0 * (a.max(b) / a.min(b)).log10();
                        assert!((7.9..16.1).contains(&db), "{db} dB apart");
                    }
                }
            }
        }
    }
    // The same seed, another folder: the same manifests (paths aside) and audio.
    let again = dir.path().join("again");
    build_clip_pairs(&options(&root, &again)).unwrap();
    for task in PAIR_TASKS {
        let read = |base: &Path| {
            std::fs::read_to_string(base.join(format!("{task}/test.jsonl")))
                .unwrap()
                .replace(&base.canonicalize().unwrap().display().to_string(), "OUT")
        };
        assert_eq!(read(&out), read(&again), "{task}");
    }
    let wav = "audio/louder/test-0003-b.wav";
    assert_eq!(
        std::fs::read(out.join(wav)).unwrap(),
        std::fs::read(again.join(wav)).unwrap()
    );
}
